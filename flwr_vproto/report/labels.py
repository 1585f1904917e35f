"""The label-leakage report of ``benchmarks/bench_labels.py`` records (records with an ``audit``): its own loading,
tables (defence setting x method, ``local`` as reference, worst-case attack) and trade-off plot."""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .load import ReportError
from .plots import NO_PLOTS, _legend, _pyplot, _save, can_plot
from .tables import _mean_std

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
            cells.append("0 (no rows)" if no_rows else _pm([x.audit.get("gradient_release_epsilon",
                                                                      x.audit.get("gradient_epsilon", math.nan))
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
    draw = can_plot()
    plots = plot_label_tradeoff(runs, out) if draw else []
    (out / "labels.md").write_text("\n".join([f"# Label leakage against accuracy: {len(runs)} runs from "
                                              f"{', '.join(map(str, paths))}", "", tables,
                                              *([f"![{p.stem}]({p.name})" for p in plots] if draw
                                                else [f"({NO_PLOTS})"])]) + "\n")
    return {"runs": len(runs), "tables": tables, "files": [out / "labels.md", out / "labels.csv", *plots]}

