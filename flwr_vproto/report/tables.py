"""The report's tables: the method table of ``summary.md``/``summary.csv`` (rows = dataset and overlap, one
column per method, the share of the gap closed) and the best-trials table of a sweep."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from flwr_vproto.config import INPROCESS_ONLY

from .load import Run, Trial

GAP_METHODS = ("vproto", "vanilla", "local", "centralized")
TREE_METHODS = ("gbdt_local", "gbdt_aligned", "gbdt_centralized")  # flwr_vproto/trees.py, after the four
# What the method table's cells are: the line above it in summary.md and in the printed report.
TABLE_NOTE = ("Test accuracy at each run's best validation round, mean ± std over seeds; gap closed = "
              "(vproto − max(vanilla, local)) / (centralized − max(vanilla, local)) on the means.")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def ordered_tags(runs: Iterable[Run]) -> list[str]:
    """The four methods of design §6 first, in their order, then the tree baselines, then any other tag
    alphabetically."""
    present = {r.tag for r in runs}
    known = GAP_METHODS + TREE_METHODS
    return [t for t in known if t in present] + sorted(present - set(known))


RowKey = tuple[str, float, str, str]  # dataset, axis position, overlap label, engine ("" unless engines are mixed)


def split_engines(runs: Iterable[Run]) -> bool:
    """Whether the runs hold more than one engine (centralized and the trees aside: only the in-process one).

    The engines are meant to give the same numbers for the same config and seed, so a Flower run and an in-process
    run of one seed are one seed run twice, not two seeds: mixed, each engine gets its own rows.
    """
    return len({r.engine for r in runs if r.method not in INPROCESS_ONLY}) > 1


def groups(runs: Iterable[Run]) -> dict[RowKey, dict[str, list[Run]]]:
    """``(dataset, axis, overlap label, engine) -> tag -> runs``: the rows of the tables.

    When engines are mixed (:func:`split_engines`) each engine has its own rows; ``centralized`` and tree runs
    (in-process only, the same whichever engine trains the others) join every engine's row of their dataset and
    overlap.
    """
    runs = list(runs)
    split = split_engines(runs)
    out: dict[RowKey, dict[str, list[Run]]] = {}
    bounds = []
    for r in runs:
        if split and r.method in INPROCESS_ONLY:
            bounds.append(r)
            continue
        out.setdefault((r.dataset, r.axis, r.overlap_label, r.engine if split else ""), {}).setdefault(
            r.tag, []).append(r)
    for r in bounds:
        rows = [k for k in out if k[:3] == (r.dataset, r.axis, r.overlap_label)] or [
            (r.dataset, r.axis, r.overlap_label, r.engine)]
        for key in rows:
            out.setdefault(key, {}).setdefault(r.tag, []).append(r)
    return dict(sorted(out.items()))


def repeated_seeds(runs: Iterable[Run]) -> list[str]:
    """One line per table cell that holds one seed more than once (the same run twice: it is not another seed, and
    it shrinks the std), naming the runs' files."""
    out = []
    for (ds, _, label, engine), by_tag in groups(runs).items():
        for tag, rs in by_tag.items():
            seen: dict[int, list[str]] = {}
            for r in rs:
                seen.setdefault(r.seed, []).append(r.source)
            for seed, sources in sorted(seen.items()):
                if len(sources) > 1:
                    out.append(f"{ds}, {label}{f', {engine}' if engine else ''}, {tag}: seed {seed} counted "
                               f"{len(sources)} times ({', '.join(sources)})")
    return out


def gap_closed(mean_accuracy: Mapping[str, float]) -> float | None:
    """Share of the gap closed (design §6) from mean accuracies per method; ``None`` if a method is missing or the
    upper bound does not beat the best baseline."""
    if not all(t in mean_accuracy for t in GAP_METHODS):
        return None
    base = max(mean_accuracy["vanilla"], mean_accuracy["local"])
    top = mean_accuracy["centralized"]
    if top <= base:
        return None
    return (mean_accuracy["vproto"] - base) / (top - base)


def summary_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per dataset, overlap (engine, when mixed) and method: n, mean and std of accuracy and AUC, gap."""
    rows = []
    for (ds, _, label, engine), by_tag in groups(runs).items():
        means = {t: _mean_std([r.final["accuracy"] for r in rs])[0] for t, rs in by_tag.items()}
        gap = gap_closed(means)
        for tag in ordered_tags(r for rs in by_tag.values() for r in rs):
            rs = by_tag[tag]
            acc_m, acc_s = _mean_std([r.final["accuracy"] for r in rs])
            aucs = [r.final["auc"] for r in rs if "auc" in r.final]
            auc_m, auc_s = _mean_std(aucs) if aucs else (math.nan, math.nan)
            rows.append({"dataset": ds, "aligned_fraction": rs[0].fraction, "aligned": label,
                         "aligned_users": rs[0].aligned_users, **({"engine": engine} if engine else {}),
                         "method": tag, "n": len(rs),
                         "seeds": " ".join(str(r.seed) for r in sorted(rs, key=lambda r: r.seed)),
                         "accuracy_mean": acc_m, "accuracy_std": acc_s, "auc_mean": auc_m, "auc_std": auc_s,
                         "gap_closed": math.nan if gap is None else gap})
    return rows


def markdown_table(runs: list[Run], metric: str = "accuracy") -> str:
    """Wide markdown table: one row per (dataset, overlap[, engine]), ``mean ± std (n=)`` per method, gap closed."""
    tags = ordered_tags(runs)
    split = split_engines(runs)
    head = "| dataset | aligned | " + ("engine | " if split else "") + " | ".join(tags) + (
        " | gap closed |" if metric == "accuracy" else " |")
    lines = [head, "|" + "---|" * (len(tags) + 2 + split + (metric == "accuracy"))]
    for (ds, _, label, engine), by_tag in groups(runs).items():
        cells = []
        for t in tags:
            vals = [r.final[metric] for r in by_tag.get(t, []) if metric in r.final]
            if vals:
                m, s = _mean_std(vals)
                cells.append(f"{m:.4f} ± {s:.4f} (n={len(vals)})")
            else:
                cells.append("—")
        line = f"| {ds} | {label} | " + (f"{engine or '?'} | " if split else "") + " | ".join(cells)
        if metric == "accuracy":
            gap = gap_closed({t: _mean_std([r.final["accuracy"] for r in rs])[0] for t, rs in by_tag.items()})
            line += f" | {'—' if gap is None else f'{gap:+.2f}'}"
        lines.append(line + " |")
    return "\n".join(lines)



# ---------------------------------------------------------------------------------------------------- sweeps
def _best_first(trials: list[Trial]) -> list[Trial]:
    """By validation score, best first (ties and NaN: the earlier trial first, NaN last)."""
    return sorted(trials, key=lambda t: (not math.isfinite(t.val_score),
                                         -t.val_score if math.isfinite(t.val_score) else 0.0, t.sweep, t.number))


def _short(value: str) -> str:
    """``0.0322041189759639`` -> ``0.0322``: a sampled float to 4 significant digits (trials.csv keeps them all)."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() or len(value) <= 6 else f"{number:.4g}"


def _score(value: float) -> str:
    """A score cell: 4 decimals, or ``—`` where the trial has none (``nan`` says nothing a reader can use)."""
    return f"{value:.4f}" if math.isfinite(value) else "—"


def trials_table(trials: list[Trial], top: int | None = 10) -> str:
    """Markdown: the ``top`` trials by validation score (``None``: all), with test scores and parameters."""
    ranked = _best_first(trials)[:top] if top else _best_first(trials)
    metric = ranked[0].metric if ranked else "accuracy"
    auc = any(math.isfinite(t.test_auc) for t in ranked)
    sweeps = len({t.sweep for t in ranked}) > 1
    head = ["rank", *(["sweep"] if sweeps else []), "trial", f"val {metric}", "test accuracy",
            *(["test AUC"] if auc else []), "parameters"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rank, t in enumerate(ranked, start=1):
        cells = [str(rank), *([t.sweep] if sweeps else []), str(t.number), _score(t.val_score),
                 _score(t.test_accuracy), *([_score(t.test_auc)] if auc else []),
                 " ".join(f"{k}={_short(v)}" for k, v in t.params.items()) or "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_trials(trials: list[Trial], top: int | None = 10) -> str:
    """The ``top`` trials by validation score of each dataset, one table per dataset (``None``: all trials).

    Two datasets' validation scores are not comparable, so one ranking never mixes them, and each table has a test
    AUC column only when its own trials have one (a multi-class dataset has none). Trials of one dataset: just
    :func:`trials_table`, with no heading.
    """
    datasets = sorted({t.dataset for t in trials})
    if len(datasets) <= 1:
        return trials_table(trials, top)
    parts = []
    for ds in datasets:
        mine = [t for t in trials if t.dataset == ds]
        shown = f"best {top} of {len(mine)}" if top and top < len(mine) else f"{len(mine)}"
        parts += [f"**{ds or '?'}** ({shown} trials):", "", trials_table(mine, top), ""]
    return "\n".join(parts).rstrip("\n")


def method_tables(runs: list[Run]) -> str:
    """The method table of ``summary.md``, one table per dataset: what ``python -m flwr_vproto.report`` prints.

    One table per dataset keeps each table to the methods that dataset has, and the test AUC table is printed only
    for a dataset whose runs recorded an AUC (a binary task), so no column is a row of ``nan``/``—``.
    """
    out = [TABLE_NOTE, ""]
    for ds in sorted({r.dataset for r in runs}):
        mine = [r for r in runs if r.dataset == ds]
        out += [f"{ds} ({len(mine)} runs):", markdown_table(mine), ""]
        with_auc = [r for r in mine if "auc" in r.final]
        if with_auc:
            out += [f"{ds}, test AUC:", markdown_table(with_auc, "auc"), ""]
    return "\n".join(out).rstrip("\n")
