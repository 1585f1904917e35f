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

# The code is split by what it does, and every public name stays importable from here as it was from the single module
# before the split (benchmarks/ and the tests import them so): .load (runs and sweep trials from files), .tables
# (method and trials tables), .plots (PNG plots), .labels (the label-leakage report), .cli (write_report, main).
from .cli import main, write_report
from .labels import (
    LabelRun,
    is_labels_file,
    label_cells,
    label_rows,
    label_tables,
    load_label_runs,
    plot_label_tradeoff,
    write_label_report,
)
from .load import (
    ReportError,
    Run,
    Trial,
    csv_dataset_name,
    load_runs,
    load_trials,
    slim_history,
)
from .plots import (
    plot_accuracy_per_round,
    plot_accuracy_vs_aligned,
    plot_pseudo_labels,
    plot_trials,
)
from .tables import (
    GAP_METHODS,
    RowKey,
    best_trials,
    gap_closed,
    groups,
    markdown_table,
    method_tables,
    ordered_tags,
    repeated_seeds,
    split_engines,
    summary_rows,
    trials_table,
)

__all__ = [
    "GAP_METHODS", "LabelRun", "ReportError", "RowKey", "Run", "Trial", "best_trials", "csv_dataset_name",
    "gap_closed", "groups", "is_labels_file", "label_cells", "label_rows", "label_tables", "load_label_runs",
    "load_runs", "load_trials", "main", "markdown_table", "method_tables", "ordered_tags", "plot_accuracy_per_round",
    "plot_accuracy_vs_aligned", "plot_label_tradeoff", "plot_pseudo_labels", "plot_trials", "repeated_seeds",
    "slim_history", "split_engines", "summary_rows", "trials_table", "write_label_report", "write_report",
]
