"""Per-round metrics, model selection and ``results.json``: shared by both engines so they report identically."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flwr_vproto.config import Config


def round_record(
    rnd: int,
    active: Mapping[str, float],
    passives: list[Mapping[str, float]],
    val: Mapping[str, float] | None,
    test: Mapping[str, float] | None,
    seconds: float | None,
    extra: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """One flat record per round: ``active/...``, ``passive<k>/...``, ``val/...``, ``test/...``, ``seconds`` (none
    for a round inside an exchange: only the exchange is timed)."""
    rec: dict[str, float] = {"round": float(rnd)}
    rec.update({f"active/{k}": float(v) for k, v in active.items()})
    for k, pm in enumerate(passives, start=1):
        rec.update({f"passive{k}/{n}": float(v) for n, v in pm.items()})
    for prefix, metrics in (("val", val), ("test", test)):
        if metrics:
            rec.update({f"{prefix}/{k}": float(v) for k, v in metrics.items()})
    if extra:
        rec.update({k: float(v) for k, v in extra.items()})
    if seconds is not None:
        rec["seconds"] = float(seconds)
    return rec


MIN_VALIDATION_USERS = 100
"""Fewer labelled validation users than this are too few to select a round by: with fewer aligned ones the run
reports the joint model's last round (the round its saved models are from); with fewer of the active party's own,
its active-only model is the last round's (:meth:`flwr_vproto.scoring.ActiveScoring.select_active_only`).

Measured (BENCHMARKS.md "Summaries on small tables"): best-validation-accuracy selection on ``n`` of a run's own
validation users (the same users every round) picks a round whose test accuracy is below the last round's on
average for every ``n`` under 80 on digits (0.01-0.36 points) and every ``n`` up to 2000 on adult 5 % (0.38-0.92
points under 100, 0.05-0.32 from 144 to 2000). 100 keeps every run with a built-in dataset (digits: 144 aligned
validation users, fashion_mnist and adult: thousands) on the rule its published numbers were measured with."""


def select_final(history: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Test metrics at the round with the best validation accuracy (ties: the lower validation loss, then the
    earlier round), or at the last round when the aligned validation users are too few to choose by
    (:data:`MIN_VALIDATION_USERS`; ``too_few_aligned_validation`` is then 1.0). The users only the active party
    holds are reported as its kept active-only model scores them (``active_only_accuracy``: the model prediction
    ships, chosen on all its own labelled validation users at ``active_only_round``).

    This is the evaluation protocol of the benchmark: every method is trained for the same rounds and reported at
    its own best validation round, so no method is judged at an arbitrary stopping point.
    """
    evaluated = [h for h in history if "val/accuracy" in h]
    if not evaluated:
        return {}
    users = aligned_validation_users(evaluated)
    if users is not None and users < MIN_VALIDATION_USERS:
        best, too_few = evaluated[-1], True
    else:
        # Under label DP the selection sees the noised validation labels (what it decides travels to the passives).
        # A tie (e.g. rounds that all predict the majority class) goes to the better-calibrated round, never
        # blindly to the earliest one; under label DP the loss is the one on the noised labels too, when recorded.
        best = max(evaluated, key=lambda h: (h.get("val/selection_accuracy", h["val/accuracy"]),
                                             -h.get("val/selection_loss", h.get("val/loss", math.inf)), -h["round"]))
        too_few = False
    final = {k[len("test/"):]: v for k, v in best.items()
             if k.startswith("test/") and k != "test/chosen_active_only_accuracy"}
    final["best_round"] = best["round"]
    final["val_accuracy"] = best["val/accuracy"]
    last = evaluated[-1]
    final["last_round_accuracy"] = last.get("test/accuracy", math.nan)
    if users is not None:
        final["aligned_validation_users"] = float(users)
        final["too_few_aligned_validation"] = 1.0 if too_few else 0.0  # 1.0: the last round is reported
    final.update(_active_only_final(history))
    return final


def aligned_validation_users(evaluated: list[Mapping[str, float]]) -> int | None:
    """How many labelled aligned validation users scored the rounds (``val/aligned_users``), if recorded."""
    counts = [h["val/aligned_users"] for h in evaluated if "val/aligned_users" in h]
    return int(counts[-1]) if counts else None


def _active_only_final(history: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The users only the active party holds, as its kept active-only model scores them (the last test score of
    that model: the model saved at the end), and the round it was kept at, with its score on the active party's
    own validation users. Nothing when the method keeps none (no active-only head, or an older history)."""
    out: dict[str, float] = {}
    chosen = [h for h in history if "test/chosen_active_only_accuracy" in h]
    if chosen:
        out["active_only_accuracy"] = chosen[-1]["test/chosen_active_only_accuracy"]
    kept = [h for h in history if h.get("val/active_only_kept")]
    if kept:
        out["active_only_round"] = kept[-1]["round"]
        out["active_only_val_accuracy"] = kept[-1]["val/own_accuracy"]
        out["own_validation_users"] = kept[-1]["val/own_users"]
    return out


def per_round(results: Mapping[str, Any]) -> list[dict[str, float]]:
    """Every round's record of a ``results.json``: ``local_rounds`` when an exchange trained several rounds, else
    ``rounds`` (one exchange per round)."""
    return list(results.get("local_rounds") or results.get("rounds") or [])


def format_elapsed(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``1h02m``: wall time for progress lines."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_round(rec: Mapping[str, float], num_rounds: int, elapsed: float | None = None) -> str:
    """One readable progress line: round k/n (an exchange of several rounds: its last round, and which rounds it
    trained), main losses, accuracies (of that round), seconds (and wall time since the start)."""
    if "exchange/last_round" in rec:
        parts = [f"round {int(rec['exchange/last_round']):>3}/{num_rounds} (exchange {int(rec['round'])}: rounds "
                 f"{int(rec['exchange/first_round'])}-{int(rec['exchange/last_round'])})"]
    elif "active/num_leaves" in rec:  # a LightGBM baseline: one "round" per hyper-parameter setting
        parts = [f"setting {int(rec['round']):>2}: num_leaves {int(rec['active/num_leaves'])}, min_child_samples "
                 f"{int(rec['active/min_child_samples'])}, {int(rec['active/trees'])} trees"]
    else:
        parts = [f"round {int(rec['round']):>3}/{num_rounds}"]
    for key, label in (("active/sup_loss", "sup"), ("active/local_loss", "local"), ("active/first_loss", "first")):
        if key in rec:
            parts.append(f"{label} {rec[key]:.3f}")
    thirds = [v for k, v in rec.items() if k.endswith("/third_loss")]
    if thirds:
        parts.append(f"third {sum(thirds) / len(thirds):.3f}")
    cov = [v for k, v in rec.items() if k.endswith("/pseudo_coverage") and k.startswith("passive")]
    if cov:
        parts.append(f"cover {sum(cov) / len(cov):.2f}")
    for key, label in (("val/accuracy", "val acc"), ("test/accuracy", "test acc"), ("test/auc", "auc")):
        if key in rec:
            parts.append(f"{label} {rec[key]:.4f}")
    if "seconds" in rec:
        parts.append(f"{rec['seconds']:.1f}s")
    if elapsed is not None:
        parts.append(f"elapsed {format_elapsed(elapsed)}")
    return " | ".join(parts)


def build_results(cfg: Config, history: list[dict[str, float]], extra: Mapping[str, Any] | None = None,
                  local_rounds: list[dict[str, float]] | None = None) -> dict:
    """The content of ``results.json``: resolved config, one record per exchange (``rounds``), the final (selected)
    metrics and, when an exchange trains several rounds, one record per round (``local_rounds``), which the
    selection then reads."""
    out = {"config": cfg.to_dict(), "rounds": history, "final": select_final(local_rounds or history)}
    if local_rounds:
        out["local_rounds"] = local_rounds
    if extra:
        out.update(extra)
    return out


def write_results(path: str | Path, results: Mapping[str, Any], *, exclusive: bool = False) -> Path:
    """Write ``results.json`` (NaN-free JSON); returns the path written.

    ``exclusive``: never overwrite. If ``path`` exists (another run wrote there), write beside it as
    ``results-2.json``, ``results-3.json``, ... (each file created atomically, so two runs racing for one folder
    both keep their results).
    """
    path = Path(path)
    text = json.dumps(results, indent=2, default=float, allow_nan=False)
    if not exclusive:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path
    return write_new(path, text)


def write_new(path: str | Path, text: str, *, next_free: bool = True) -> Path:
    """Write ``text`` to a file that did not exist before; never overwrite one. Returns the path written.

    ``next_free``: if ``path`` exists, write beside it as ``<stem>-2<suffix>``, ``<stem>-3<suffix>``, ... Every name
    is created with ``O_EXCL`` (open mode ``"x"``), so two writers racing for one name never both get it.
    Otherwise an existing ``path`` raises :class:`FileExistsError` and the file is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000 if next_free else 2):
        target = path if n == 1 else path.with_name(f"{path.stem}-{n}{path.suffix}")
        try:
            with open(target, "x", encoding="utf-8", newline="") as fh:
                fh.write(text)
            return target
        except FileExistsError:
            continue
    if not next_free:
        raise FileExistsError(f"{path}: already exists (never overwritten)")
    raise FileExistsError(f"{path.parent}: too many {path.stem}-<n>{path.suffix} files")


PREDICTION_COUNTS = ("users", "joint_users", "active_only_users", "unscored_users")  # flwr_vproto.predict.score


def prediction_metrics(metrics: Mapping[str, float]) -> dict[str, float | int]:
    """A prediction's metrics with its user counts as integers (a MetricRecord carries them as floats)."""
    return {k: int(v) if k in PREDICTION_COUNTS else float(v) for k, v in metrics.items()}


def format_prediction(metrics: Mapping[str, float], path: str | Path | None = None, where: str = "") -> str:
    """One line for a prediction: integer counts, accuracy where the rows had labels, and where the CSV went
    (``-> <path><where>``), the same from ``python -m flwr_vproto.predict`` and the ServerApp's query round."""
    m = prediction_metrics(metrics)
    line = (f"{m.get('users', 0)} users: {m.get('joint_users', 0)} scored jointly, "
            f"{m.get('active_only_users', 0)} by the active party alone")
    if m.get("unscored_users"):
        line += f", {m['unscored_users']} not scored (no active-only head in this method)"
    for k in ("accuracy", "active_only_accuracy"):
        if k in m and not math.isnan(m[k]):
            line += f"; {k} {m[k]:.4f}"
    return line + (f" -> {path}{where}" if path is not None else "")


def _acc(final: Mapping[str, Any], key: str) -> str:
    value = final.get(key)
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.4f}"


def format_summary(results: Mapping[str, Any], path: str | Path | None = None, elapsed: float | None = None,
                   metric: str = "accuracy") -> list[str]:
    """The run's closing lines, the same under ``run_simulation.py`` and the deployed ServerApp: test accuracy of
    what the run ships (at the best validation round) and, when the method has them, of the joint model and of the
    active-only head alone; the best round; how many users were aligned; where ``results.json`` is."""
    final = results.get("final") or {}
    rounds = results.get("rounds") or []
    cfg = results.get("config") or {}
    num_rounds = int(cfg.get("num_rounds") or (rounds[-1]["round"] if rounds else 0))
    aligned = ((results.get("alignment") or {}).get("aligned") or {}).get("train")
    tail = ([f"{int(aligned)} aligned training users"] if aligned is not None else []) + \
        ([format_elapsed(elapsed)] if elapsed is not None else [])
    where = f"results: {path}" if path is not None else ""
    last = ", ".join(tail) + (f" -> {where}" if where and tail else where)
    if not final:
        return [_no_scores(results)] + ([last] if last else [])
    head = f"final: test accuracy {_acc(final, 'accuracy')}"
    parts = []
    if "joint_accuracy" in final:
        parts.append(f"joint model {_acc(final, 'joint_accuracy')}")
    if "local_accuracy" in final:
        parts.append(f"active-only head {_acc(final, 'local_accuracy')}")
    if parts:
        head += f" ({', '.join(parts)}, on the users every party holds)"
    if "auc" in final:
        head += f", AUC {_acc(final, 'auc')}"
    best = f"best round {int(final['best_round'])} of {num_rounds} by validation {metric}"
    if final.get("too_few_aligned_validation"):
        best = (f"round {int(final['best_round'])} of {num_rounds}, the last: only "
                f"{int(final['aligned_validation_users'])} aligned validation users, too few (< "
                f"{MIN_VALIDATION_USERS}) to choose a round by; its validation {metric}")
    if "trees" in results:  # a LightGBM baseline: its "rounds" are the hyper-parameter settings tried
        from flwr_vproto.trees import describe_setting

        best = (f"best of {len(rounds)} LightGBM settings by validation {metric}: "
                f"{describe_setting(results, int(final['best_round']))}")
    sel = results.get("selection") or {}
    score = sel.get("val_score", final.get("val_accuracy"))
    if score is not None:
        best += f" ({float(score):.4f})"
    if "active_only_accuracy" in final:
        best += f"; users only the active party holds: {_acc(final, 'active_only_accuracy')} (active-only head"
        own = int(final.get("own_validation_users", 0))
        if "active_only_round" in final and own < MIN_VALIDATION_USERS:
            best += f" of round {int(final['active_only_round'])}, the last: its {own} validation users are too few"
        elif "active_only_round" in final:
            best += f" of round {int(final['active_only_round'])}, chosen on the active party's {own} validation users"
        best += ")"
    return [head, best, *_protection(results, cfg)] + ([last] if last else [])


def _no_scores(results: Mapping[str, Any]) -> str:
    """The first closing line of a run without scores: under the active party's ``server-metrics=progress`` (the
    server's results say so, or its records hold only ``progress.*``) the scores stay on that party's node, in its own
    ``results.json``; else none was evaluated."""
    from flwr_vproto.messages import PROGRESS_METRICS

    rounds = results.get("rounds") or []
    policy = (results.get("flower") or {}).get("server_metrics")
    if policy == "progress" or any(str(k).startswith(PROGRESS_METRICS) for r in rounds for k in r):
        return (f"final: the scores stay with the active party (its server-metrics=progress): see the results.json "
                f"in its node-config results-dir; {len(rounds)} exchange(s) run")
    return f"final: no evaluated round ({len(rounds)} round(s) recorded)"


def _protection(results: Mapping[str, Any], cfg: Mapping[str, Any]) -> list[str]:
    """The labels' protection in one line, for methods that send the passives anything label-dependent."""
    from flwr_vproto.defences import describe

    if (cfg.get("method") or {}).get("name") not in ("vproto", "vanilla"):
        return []
    line = describe(results)
    return [line or "label protection: none (defence=none): each passive can read its shared users' labels from the "
            "gradient rows it receives (README, Labels)"]
