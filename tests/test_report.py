"""The report (tables and plots from finished runs) and the progress lines of a sweep."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from flwr_vproto import report
from flwr_vproto.report import (
    ReportError,
    gap_closed,
    load_runs,
    main,
    markdown_table,
    repeated_seeds,
    summary_rows,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]
METHODS = ("vproto", "vanilla", "local", "centralized")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, str]:
    """A real Hydra sweep: 4 methods x 2 seeds, tiny digits, in-process engine (one subprocess)."""
    out = tmp_path_factory.mktemp("sweep") / "multirun"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "run_simulation.py"), "-m", "engine=inprocess", f"method={','.join(METHODS)}",
         "seed=0,1", "num_rounds=3", "exchange.count=3",  # one exchange (and progress line) per round, every method
         "dataset.max_train_users=200", "dataset.aligned_fraction=0.2",
         "runner.save_models=false", "method.lambda_passive=1.0",  # the passive third loss: pseudo-labels to plot
         "privacy=none",  # ... its prototypes in clear, acknowledged
         f"hydra.sweep.dir={out}"],
        cwd=out.parent, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


@pytest.mark.slow
def test_sweep_shows_job_round_elapsed_and_metrics(sweep):
    _, stdout = sweep
    lines = stdout.splitlines()
    for job in range(1, 9):
        mine = [ln for ln in lines if ln.startswith(f"[job {job}/8, sweep ")]
        rounds = [ln for ln in mine if "| elapsed " in ln]
        assert [ln.split("] ", 1)[1].split(" |")[0] for ln in rounds] == [f"round   {k}/3" for k in (1, 2, 3)]
        assert all("test acc" in ln for ln in rounds[-1:]) and any(ln.startswith(f"[job {job}/8") and "final:"
                                                                   in ln for ln in mine)
    assert not any("INFO" in ln or "ray" in ln.lower() for ln in lines)


@pytest.mark.slow
def test_report_of_a_sweep_matches_the_runs(sweep, tmp_path):
    multirun, _ = sweep
    assert main([str(multirun), "--out", str(tmp_path)]) == 0
    for name in ("summary.md", "summary.csv", "accuracy_per_round_digits.png", "accuracy_vs_aligned.png",
                 "pseudo_labels_digits.png"):
        assert (tmp_path / name).stat().st_size > 1000 or name.endswith((".md", ".csv")), name
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG") or not name.endswith(".png")
    finals: dict[str, list[float]] = {}
    for f in sorted(multirun.rglob("results.json")):
        r = json.loads(f.read_text())
        finals.setdefault(r["config"]["method"]["name"], []).append(r["final"]["accuracy"])
    assert sorted(finals) == sorted(METHODS) and all(len(v) == 2 for v in finals.values())
    table = pd.read_csv(tmp_path / "summary.csv")
    assert list(table["method"]) == list(METHODS)  # the design's order
    means = {}
    for row in table.itertuples():
        assert row.dataset == "digits" and row.aligned_fraction == 0.2 and row.n == 2
        assert row.accuracy_mean == pytest.approx(statistics.mean(finals[row.method]), abs=1e-6)
        assert row.accuracy_std == pytest.approx(statistics.stdev(finals[row.method]), abs=1e-6)
        means[row.method] = statistics.mean(finals[row.method])
    base = max(means["vanilla"], means["local"])
    if means["centralized"] > base:
        want = (means["vproto"] - base) / (means["centralized"] - base)
        assert table["gap_closed"].iloc[0] == pytest.approx(want, abs=1e-5)
        assert f"{want:+.2f} |" in (tmp_path / "summary.md").read_text()
    md = (tmp_path / "summary.md").read_text()
    m, s = statistics.mean(finals["vproto"]), statistics.stdev(finals["vproto"])
    assert f"| digits | 20% | {m:.4f} ± {s:.4f} (n=2) |" in md
    assert "![accuracy_vs_aligned](accuracy_vs_aligned.png)" in md


def _results(path: Path, method: str, seed: int, acc: float, tau: float = 0.1) -> None:
    path.mkdir(parents=True)
    cfg = {"seed": seed, "engine": "inprocess", "dataset": {"name": "adult", "aligned_fraction": 0.05},
           "method": {"name": method, "tau": tau}}
    rounds = [{"round": 1.0, "test/accuracy": acc - 0.1, "passive1/pseudo_coverage": 0.5, "active/sup_loss": 1.0},
              {"round": 2.0, "test/accuracy": acc, "val/accuracy": acc}]
    (path / "results.json").write_text(json.dumps({"config": cfg, "rounds": rounds,
                                                   "final": {"accuracy": acc, "auc": acc}}))


def test_runs_differing_in_an_option_get_their_own_tag_and_jsonl_is_read(tmp_path):
    _results(tmp_path / "a", "vproto", 0, 0.8)
    _results(tmp_path / "b", "vproto", 0, 0.7, tau=0.5)
    _results(tmp_path / "c", "local", 0, 0.6)
    runs = load_runs([tmp_path])
    assert sorted(r.tag for r in runs) == ["local", "vproto[method.tau=0.1]", "vproto[method.tau=0.5]"]
    assert runs[0].history[0] == {"round": 1.0, "test/accuracy": pytest.approx(0.7),
                                  "passive1/pseudo_coverage": 0.5}  # losses are not kept
    rec = {"tag": "vproto", "dataset": "digits", "fraction": 0.01, "seed": 3, "final": {"accuracy": 0.5}}
    (tmp_path / "b.jsonl").write_text(json.dumps(rec) + "\n")
    (r,) = load_runs([tmp_path / "b.jsonl"])
    assert (r.tag, r.dataset, r.fraction, r.seed, r.final) == ("vproto", "digits", 0.01, 3, {"accuracy": 0.5})
    rep = write_report([tmp_path], tmp_path / "out")
    assert "Test AUC" in (tmp_path / "out" / "summary.md").read_text()
    assert {p.name for p in rep["files"]} >= {"pseudo_labels_adult.png", "accuracy_per_round_adult.png"}


def test_gap_closed_and_table_format():
    assert gap_closed({"vproto": 0.9, "vanilla": 0.8, "local": 0.7, "centralized": 1.0}) == pytest.approx(0.5)
    assert gap_closed({"vproto": 0.9, "vanilla": 0.8, "local": 0.7}) is None
    assert gap_closed({"vproto": 0.9, "vanilla": 0.8, "local": 0.7, "centralized": 0.8}) is None


@pytest.mark.parametrize("records", ["methods.jsonl", "methods_40_rounds.jsonl", "methods_protected.jsonl",
                                     "methods_trees.jsonl"])
def test_shipped_benchmark_table_is_the_one_in_benchmarks_md(records):
    runs = load_runs([REPO / "benchmarks" / records])
    text = (REPO / "BENCHMARKS.md").read_text()
    for line in markdown_table(runs).splitlines()[2:]:
        assert line in text


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ReportError, match="no such file"):
        load_runs([tmp_path / "missing"])
    with pytest.raises(ReportError, match="no finished runs"):
        load_runs([tmp_path])
    (tmp_path / "x.jsonl").write_text("{}\n")
    with pytest.raises(ReportError, match=r"x.jsonl, line 1: not a bench_methods.py record"):
        load_runs([tmp_path / "x.jsonl"])
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text(json.dumps({"config": {"seed": 0, "method": {"name": "local"}}}))
    with pytest.raises(ReportError, match=r"r/results.json: not a results.json of run_simulation.py \(no config."
                                          r"dataset.name\)"):
        load_runs([tmp_path])
    with pytest.raises(SystemExit, match="report: .*no such file"):
        main([str(tmp_path / "missing")])


def _csv_run(path: Path, stem: str, method: str, seed: int, acc: float, aligned: int | None, *,
             folder: str = "parties", engine: str = "inprocess", split_seed: int | None = 0) -> None:
    """A dataset=csv results.json as run_simulation.py writes it (``aligned=None``: no alignment record)."""
    path.mkdir(parents=True)
    paths = [f"/data/{folder}/{stem}.active.csv", f"/data/{folder}/{stem}.passive1.csv"]
    cfg = {"seed": seed, "engine": engine, "eval_test": "best",
           "dataset": {"name": "csv", "aligned_fraction": 0.05,
                       "csv": {"paths": paths, "id_column": "id", "split_seed": split_seed}},
           "method": {"name": method, "tau": 0.1}, "audit": {"record": False, "dir": str(path / "audit")}}
    data = {"config": cfg, "rounds": [{"round": 1.0, "val/accuracy": 0.5, "test/accuracy": acc}],
            "final": {"accuracy": acc, "best_round": 1.0, "val_accuracy": 0.5}}
    if aligned is not None:
        data["alignment"] = {"aligned": {"train": aligned, "val": 10, "test": 20},
                             "rows": {"active": {"train": 100, "val": 10, "test": 20}}}
    (path / "results.json").write_text(json.dumps(data))


def test_csv_rows_are_dataset_and_measured_overlap(tmp_path):
    accs = {"vproto": 0.9, "vanilla": 0.7, "local": 0.8, "centralized": 1.0}
    for folder, stem, count in (("p2", "table", 12), ("p5", "table", 30), ("q", "other", 12)):
        for method, acc in accs.items():
            for seed in (0, 1):  # centralized records no alignment: it takes its files' count
                _csv_run(tmp_path / folder / f"{method}{seed}", stem, method, seed, acc + seed / 100,
                         None if method == "centralized" else count, folder=folder)
    _csv_run(tmp_path / "old" / "r", "legacy", "vproto", 0, 0.5, None, folder="legacy_parties")
    for seed, count in ((0, 40), (1, 44)):  # the split re-drawn per seed: one row, the counts' range
        _csv_run(tmp_path / "redraw" / f"s{seed}", "redraw", "local", seed, 0.6, count, split_seed=None)
    runs = load_runs([tmp_path])
    assert {r.tag for r in runs} == set(accs)  # neither the paths nor the audit folder is a variant
    rows = pd.DataFrame(summary_rows(runs))
    got = {(r.dataset, r.aligned): (r.n, r.gap_closed) for r in rows.itertuples() if r.method == "vproto"}
    assert got[("table", "12 users")] == (2, pytest.approx(0.5)) and got[("table", "30 users")][0] == 2
    assert got[("other", "12 users")] == (2, pytest.approx(0.5))
    assert ("legacy", "legacy_parties/ (aligned users not recorded)") in got
    assert set(rows[rows.dataset == "redraw"]["aligned"]) == {"40-44 users"}
    assert set(rows[rows.dataset == "table"]["n"]) == {2} and len(rows[rows.dataset == "table"]) == 8
    md = markdown_table(runs)
    assert "| table | 12 users | 0.9050 ± 0.0071 (n=2) |" in md and "| table | 30 users |" in md
    assert "| other | 12 users |" in md and "csv" not in md


def test_engines_are_never_counted_as_seeds(tmp_path):
    for engine in ("flower", "inprocess"):
        for method in ("vproto", "vanilla", "local"):
            _csv_run(tmp_path / engine / method, "t", method, 0, 0.8 if method == "vproto" else 0.6, 20,
                     engine=engine)
    _csv_run(tmp_path / "c", "t", "centralized", 0, 1.0, None)  # in-process only: the bound of both rows
    runs = load_runs([tmp_path])
    rows = summary_rows(runs)
    assert {(r["engine"], r["method"], r["n"]) for r in rows} == {
        (e, m, 1) for e in ("flower", "inprocess") for m in METHODS}
    assert all(r["gap_closed"] == pytest.approx(0.5) for r in rows)
    md = markdown_table(runs)
    assert "| dataset | aligned | engine | vproto |" in md
    assert "| t | 20 users | flower | 0.8000 ± 0.0000 (n=1) |" in md and "| t | 20 users | inprocess |" in md
    one = [r for r in runs if r.engine == "flower" or r.method == "centralized"]
    assert "engine" not in markdown_table(one)  # one engine (centralized aside): no engine column
    assert repeated_seeds(runs) == []
    _csv_run(tmp_path / "again", "t", "vproto", 0, 0.8, 20, engine="flower")  # the same run twice is not 2 seeds
    (line,) = repeated_seeds(load_runs([tmp_path]))
    assert line.startswith("t, 20 users, flower, vproto: seed 0 counted 2 times (")


def test_curves_mark_the_best_validation_round(tmp_path, monkeypatch):
    _results(tmp_path / "a", "vproto", 0, 0.8)
    data = json.loads((tmp_path / "a" / "results.json").read_text())
    data["final"]["best_round"] = 2.0
    (tmp_path / "a" / "results.json").write_text(json.dumps(data))
    figures = []
    monkeypatch.setattr(report.plots, "_save", lambda plt, fig, path: figures.append(fig))
    report.plot_accuracy_per_round(load_runs([tmp_path]), tmp_path)
    (fig,) = figures
    stars = [ln for ln in fig.axes[0].lines if ln.get_marker() == "*" and len(ln.get_xdata())]
    assert [(float(ln.get_xdata()[0]), float(ln.get_ydata()[0])) for ln in stars] == [(2.0, pytest.approx(0.8))]


def _job(sweep: Path, n: int, dataset: str, method: str, seed: int, acc: float, auc: float | None) -> None:
    """Job ``n`` of a Hydra sweep as run_simulation.py leaves it: results.json and ``.hydra/overrides.yaml``."""
    job = sweep / str(n)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- dataset={dataset}\n- method={method}\n- seed={seed}\n")
    cfg = {"seed": seed, "engine": "inprocess", "dataset": {"name": dataset, "aligned_fraction": 0.05},
           "method": {"name": method}}
    final = {"accuracy": acc, "best_round": 2.0, "val_accuracy": acc + 0.01, **({"auc": auc} if auc else {})}
    (job / "results.json").write_text(json.dumps({
        "config": cfg, "rounds": [{"round": 2.0, "test/accuracy": acc}], "final": final,
        "selection": {"metric": "accuracy", "val_score": acc + 0.01}}))


def test_printed_report_is_each_datasets_method_table_then_its_own_best_trials(tmp_path, capsys):
    """A sweep over a binary and a multi-class dataset: what the CLI prints is the method table of each dataset (the
    one summary.md has), then each dataset's best trials, never one ranking across datasets, and no ``nan``."""
    sweep, n = tmp_path / "multirun", 0
    for dataset, binary in (("cancer", True), ("wine", False)):
        for method, acc in (("vproto", 0.9), ("local", 0.8)):
            for seed in (0, 1):
                _job(sweep, n, dataset, method, seed, acc + seed / 100 - (0.3 if binary else 0.0),
                     acc - 0.1 if binary else None)
                n += 1
    assert main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "nan" not in printed.lower()
    blocks = printed.split("\n\n")
    heads = [b.splitlines()[0] for b in blocks if b.strip()]
    assert heads[1:5] == ["cancer (4 runs):", "cancer, test AUC:", "wine (4 runs):", "best trials by validation "
                          "score, per dataset (of 8; all: trials.md):"]
    tables = {b.splitlines()[0]: b.splitlines()[1:] for b in blocks if b.strip()}
    assert tables["cancer (4 runs):"] == [
        "| dataset | aligned | vproto | local | gap closed |", "|---|---|---|---|---|",
        "| cancer | 5% | 0.6050 ± 0.0071 (n=2) | 0.5050 ± 0.0071 (n=2) | — |"]
    assert tables["wine (4 runs):"][2] == "| wine | 5% | 0.9050 ± 0.0071 (n=2) | 0.8050 ± 0.0071 (n=2) | — |"
    assert "wine, test AUC:" not in tables  # a multi-class dataset has no AUC: no table of dashes
    summary = (tmp_path / "out" / "summary.md").read_text()  # the same numbers as the file's table
    assert "| cancer | 5% | 0.6050 ± 0.0071 (n=2) | 0.5050 ± 0.0071 (n=2) |" in summary
    assert printed.index("wine (4 runs):") < printed.index("best trials by validation score")
    ranked = {}
    for b in blocks:
        lines = b.splitlines()
        if lines and lines[0].startswith("| rank |"):
            ranked[lines[0]] = [ln.split(" | ")[-1] for ln in lines[2:]]
    # one ranking per dataset, each of its own trials; the test AUC column only where the trials have one
    assert ranked == {
        "| rank | trial | val accuracy | test accuracy | test AUC | parameters |": [
            f"dataset=cancer method={m} seed={s} |" for m, s in (("vproto", 1), ("vproto", 0), ("local", 1),
                                                                 ("local", 0))],
        "| rank | trial | val accuracy | test accuracy | parameters |": [
            f"dataset=wine method={m} seed={s} |" for m, s in (("vproto", 1), ("vproto", 0), ("local", 1),
                                                               ("local", 0))]}
    assert "**cancer** (4 trials):" in printed and "**wine** (4 trials):" in printed
    assert "**wine** (4 trials):" in (tmp_path / "out" / "trials.md").read_text()


def test_a_single_dataset_sweep_prints_its_table_and_ranking_without_headings(tmp_path, capsys):
    for n, (method, seed) in enumerate((("vproto", 0), ("local", 0), ("vproto", 1))):
        _job(tmp_path / "s", n, "digits", method, seed, 0.5 + n / 10, None)
    trials = report.load_trials([tmp_path / "s"])
    assert {t.dataset for t in trials} == {"digits"}
    assert report.best_trials(trials) == report.trials_table(trials)  # one dataset: the table as it always was
    assert main([str(tmp_path / "s"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "digits (3 runs):\n| dataset | aligned | vproto | local | gap closed |" in printed
    assert "best trials by validation score (of 3; all: trials.md):\n| rank | trial |" in printed
    assert "**digits**" not in printed and "nan" not in printed.lower()


def test_trials_without_a_score_show_a_dash_not_nan():
    trials = [report.Trial("s", 0, 0.9, "accuracy", 0.8, 0.7, {}, "adult"),
              report.Trial("s", 1, 0.8, "accuracy", float("nan"), float("nan"), {}, "adult")]
    assert report.trials_table(trials).splitlines()[3] == "| 2 | 1 | 0.8000 | — | — | — |"
