"""``python -m flwr_vproto.report``: :func:`write_report` (every file of the report) and the command line."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .labels import is_labels_file, write_label_report
from .load import ReportError, _optuna_result, load_runs, load_trials
from .plots import (
    NO_PLOTS,
    can_plot,
    plot_accuracy_per_round,
    plot_accuracy_vs_aligned,
    plot_pseudo_labels,
    plot_trials,
)
from .tables import (
    TABLE_NOTE,
    _best_first,
    best_trials,
    markdown_table,
    method_tables,
    repeated_seeds,
    summary_rows,
)


def write_report(paths: Iterable[str | Path], out: str | Path) -> dict[str, Any]:
    """Read the runs under ``paths``; write ``summary.md``, ``summary.csv`` and the PNG plots into ``out``.

    Returns what was written (``files``, ``rows``, ``trials``) and what :func:`main` prints: ``tables`` (each
    dataset's method table), ``best_trials`` (each dataset's best trials of a sweep) and ``labels`` (the label
    report's tables), so a caller can show the same without parsing the files.
    """
    import pandas as pd

    paths = list(paths)
    out = Path(out)
    labels = [p for p in paths if is_labels_file(p)]
    paths = [p for p in paths if p not in labels]
    leak = write_label_report(labels, out) if labels else None
    if leak and not paths:
        return {"runs": leak["runs"], "rows": [], "files": leak["files"], "trials": [], "best_trials": "",
                "labels": leak["tables"], "tables": ""}
    runs = load_runs(paths)
    out.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(runs)
    pd.DataFrame(rows).to_csv(out / "summary.csv", index=False, float_format="%.6g")
    md = [f"# Report: {len(runs)} runs from {', '.join(map(str, paths))}", "", TABLE_NOTE, "", markdown_table(runs)]
    repeats = repeated_seeds(runs)
    for line in repeats:
        print(f"report: warning: {line}", file=sys.stderr)
    if repeats:
        md += ["", "Warning: a seed counted more than once (n and the std overstate the evidence):", "",
               *[f"- {line}" for line in repeats]]
    if any("auc" in r.final for r in runs):
        md += ["", "Test AUC (binary tasks):", "", markdown_table([r for r in runs if "auc" in r.final], "auc")]
    draw = can_plot()
    plots = ([*plot_accuracy_per_round(runs, out), plot_accuracy_vs_aligned(runs, out), *plot_pseudo_labels(runs, out)]
             if draw else [])
    trials = [t for t in load_trials(paths) if math.isfinite(t.val_score)]
    best = ""
    files = [out / "summary.md", out / "summary.csv"]
    if len(trials) > 1:  # a sweep: its trials by the score it optimised
        best = best_trials(trials, top=10)
        pd.DataFrame([{"sweep": t.sweep, "trial": t.number, "val_score": t.val_score, "metric": t.metric,
                       "test_accuracy": t.test_accuracy, "test_auc": t.test_auc, **t.params}
                      for t in _best_first(trials)]).to_csv(out / "trials.csv", index=False, float_format="%.6g")
        optuna = _optuna_result(paths)
        (out / "trials.md").write_text("\n".join([f"# Trials by validation score ({len(trials)} trials)", "",
                                                 *optuna, *([""] if optuna else []), best_trials(trials, None)])
                                       + "\n")
        if draw:
            plots.insert(0, plot_trials(trials, out))
        files += [out / "trials.md", out / "trials.csv"]
        md[1:1] = ["", f"Best trials of the sweep by validation score, of {len(trials)} (all: trials.md); the test "
                   "score is shown, never used to choose:", "", best, *([""] if optuna else []), *optuna]
    md += [""] + ([f"![{p.stem}]({p.name})" for p in plots] if draw else [f"({NO_PLOTS})"])
    (out / "summary.md").write_text("\n".join(md) + "\n")
    return {"runs": len(runs) + (leak["runs"] if leak else 0), "rows": rows,
            "files": [*files, *plots, *(leak["files"] if leak else [])], "trials": trials, "best_trials": best,
            "labels": leak["tables"] if leak else "", "tables": method_tables(runs)}


def main(argv: list[str] | None = None) -> int:
    from . import __doc__ as description  # the package's docstring: what --help has always shown

    ap = argparse.ArgumentParser(prog="python -m flwr_vproto.report", description=description,
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
    # What summary.md leads with, per dataset: each dataset's method table, then (a sweep) each dataset's best trials.
    if rep["tables"]:
        print(rep["tables"] + "\n")
    if rep["best_trials"]:
        per = ", per dataset" if len({t.dataset for t in rep["trials"]}) > 1 else ""
        print(f"best trials by validation score{per} (of {len(rep['trials'])}; all: trials.md):\n"
              f"{rep['best_trials']}\n")
    if rep["labels"]:
        print(rep["labels"])
    print(f"{rep['runs']} runs -> " + ", ".join(str(f) for f in rep["files"]))
    return 0

