"""Loading finished runs for the report: ``results.json`` files, ``bench_methods.py`` JSON lines and the jobs of a
Hydra sweep (its trials), into :class:`Run` and :class:`Trial` records that the tables and plots read."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr_vproto.results import per_round

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
    """The aligned training users PSI found (``alignment.aligned.train``); None for ``centralized``, which runs no
    PSI."""
    try:
        return int(data["alignment"]["aligned"]["train"])
    except (KeyError, TypeError, ValueError):
        return None


def _csv_overlaps(loaded: list[tuple[Path, dict[str, Any], dict[str, Any]]]) -> dict[Path, tuple[str, float]]:
    """Row label and axis position of every csv run: the overlap its files really have.

    * ``dataset.csv.split_seed`` set (what ``split_table`` prints): the row is the measured aligned count,
      ``alignment.aligned.train`` (``"212 users"``). Every seed of one split finds the same users.
    * A run that did not record it (``centralized``: no PSI) takes the count of the
      runs on the same files with the same split, preferring those of the same sweep folder.
    * ``split_seed`` null: each seed re-draws the split, so the count moves a little from seed to seed; the row is
      the files, labelled with the counts' range (``"198-212 users"``).
    * Nothing known: the row is the files, labelled by the active file's folder.
    """
    info: dict[Path, dict[str, Any]] = {}
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
        if not isinstance(cfg, Mapping):
            cfg = {}
        flat = _flatten(cfg)
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
                        slim_history(per_round(data)), str(f), str(flat.get("engine") or ""), label, axis))
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
    # what its rows are ranked within: scores of two datasets are not comparable (csv: the active file's stem)
    dataset: str = ""


def _job_overrides(job_dir: Path) -> dict[str, str]:
    """The job's command-line overrides (``.hydra/overrides.yaml``), as ``name -> value``."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    import yaml

    items = yaml.safe_load(path.read_text()) or []
    return dict(str(o).split("=", 1) for o in items if "=" in str(o))


def _val_score(data: Mapping[str, Any]) -> tuple[float, str]:
    """The score run_simulation.py returned (``selection``), or the validation accuracy (``flwr run``'s results.json
    has no ``selection``)."""
    sel = data.get("selection") or {}
    if "val_score" in sel:
        return float(sel["val_score"]), str(sel.get("metric", "accuracy"))
    return float((data.get("final") or {}).get("val_accuracy", math.nan)), "accuracy"


def _dataset_of(data: Mapping[str, Any]) -> str:
    """The dataset a results.json trained on, named as the method table names it (csv: :func:`csv_dataset_name`)."""
    cfg = data.get("config") if isinstance(data, Mapping) else None
    if not isinstance(cfg, Mapping):
        return ""
    name = str((cfg.get("dataset") or {}).get("name") or "")
    return csv_dataset_name(cfg) if name == "csv" else name


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
                                {k: overrides[n][k] for k in varying if k in overrides[n]}, _dataset_of(data)))
    return trials



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

