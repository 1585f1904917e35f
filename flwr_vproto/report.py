"""Tables and plots from finished runs: ``python -m flwr_vproto.report <run dirs, sweep dirs or .jsonl files>``.

Reads every ``results.json`` under the given directories (one ``run_simulation.py`` run, or a Hydra ``-m`` sweep)
and every line of the given ``.jsonl`` files (the records of ``benchmarks/bench_methods.py``), and writes into
``--out``:

* ``summary.md`` and ``summary.csv``: mean ± std of the test accuracy (and AUC for binary tasks) per dataset,
  aligned fraction and method, with the share of the gap closed (design §6),
  ``(vproto - max(vanilla, local)) / (centralized - max(vanilla, local))`` on the means;
* ``accuracy_per_round_<dataset>.png``: test accuracy per round for each method, one panel per aligned fraction;
* ``accuracy_vs_aligned.png``: final test accuracy against the aligned fraction, error bars = std over seeds;
* ``pseudo_labels_<dataset>.png``: the passive parties' pseudo-label coverage and accuracy per round;
* for a Hydra sweep (an Optuna search or a grid: job folders ``<sweep dir>/<n>/results.json``) ``trials.md`` and
  ``trials.csv``: every trial by validation score (what the sweep optimised), with its test score and the overrides
  that set it apart, and ``val_score_by_trial.png``: the validation score of each trial and the best so far. The
  best trials are also printed and head ``summary.md``.

Rows are a dataset and an overlap: the configured aligned fraction, or for ``dataset=csv`` the aligned training
users PSI found (``alignment.aligned.train``), the dataset being the active file's stem (``table.active.csv`` ->
``table``); see :func:`_csv_overlaps`. Runs of both engines are never pooled as seeds: mixed, each engine gets its
own rows (:func:`split_engines`). The per-round plots star the best-validation round.

A ``benchmarks/bench_labels.py`` file (records with an ``audit``) gets the label-leakage trade-off instead:
``labels.md``/``labels.csv`` (defence setting x method, ``local`` as reference, worst-case attack) and
``label_tradeoff_<dataset>.png`` (test accuracy against attack strength).

A run's *final* accuracy is the one ``results.json`` reports (test accuracy at the best validation round), so the
table repeats the runs' own numbers. Runs of one method that differ in other options (a sweep over ``method.tau``,
say) are told apart by a tag such as ``vproto[method.tau=0.2]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GAP_METHODS = ("vproto", "vanilla", "local", "centralized")
# Options that never make two runs different methods: what the table groups by (for csv the files are the dataset
# and the overlap, see _csv_overlaps), or how a run was executed (the final metrics do not depend on them).
_NOT_A_VARIANT = {"seed", "dataset.name", "dataset.aligned_fraction", "method.name", "engine", "device",
                  "dataset.csv.paths", "dataset.csv.name", "dataset.root", "eval_test", "resume", "checkpoint.dir",
                  "checkpoint.every", "checkpoint.retries", "audit.record", "audit.dir"}
# Per-round keys kept by :func:`slim_history` (the benchmark's JSON lines stay small).
_HISTORY_PREFIXES = ("val/accuracy", "val/auc", "test/accuracy", "test/auc", "test/active_only_accuracy")
_HISTORY_SUFFIXES = ("/pseudo_coverage", "/pseudo_accuracy", "/active_pseudo_coverage", "/pseudo_threshold")


class ReportError(ValueError):
    """No runs found, or a file that is not a run record; the message names the path."""


@dataclass
class Run:
    """One finished training run, whatever file it came from."""

    tag: str  # the method as shown in tables: method name, plus options that set this run apart
    dataset: str  # built-in name, or for dataset=csv the active file's stem (``table.active.csv`` -> ``table``)
    fraction: float  # the configured aligned fraction (NaN for csv: there the files decide who is aligned)
    seed: int
    final: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    source: str = ""
    engine: str = ""  # "inprocess" or "flower" ("" unknown)
    # csv rows are the overlap the files really have: the label ("212 users") and its position on the plots' x axis
    overlap: str = ""
    aligned_users: float = math.nan

    @property
    def method(self) -> str:
        """The method without the tag's variant options."""
        return self.tag.split("[", 1)[0]

    @property
    def axis(self) -> float:
        """Where the run's row sits on an aligned axis: the fraction, or the measured aligned users for csv."""
        return self.aligned_users if self.overlap else self.fraction

    @property
    def overlap_label(self) -> str:
        return self.overlap or f"{self.fraction:.0%}"


def slim_history(rounds: Iterable[Mapping[str, float]]) -> list[dict[str, float]]:
    """The per-round metrics the report plots: accuracies, AUC and pseudo-label coverage/accuracy."""
    out = []
    for rec in rounds:
        keep = {k: float(v) for k, v in rec.items()
                if k == "round" or k.startswith(_HISTORY_PREFIXES) or k.endswith(_HISTORY_SUFFIXES)}
        out.append(keep)
    return out


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out


def csv_dataset_name(cfg: Mapping[str, Any]) -> str:
    """The short name of a csv run's dataset: ``dataset.csv.name`` if set, else the active file's stem without
    ``.active`` (``parties/table.active.csv`` -> ``table``), so the files of one table are one dataset."""
    csv = (cfg.get("dataset") or {}).get("csv") or {}
    if csv.get("name"):
        return str(csv["name"])
    paths = csv.get("paths") or []
    if not paths:
        return "csv"
    stem = Path(str(paths[0])).name
    for suffix in (".csv", ".CSV", ".active"):
        stem = stem.removesuffix(suffix)
    return stem


def _aligned_train(data: Mapping[str, Any]) -> int | None:
    """The aligned training users PSI found (``alignment.aligned.train``); None in results.json written before it
    was recorded (and for ``centralized``, which runs no PSI)."""
    try:
        return int(data["alignment"]["aligned"]["train"])
    except (KeyError, TypeError, ValueError):
        return None


def _csv_overlaps(loaded: list[tuple[Path, dict[str, Any], dict[str, Any]]]) -> dict[Path, tuple[str, float]]:
    """Row label and axis position of every csv run: the overlap its files really have.

    * ``dataset.csv.split_seed`` set (what ``split_table`` prints): the row is the measured aligned count,
      ``alignment.aligned.train`` (``"212 users"``). Every seed of one split finds the same users.
    * A run that did not record it (``centralized``: no PSI; results.json of older versions) takes the count of the
      runs on the same files with the same split, preferring those of the same sweep folder.
    * ``split_seed`` null: each seed re-draws the split, so the count moves a little from seed to seed; the row is
      the files, labelled with the counts' range (``"198-212 users"``).
    * Nothing known: the row is the files, labelled by the active file's folder.
    """
    info = {}
    for f, data, flat in loaded:
        if flat["dataset.name"] != "csv":
            continue
        files = str(flat.get("dataset.csv.paths") or "[]")  # _flatten wrote the list as JSON
        fixed = flat.get("dataset.csv.split_seed") is not None
        split = (files, flat.get("dataset.csv.split_seed") if fixed else f"seed {flat['seed']}")
        info[f] = {"files": files, "split": split, "fixed": fixed, "count": _aligned_train(data),
                   "dataset": csv_dataset_name(data["config"])}
    for f, me in info.items():
        if me["count"] is None:
            peers = [(g.parent.parent != f.parent.parent, g) for g, o in info.items()
                     if o["split"] == me["split"] and o["count"] is not None]
            if peers:
                me["count"] = info[min(peers)[1]]["count"]
    out: dict[Path, tuple[str, float]] = {}
    by_files: dict[tuple[str, str], list[Path]] = {}
    for f, me in info.items():
        if me["fixed"] and me["count"] is not None:
            out[f] = (f"{me['count']} users", float(me["count"]))
        else:
            by_files.setdefault((me["dataset"], me["files"]), []).append(f)
    for (_, files), fs in by_files.items():
        counts = sorted(info[f]["count"] for f in fs if info[f]["count"] is not None)
        if counts:
            label = f"{counts[0]} users" if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]} users"
            value = statistics.mean(counts)
        else:
            first = (json.loads(files) or ["?"])[0]
            label, value = f"{Path(str(first)).parent.name or '.'}/ (aligned users not recorded)", -1.0
        for f in fs:
            out[f] = (label, float(value))
    return out


def _from_results(files: list[Path]) -> list[Run]:
    """Runs from ``results.json`` files; options that vary between runs of one method become part of its tag."""
    loaded = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except json.JSONDecodeError as err:
            raise ReportError(f"{f}: not a results.json of run_simulation.py ({err})") from None
        cfg = data.get("config") if isinstance(data, dict) else None
        flat = _flatten(cfg) if isinstance(cfg, Mapping) else {}
        missing = [k for k in ("dataset.name", "method.name", "seed") if k not in flat]
        if missing:
            raise ReportError(f"{f}: not a results.json of run_simulation.py (no config.{missing[0]})")
        if flat["dataset.name"] == "csv":
            flat["dataset.name"] = csv_dataset_name(cfg)
        loaded.append((f, data, flat))
    overlaps = _csv_overlaps([(f, d, {**fl, "dataset.name": d["config"]["dataset"]["name"]}) for f, d, fl in loaded])
    by_method: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _, _, flat in loaded:
        by_method.setdefault((flat["dataset.name"], flat["method.name"]), []).append(flat)
    varying: dict[tuple[str, str], list[str]] = {}
    for key, flats in by_method.items():
        names = sorted({k for fl in flats for k in fl} - _NOT_A_VARIANT)
        varying[key] = [k for k in names if len({json.dumps(fl.get(k)) for fl in flats}) > 1]
    runs = []
    for f, data, flat in loaded:
        keys = varying[(flat["dataset.name"], flat["method.name"])]
        tag = flat["method.name"]
        if keys:
            tag += "[" + ",".join(f"{k}={flat.get(k)}" for k in keys) + "]"
        label, axis = overlaps.get(f, ("", math.nan))
        fraction = math.nan if label else float(flat.get("dataset.aligned_fraction", math.nan))
        runs.append(Run(tag, flat["dataset.name"], fraction, int(flat["seed"]), dict(data.get("final") or {}),
                        slim_history(data.get("rounds") or []), str(f), str(flat.get("engine") or ""), label, axis))
    return runs


def _from_jsonl(path: Path) -> list[Run]:
    """Runs from the JSON lines of ``benchmarks/bench_methods.py``."""
    runs = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            runs.append(Run(str(r["tag"]), str(r["dataset"]), float(r["fraction"]), int(r["seed"]),
                            dict(r["final"]), list(r.get("history") or []), f"{path}:{n}",
                            str(r.get("engine") or "inprocess")))  # the bench_*.py scripts run in-process
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ReportError(f"{path}, line {n}: not a bench_methods.py record ({err})") from None
    return runs


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Every run under ``paths``: directories are searched for ``results.json``; ``.jsonl`` files are records."""
    runs: list[Run] = []
    results: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            results += sorted(p.rglob("results.json"))
        elif p.is_file() and p.suffix == ".jsonl":
            runs += _from_jsonl(p)
        elif p.is_file() and p.suffix == ".json":
            results.append(p)
        else:
            raise ReportError(f"{p}: not a run directory, results.json or .jsonl file" if p.exists()
                              else f"{p}: no such file or directory")
    runs += _from_results(results)
    runs = [r for r in runs if "accuracy" in r.final]
    if not runs:
        raise ReportError(f"no finished runs (results.json with final metrics) under {', '.join(map(str, paths))}")
    return runs


# ---------------------------------------------------------------------------------------------------- sweeps
@dataclass
class Trial:
    """One job of a Hydra sweep: its validation score (the objective), test score and distinguishing overrides."""

    sweep: str  # the sweep directory
    number: int  # Hydra's job number (= the Optuna trial number for an Optuna sweep run from scratch)
    val_score: float
    metric: str
    test_accuracy: float
    test_auc: float
    params: dict[str, str]


def _job_overrides(job_dir: Path) -> dict[str, str]:
    """The job's command-line overrides (``.hydra/overrides.yaml``), as ``name -> value``."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    import yaml

    items = yaml.safe_load(path.read_text()) or []
    return dict(str(o).split("=", 1) for o in items if "=" in str(o))


def _val_score(data: Mapping[str, Any]) -> tuple[float, str]:
    """The score run_simulation.py returned (``selection``), or the validation accuracy of older results."""
    sel = data.get("selection") or {}
    if "val_score" in sel:
        return float(sel["val_score"]), str(sel.get("metric", "accuracy"))
    return float((data.get("final") or {}).get("val_accuracy", math.nan)), "accuracy"


def load_trials(paths: Iterable[str | Path]) -> list[Trial]:
    """The trials of every sweep under ``paths``: folders whose numbered sub-folders hold a ``results.json``.

    Only the overrides that differ between a sweep's jobs are kept as its parameters (the shared ones, such as
    ``engine=inprocess``, say nothing about a trial).
    """
    jobs: dict[Path, list[tuple[int, Path]]] = {}
    for p in map(Path, paths):
        for f in sorted(p.rglob("results.json")) if p.is_dir() else []:
            if f.parent.name.isdigit():
                jobs.setdefault(f.parent.parent, []).append((int(f.parent.name), f))
    trials = []
    for sweep, found in sorted(jobs.items()):
        overrides = {n: _job_overrides(f.parent) for n, f in found}
        names = sorted({k for o in overrides.values() for k in o})
        varying = [k for k in names if len({o.get(k) for o in overrides.values()}) > 1]
        for n, f in sorted(found):
            try:
                data = json.loads(f.read_text())
            except json.JSONDecodeError as err:
                raise ReportError(f"{f}: not a results.json of run_simulation.py ({err})") from None
            score, metric = _val_score(data)
            final = data.get("final") or {}
            trials.append(Trial(str(sweep), n, score, metric, float(final.get("accuracy", math.nan)),
                                float(final.get("auc", math.nan)),
                                {k: overrides[n][k] for k in varying if k in overrides[n]}))
    return trials


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
        cells = [str(rank), *([t.sweep] if sweeps else []), str(t.number), f"{t.val_score:.4f}",
                 f"{t.test_accuracy:.4f}", *([f"{t.test_auc:.4f}"] if auc else []),
                 " ".join(f"{k}={_short(v)}" for k, v in t.params.items()) or "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_trials(trials: list[Trial], out: Path) -> Path:
    """Validation score by trial (dots) and the best so far (line), one colour per sweep."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    sweeps = sorted({t.sweep for t in trials})
    for sweep in sweeps:
        mine = sorted((t for t in trials if t.sweep == sweep), key=lambda t: t.number)
        xs = [t.number for t in mine]
        ys = [t.val_score for t in mine]
        best, running = -math.inf, []
        for y in ys:
            best = max(best, y) if math.isfinite(y) else best
            running.append(best if math.isfinite(best) else math.nan)
        label = Path(sweep).name if len(sweeps) > 1 else None
        dots = ax.scatter(xs, ys, s=18, label=label)
        ax.step(xs, running, where="post", color=dots.get_facecolor()[0], alpha=0.7)
    ax.set_xlabel("trial (Hydra job number)")
    ax.set_ylabel(f"validation {trials[0].metric} (line: best so far)")
    ax.set_title("sweep: validation score by trial")
    ax.grid(alpha=0.3)
    _legend(ax)
    fig.tight_layout()
    path = out / "val_score_by_trial.png"
    _save(plt, fig, path)
    return path


def _optuna_result(paths: Iterable[str | Path]) -> list[str]:
    """The Optuna sweeper's own summary (``optimization_results.yaml``) of each sweep under ``paths``."""
    lines = []
    for p in map(Path, paths):
        for f in sorted(p.rglob("optimization_results.yaml")) if p.is_dir() else []:
            import yaml

            res = yaml.safe_load(f.read_text()) or {}
            if "best_value" in res:
                params = " ".join(f"{k}={v}" for k, v in (res.get("best_params") or {}).items())
                lines.append(f"Optuna ({f.parent}): best value {float(res['best_value']):.4f} with {params}")
    return lines


# ---------------------------------------------------------------------------------------------------- tables
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def ordered_tags(runs: Iterable[Run]) -> list[str]:
    """The four methods of design §6 first, in their order, then any other tag alphabetically."""
    present = {r.tag for r in runs}
    return [t for t in GAP_METHODS if t in present] + sorted(present - set(GAP_METHODS))


RowKey = tuple[str, float, str, str]  # dataset, axis position, overlap label, engine ("" unless engines are mixed)


def split_engines(runs: Iterable[Run]) -> bool:
    """Whether the runs hold more than one engine (centralized aside: it has only the in-process one).

    The engines are meant to give the same numbers for the same config and seed, so a Flower run and an in-process
    run of one seed are one seed run twice, not two seeds: mixed, each engine gets its own rows.
    """
    return len({r.engine for r in runs if r.method != "centralized"}) > 1


def groups(runs: Iterable[Run]) -> dict[RowKey, dict[str, list[Run]]]:
    """``(dataset, axis, overlap label, engine) -> tag -> runs``: the rows of the tables.

    When engines are mixed (:func:`split_engines`) each engine has its own rows; ``centralized`` runs (in-process
    only, the same bound whichever engine trains the others) join every engine's row of their dataset and overlap.
    """
    runs = list(runs)
    split = split_engines(runs)
    out: dict[RowKey, dict[str, list[Run]]] = {}
    bounds = []
    for r in runs:
        if split and r.method == "centralized":
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


# ---------------------------------------------------------------------------------------------------- plots
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def _per_round(runs: list[Run], pick: Any) -> tuple[list[int], list[float], list[float]]:
    """Mean and std over runs of ``pick(record)`` at each round where at least one run has it."""
    at: dict[int, list[float]] = {}
    for r in runs:
        for rec in r.history:
            v = pick(rec)
            if v is not None and math.isfinite(v):
                at.setdefault(int(rec["round"]), []).append(v)
    xs = sorted(at)
    stats = [_mean_std(at[x]) for x in xs]
    return xs, [m for m, _ in stats], [s for _, s in stats]


def _passive_mean(suffix: str) -> Any:
    def pick(rec: Mapping[str, float]) -> float | None:
        vals = [v for k, v in rec.items() if k.startswith("passive") and k.endswith(suffix)]
        return sum(vals) / len(vals) if vals else None

    return pick


def _save(plt: Any, fig: Any, path: Path) -> None:
    """Write one figure and free it (a sweep draws many)."""
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cells(runs: Iterable[Run]) -> list[tuple[float, str]]:
    """The overlaps (axis position, label) the runs cover, in axis order."""
    return sorted({(r.axis, r.overlap_label) for r in runs})


def _lines(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """One plotted line per method tag, and per engine when engines are mixed (centralized: its own line)."""
    split = split_engines(runs)
    out = []
    for tag in ordered_tags(runs):
        mine = [r for r in runs if r.tag == tag]
        engines = sorted({r.engine for r in mine}) if split and mine[0].method != "centralized" else [""]
        for engine in engines:
            out.append((f"{tag} ({engine or '?'})" if engine else tag,
                        [r for r in mine if not engine or r.engine == engine]))
    return out


def plot_accuracy_per_round(runs: list[Run], out: Path) -> list[Path]:
    """Per dataset, one panel per overlap: mean test accuracy per round of each method (band: ± std).

    A star marks where the table's number comes from: at the mean best-validation round (``final.best_round``),
    the mean final test accuracy. With one seed it sits on the curve; under ``eval_test=best`` (the default) the test
    accuracy is only measured at rounds that were a new best on validation and at the last round, so the curve
    joins those points and its last point after the star is the last round's.
    """
    plt = _pyplot()
    written = []
    for ds in sorted({r.dataset for r in runs}):
        mine = [r for r in runs if r.dataset == ds and any("test/accuracy" in h for h in r.history)]
        if not mine:
            continue
        cells = _cells(mine)
        fig, axes = plt.subplots(1, len(cells), figsize=(3.6 * len(cells), 3.2), squeeze=False, sharey=True)
        starred = False
        for ax, (axis, label) in zip(axes[0], cells, strict=True):
            here = [r for r in mine if (r.axis, r.overlap_label) == (axis, label)]
            for name, sel in _lines(here):
                xs, m, s = _per_round(sel, lambda rec: rec.get("test/accuracy"))
                if not xs:
                    continue
                line, = ax.plot(xs, m, marker="." if len(xs) < 40 else None, label=name)
                ax.fill_between(xs, [a - b for a, b in zip(m, s, strict=True)],
                                [a + b for a, b in zip(m, s, strict=True)], color=line.get_color(), alpha=0.15)
                best = [r.final["best_round"] for r in sel if "best_round" in r.final]
                if best:
                    ax.plot([statistics.mean(best)], [statistics.mean(r.final["accuracy"] for r in sel)], marker="*",
                            markersize=13, color=line.get_color(), markeredgecolor="black", linestyle="none")
                    starred = True
            ax.set_title(f"{ds}, {label}" + (" aligned" if label.endswith("%") else ""))
            ax.set_xlabel("round")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("test accuracy")
        if starred:  # one legend entry for the stars, in no method's colour
            axes[0][-1].plot([], [], marker="*", markersize=11, color="white", markeredgecolor="black",
                             linestyle="none", label="best val round (table)")
        _legend(axes[0][-1])
        fig.tight_layout()
        path = out / f"accuracy_per_round_{ds}.png"
        _save(plt, fig, path)
        written.append(path)
    return written


def plot_accuracy_vs_aligned(runs: list[Run], out: Path) -> Path:
    """One panel per dataset: final test accuracy against the overlap (the aligned fraction, or for csv the measured
    aligned users), error bars = std over seeds."""
    plt = _pyplot()
    datasets = sorted({r.dataset for r in runs})
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.4), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        mine = [r for r in runs if r.dataset == ds]
        counts = all(r.overlap for r in mine)
        scale = 1.0 if counts else 100.0
        for name, sel in _lines(mine):
            cells = _cells(sel)
            stats = [_mean_std([r.final["accuracy"] for r in sel if (r.axis, r.overlap_label) == c]) for c in cells]
            ax.errorbar([c[0] * scale for c in cells], [m for m, _ in stats], yerr=[s for _, s in stats],
                        marker="o", capsize=3, label=name)
        ticks = _cells(mine)
        if len(ticks) > 1 and all(a > 0 for a, _ in ticks):
            ax.set_xscale("log")
        ax.set_xticks([a * scale for a, _ in ticks], [lab for _, lab in ticks])
        ax.minorticks_off()
        ax.set_title(ds)
        ax.set_xlabel("aligned training users (measured)" if counts else "aligned users (% of training users)")
        ax.set_ylabel("test accuracy (best val round)")
        ax.grid(alpha=0.3)
        _legend(ax)
    fig.tight_layout()
    path = out / "accuracy_vs_aligned.png"
    _save(plt, fig, path)
    return path


def plot_pseudo_labels(runs: list[Run], out: Path) -> list[Path]:
    """Per dataset: passive parties' pseudo-label coverage and accuracy per round, one line per method and fraction."""
    plt = _pyplot()
    written = []
    for ds in sorted({r.dataset for r in runs}):
        mine = [r for r in runs if r.dataset == ds
                and any(k.endswith("/pseudo_coverage") and k.startswith("passive") for h in r.history for k in h)]
        if not mine:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        for name, of_line in _lines(mine):
            for cell in _cells(of_line):
                sel = [r for r in of_line if (r.axis, r.overlap_label) == cell]
                for ax, suffix in zip(axes, ("/pseudo_coverage", "/pseudo_accuracy"), strict=True):
                    xs, m, _ = _per_round(sel, _passive_mean(suffix))
                    if xs:
                        ax.plot(xs, m, label=f"{name}, {cell[1]}")
        for ax, name in zip(axes, ("coverage (share kept)", "accuracy of kept labels"), strict=True):
            ax.set_title(f"{ds}: passive pseudo-label {name.split(' ')[0]}")
            ax.set_xlabel("round")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
        _legend(axes[1])
        fig.tight_layout()
        path = out / f"pseudo_labels_{ds}.png"
        _save(plt, fig, path)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------------- labels
# The records of benchmarks/bench_labels.py: the price of protecting the labels (accuracy against attack strength).
_LABEL_FIELDS = ("tag", "method", "dataset", "fraction", "seed", "final", "audit")
_SETTING_ORDER = ("none", "off", "first3", "every5", "noise4", "noise16", "gauss_e8", "gauss_e4_first5",
                  "gauss_e1_first3", "eps2", "eps1", "eps0.4", "no_gradients")
_AUC_ATTACKS = ("max_norm_auc", "max_direction_auc", "max_projection_auc")
_MARKERS = "osD^v<>pPX*h"


@dataclass
class LabelRun:
    """One run of ``bench_labels.py``: its defence setting, test accuracy and the attacks' worst-case scores."""

    setting: str  # the defence tag (``off``, ``noise16``, ``eps1``, ...; ``none`` for local, which sends nothing)
    method: str
    dataset: str
    fraction: float
    seed: int
    accuracy: float
    audit: dict[str, float]
    source: str = ""

    @property
    def binary(self) -> bool:
        """Whether the audit scored the binary attacks (AUCs); multi-class tasks have only the cluster attack."""
        return any(k in self.audit for k in _AUC_ATTACKS)

    @property
    def attack(self) -> float:
        """The strongest label-free attack of the run: the audit's ``strongest_*`` (every round alone and every
        round kept, averaged or stacked), or for older records the max over the per-round AUC attacks (binary), else
        the k-means cluster accuracy; NaN when no row was sent (local, or no gradient row released)."""
        for key in ("strongest_auc", "strongest_accuracy"):
            if key in self.audit:
                return float(self.audit[key])
        aucs = [float(self.audit[k]) for k in _AUC_ATTACKS if k in self.audit]
        if aucs:
            return max(aucs)
        return float(self.audit.get("max_cluster_accuracy", math.nan))


def is_labels_file(path: str | Path) -> bool:
    """Whether ``path`` is a ``bench_labels.py`` file: a ``.jsonl`` whose first record carries an ``audit``."""
    path = Path(path)
    if not (path.is_file() and path.suffix == ".jsonl"):
        return False
    with path.open() as fh:
        for line in fh:
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(first, dict) and "audit" in first
    return False


def load_label_runs(path: str | Path) -> list[LabelRun]:
    """Every record of a ``bench_labels.py`` file; a bad line is refused naming the file, the line and the field."""
    path = Path(path)
    runs = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            r = json.loads(line)
        except json.JSONDecodeError as err:
            raise ReportError(f"{where}: not JSON ({err})") from None
        missing = [k for k in _LABEL_FIELDS if k not in r] if isinstance(r, dict) else ["(a JSON object)"]
        if missing:
            raise ReportError(f"{where}: not a bench_labels.py record (missing {missing[0]!r})")
        if not isinstance(r["final"], dict):
            raise ReportError(f"{where}: field 'final' is not an object")
        if "accuracy" not in r["final"]:  # as for results.json: a run without a test score is not a finished run
            print(f"report: {where}: skipped, field 'final' has no test 'accuracy'", file=sys.stderr)
            continue
        if not isinstance(r["audit"], dict):
            raise ReportError(f"{where}: field 'audit' is not an object")
        try:
            runs.append(LabelRun(str(r["tag"]), str(r["method"]), str(r["dataset"]), float(r["fraction"]),
                                 int(r["seed"]), float(r["final"]["accuracy"]),
                                 {k: float(v) for k, v in r["audit"].items()}, f"{path}:{n}"))
        except (TypeError, ValueError) as err:
            raise ReportError(f"{where}: a field has the wrong type ({err})") from None
    if not runs:
        raise ReportError(f"{path}: no record with a test accuracy in 'final'")
    return runs


def _setting_key(setting: str) -> tuple[int, str]:
    return (_SETTING_ORDER.index(setting) if setting in _SETTING_ORDER else len(_SETTING_ORDER), setting)


def _method_key(method: str) -> tuple[int, str]:
    order = ("local", "vproto", "vanilla")
    return (order.index(method) if method in order else len(order), method)


def label_cells(runs: list[LabelRun]) -> dict[tuple[str, float], dict[tuple[str, str], list[LabelRun]]]:
    """``(dataset, fraction) -> (setting, method) -> runs over seeds``; local first, then settings weakest first."""
    out: dict[tuple[str, float], dict[tuple[str, str], list[LabelRun]]] = {}
    for r in runs:
        out.setdefault((r.dataset, r.fraction), {}).setdefault((r.setting, r.method), []).append(r)
    return {k: dict(sorted(v.items(), key=lambda kv: (kv[0][1] != "local", _setting_key(kv[0][0]),
                                                     _method_key(kv[0][1]))))
            for k, v in sorted(out.items())}


def _pm(values: list[float]) -> str:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "—"
    m, s = _mean_std(values)
    return f"{m:.4f} ± {s:.4f}"


def _chance(audit: dict[str, Any]) -> float:
    """What the worst-case attack scores when there is nothing to find (the same attacks on shuffled labels); older
    records: 0.5 AUC, or the majority share for the cluster attack."""
    if "strongest_chance" in audit:  # the same attacks as the strongest one, on shuffled labels
        return float(audit["strongest_chance"])
    if "max_norm_auc" in audit:  # a binary task
        return float(audit.get("max_auc_chance", 0.5))
    return float(audit.get("max_cluster_chance", audit.get("majority_share", math.nan)))


def label_rows(runs: list[LabelRun]) -> list[dict[str, Any]]:
    """One row per dataset, fraction, setting and method: accuracy and worst-case attack, mean and std over seeds."""
    binary = {ds: any(r.binary for r in runs if r.dataset == ds) for ds in {r.dataset for r in runs}}
    rows = []
    for (ds, frac), cell in label_cells(runs).items():
        local = [r.accuracy for (_, m), rs in cell.items() if m == "local" for r in rs]
        ref = statistics.mean(local) if local else math.nan
        for (setting, method), rs in cell.items():
            acc_m, acc_s = _mean_std([r.accuracy for r in rs])
            attacks = [r.attack for r in rs if math.isfinite(r.attack)]
            att_m, att_s = _mean_std(attacks) if attacks else (math.nan, math.nan)
            majority = [_chance(r.audit) for r in rs if math.isfinite(_chance(r.audit))]
            rows.append({"dataset": ds, "aligned_fraction": frac, "setting": setting, "method": method, "n": len(rs),
                         "seeds": " ".join(str(r.seed) for r in sorted(rs, key=lambda r: r.seed)),
                         "accuracy_mean": acc_m, "accuracy_std": acc_s, "accuracy_minus_local": acc_m - ref,
                         "attack": "auc" if binary[ds] else "cluster_accuracy", "attack_mean": att_m,
                         "attack_std": att_s, "majority_share": statistics.mean(majority) if majority else math.nan})
    return rows


def label_tables(runs: list[LabelRun]) -> str:
    """Markdown: one table per dataset and aligned fraction, rows = defence setting x method, local first."""
    rows = label_rows(runs)
    out = []
    for (ds, frac) in label_cells(runs):
        mine = [r for r in rows if (r["dataset"], r["aligned_fraction"]) == (ds, frac)]
        binary = mine[0]["attack"] == "auc"
        attack = ("strongest attack AUC | chance (same, shuffled labels)" if binary
                  else "strongest k-means cluster accuracy | chance (same, shuffled labels)")
        known = "known-100 advantage (AUC)" if binary else "known-100 advantage (accuracy)"
        out += [f"**{ds}, {frac:.0%} aligned** (test accuracy at the best validation round, mean ± std over seeds; "
                f"attack: the strongest label-free attack of each run — every round alone, and rows averaged or "
                f"stacked over every round kept —, mean ± std over seeds; chance: the same attacks against shuffled "
                f"labels, what finding nothing scores with this many users; known-100: a passive that knows 100 "
                f"labels, its model on its own features plus the rows minus on its features alone; epsilon: the "
                f"Gaussian channel's at delta 1e-5; no rows: no gradient row ever left)", "",
                f"| defence | method | n | test accuracy | vs local | {attack} | {known} | epsilon |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in mine:
            runs_here = [x for x in runs if (x.dataset, x.fraction, x.setting, x.method)
                         == (ds, frac, r["setting"], r["method"])]
            acc = _pm([x.accuracy for x in runs_here])
            delta = "reference" if r["method"] == "local" else f"{r['accuracy_minus_local']:+.4f}"
            no_rows = r["method"] != "local" and all(x.audit.get("rows_rounds", 1.0) == 0 for x in runs_here)
            cells = [r["setting"], r["method"], str(r["n"]), acc, delta,
                     "no rows" if no_rows else _pm([x.attack for x in runs_here])]
            cells.append("—" if r["method"] == "local" or no_rows or not math.isfinite(r["majority_share"])
                         else f"{r['majority_share']:.4f}")
            cells.append("0 (no rows)" if no_rows else _pm([x.audit.get("known100_advantage", math.nan)
                                                          for x in runs_here]))
            cells.append("0 (no rows)" if no_rows else _pm([x.audit.get("gradient_epsilon", math.nan)
                                                          for x in runs_here]))
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def plot_label_tradeoff(runs: list[LabelRun], out: Path) -> list[Path]:
    """Per dataset, one panel per aligned fraction: test accuracy against the worst-case attack, one marker per
    (method, defence setting) averaged over seeds, the method's settings joined weakest to strongest defence;
    ``local`` (which sends nothing) as a horizontal line. Up and to the left is better."""
    plt = _pyplot()
    written = []
    settings = sorted({r.setting for r in runs if r.method != "local"}, key=_setting_key)
    shape = {s: _MARKERS[i % len(_MARKERS)] for i, s in enumerate(settings)}
    for ds in sorted({r.dataset for r in runs}):
        mine = [r for r in runs if r.dataset == ds]
        binary = any(r.binary for r in mine)
        fracs = sorted({r.fraction for r in mine})
        fig, axes = plt.subplots(1, len(fracs), figsize=(4.2 * len(fracs), 3.8), squeeze=False, sharey=True)
        methods = sorted({r.method for r in mine if r.method != "local"}, key=_method_key)
        colours = {m: f"C{i}" for i, m in enumerate(methods)}
        for ax, frac in zip(axes[0], fracs, strict=True):
            cell = label_cells([r for r in mine if r.fraction == frac])[(ds, frac)]
            chance = [_chance(r.audit) for rs in cell.values() for r in rs if math.isfinite(_chance(r.audit))]
            for method in methods:
                pts = []
                for (setting, m), rs in cell.items():
                    attacks = [r.attack for r in rs if math.isfinite(r.attack)]
                    if m == method and chance and all(r.audit.get("rows_rounds", 1.0) == 0 for r in rs):
                        attacks = [statistics.mean(chance)]  # no row ever sent: nothing above chance to read
                    if m != method or not attacks:
                        continue
                    x, y = statistics.mean(attacks), statistics.mean(r.accuracy for r in rs)
                    pts.append((x, y))
                    ax.plot([x], [y], marker=shape[setting], color=colours[method], linestyle="none", markersize=7)
                    ax.annotate(setting, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colours[method], alpha=0.5,
                            label=method)
            local = [r.accuracy for (_, m), rs in cell.items() if m == "local" for r in rs]
            if local:
                ax.axhline(statistics.mean(local), color="grey", linestyle="--", label="local (sends nothing)")
            if chance:
                ax.axvline(statistics.mean(chance), color="grey", linestyle=":", linewidth=1,
                           label="chance: the attacks on shuffled labels (no rows sent: plotted here)")
            ax.set_title(f"{ds}, {frac:.0%} aligned")
            ax.set_xlabel("strongest attack AUC" if binary else "strongest attack (k-means accuracy)")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("test accuracy (best val round)")
        _legend(axes[0][-1])
        fig.tight_layout()
        path = out / f"label_tradeoff_{ds}.png"
        _save(plt, fig, path)
        written.append(path)
    return written


def write_label_report(paths: Iterable[str | Path], out: Path) -> dict[str, Any]:
    """The trade-off report of ``bench_labels.py`` files: ``labels.md``, ``labels.csv`` and one plot per dataset."""
    import pandas as pd

    paths = list(paths)
    runs = [r for p in paths for r in load_label_runs(p)]
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(label_rows(runs)).to_csv(out / "labels.csv", index=False, float_format="%.6g")
    tables = label_tables(runs)
    plots = plot_label_tradeoff(runs, out)
    (out / "labels.md").write_text("\n".join([f"# Label leakage against accuracy: {len(runs)} runs from "
                                              f"{', '.join(map(str, paths))}", "", tables,
                                              *[f"![{p.stem}]({p.name})" for p in plots]]) + "\n")
    return {"runs": len(runs), "tables": tables, "files": [out / "labels.md", out / "labels.csv", *plots]}


# ---------------------------------------------------------------------------------------------------- entry
def write_report(paths: Iterable[str | Path], out: str | Path) -> dict[str, Any]:
    """Read the runs under ``paths``; write ``summary.md``, ``summary.csv`` and the PNG plots into ``out``."""
    import pandas as pd

    paths = list(paths)
    out = Path(out)
    labels = [p for p in paths if is_labels_file(p)]
    paths = [p for p in paths if p not in labels]
    leak = write_label_report(labels, out) if labels else None
    if leak and not paths:
        return {"runs": leak["runs"], "rows": [], "files": leak["files"], "trials": [], "best_trials": "",
                "labels": leak["tables"]}
    runs = load_runs(paths)
    out.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(runs)
    pd.DataFrame(rows).to_csv(out / "summary.csv", index=False, float_format="%.6g")
    md = [f"# Report: {len(runs)} runs from {', '.join(map(str, paths))}", "",
          "Test accuracy at each run's best validation round, mean ± std over seeds; gap closed = "
          "(vproto − max(vanilla, local)) / (centralized − max(vanilla, local)) on the means.", "",
          markdown_table(runs)]
    repeats = repeated_seeds(runs)
    for line in repeats:
        print(f"report: warning: {line}", file=sys.stderr)
    if repeats:
        md += ["", "Warning: a seed counted more than once (n and the std overstate the evidence):", "",
               *[f"- {line}" for line in repeats]]
    if any("auc" in r.final for r in runs):
        md += ["", "Test AUC (binary tasks):", "", markdown_table([r for r in runs if "auc" in r.final], "auc")]
    plots = [*plot_accuracy_per_round(runs, out), plot_accuracy_vs_aligned(runs, out), *plot_pseudo_labels(runs, out)]
    trials = [t for t in load_trials(paths) if math.isfinite(t.val_score)]
    best = ""
    files = [out / "summary.md", out / "summary.csv"]
    if len(trials) > 1:  # a sweep: its trials by the score it optimised
        best = trials_table(trials, top=10)
        pd.DataFrame([{"sweep": t.sweep, "trial": t.number, "val_score": t.val_score, "metric": t.metric,
                       "test_accuracy": t.test_accuracy, "test_auc": t.test_auc, **t.params}
                      for t in _best_first(trials)]).to_csv(out / "trials.csv", index=False, float_format="%.6g")
        optuna = _optuna_result(paths)
        (out / "trials.md").write_text("\n".join([f"# Trials by validation score ({len(trials)} trials)", "",
                                                 *optuna, *([""] if optuna else []), trials_table(trials, None)])
                                       + "\n")
        plots.insert(0, plot_trials(trials, out))
        files += [out / "trials.md", out / "trials.csv"]
        md[1:1] = ["", f"Best trials of the sweep by validation score, of {len(trials)} (all: trials.md); the test "
                   "score is shown, never used to choose:", "", best, *([""] if optuna else []), *optuna]
    md += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    return {"runs": len(runs) + (leak["runs"] if leak else 0), "rows": rows,
            "files": [*files, *plots, *(leak["files"] if leak else [])], "trials": trials, "best_trials": best,
            "labels": leak["tables"] if leak else ""}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flwr_vproto.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="run or multirun directories, results.json or bench .jsonl files")
    ap.add_argument("--out", default=None, help="output folder (default: <first path>/report, or ./report)")
    args = ap.parse_args(argv)
    first = Path(args.paths[0])
    out = Path(args.out) if args.out else (first / "report" if first.is_dir() else Path("report"))
    try:
        rep = write_report(args.paths, out)
    except ReportError as err:
        raise SystemExit(f"report: {err}") from None
    if rep["labels"]:
        print(rep["labels"])
    if rep["best_trials"]:
        print(f"best trials by validation score (of {len(rep['trials'])}):\n{rep['best_trials']}")
    print(f"{rep['runs']} runs -> " + ", ".join(str(f) for f in rep["files"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
