"""The label-leakage trade-off from ``bench_labels.py`` records: table and plot of attack strength vs accuracy."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pandas as pd
import pytest

from flwr_vproto import report
from flwr_vproto.report import ReportError, is_labels_file, load_label_runs, main


def _rec(tag: str, method: str, dataset: str, fraction: float, seed: int, acc: float, audit: dict) -> dict:
    return {"tag": tag, "method": method, "dataset": dataset, "fraction": fraction, "seed": seed, "rounds": 2,
            "final": {"accuracy": acc, "best_round": 2.0}, "audit": audit, "seconds": 1.0}


def _binary(scale: float) -> dict:
    return {"max_norm_auc": 0.6 * scale, "max_direction_auc": 0.9 * scale, "max_projection_auc": 0.7 * scale,
            "max_cluster_accuracy": 0.8, "mean_norm_auc": 0.55, "majority_share": 0.76}


def _write(path: Path) -> Path:
    recs = []
    for frac in (0.01, 0.1):
        for seed in (0, 1):
            recs.append(_rec("none", "local", "adult", frac, seed, 0.80 + seed / 100, {}))
            recs.append(_rec("off", "vproto", "adult", frac, seed, 0.84 + seed / 100, _binary(1.0)))
            recs.append(_rec("eps1", "vproto", "adult", frac, seed, 0.81 + seed / 100, _binary(0.6 + seed / 10)))
            recs.append(_rec("off", "vanilla", "adult", frac, seed, 0.78, _binary(1.0)))
    for seed in (0, 1, 2):
        recs.append(_rec("none", "local", "digits", 0.05, seed, 0.7, {}))
        recs.append(_rec("noise16", "vproto", "digits", 0.05, seed, 0.8,
                          {"max_cluster_accuracy": 0.3 + seed / 10, "mean_cluster_accuracy": 0.2,
                           "majority_share": 0.1}))
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return path


def test_table_rows_are_setting_by_method_with_local_as_reference(tmp_path, capsys):
    path = _write(tmp_path / "labels.jsonl")
    assert is_labels_file(path) and not is_labels_file(tmp_path)
    assert main([str(path), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "out" / "labels.csv")
    adult = table[(table.dataset == "adult") & (table.aligned_fraction == 0.01)]
    assert list(zip(adult.setting, adult.method, strict=True)) == [("none", "local"), ("off", "vproto"),
                                                                   ("off", "vanilla"), ("eps1", "vproto")]
    eps1 = adult[adult.setting == "eps1"].iloc[0]
    # worst case = the strongest of the AUC attacks (direction, 0.9 x scale), averaged over seeds
    assert eps1.attack == "auc" and eps1.attack_mean == pytest.approx(statistics.mean([0.9 * 0.6, 0.9 * 0.7]))
    assert eps1.accuracy_minus_local == pytest.approx(0.01)
    assert "| none | local | 2 | 0.8050 ± 0.0071 | reference | — |" in printed
    assert f"| eps1 | vproto | 2 | 0.8150 ± 0.0071 | +0.0100 | {eps1.attack_mean:.4f} ± 0.0636 |" in printed
    digits = table[table.dataset == "digits"]
    assert set(digits.attack) == {"cluster_accuracy"} and digits.iloc[1].attack_mean == pytest.approx(0.4)
    assert "| noise16 | vproto | 3 | 0.8000 ± 0.0000 | +0.1000 | 0.4000 ± 0.1000 | 0.1000 |" in printed
    assert "chance (same, shuffled labels) |" in printed and printed.count("**adult, ") == 2
    for name in ("label_tradeoff_adult.png", "label_tradeoff_digits.png", "labels.md"):
        assert (tmp_path / "out" / name).stat().st_size > 100


def test_plot_has_one_marker_per_method_and_setting_and_local_as_a_line(tmp_path, monkeypatch):
    runs = load_label_runs(_write(tmp_path / "labels.jsonl"))
    figures = []
    monkeypatch.setattr(report.labels, "_save", lambda plt, fig, path: figures.append((path.name, fig)))
    report.plot_label_tradeoff(runs, tmp_path)
    (adult, fig), _ = figures
    assert adult == "label_tradeoff_adult.png" and len(fig.axes) == 2  # one panel per aligned fraction
    ax = fig.axes[0]
    points = {(round(float(ln.get_xdata()[0]), 4), round(float(ln.get_ydata()[0]), 4)) for ln in ax.lines
              if ln.get_linestyle() == "None"}
    assert points == {(0.9, 0.845), (0.9, 0.78), (round(0.9 * 0.65, 4), 0.815)}
    local = [ln for ln in ax.lines if ln.get_label().startswith("local")]
    assert [float(y) for y in local[0].get_ydata()] == [pytest.approx(0.805)] * 2


def test_bad_label_records_are_named(tmp_path, capsys):
    good = _rec("off", "vproto", "adult", 0.01, 0, 0.8, _binary(1.0))
    path = tmp_path / "l.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "final": {"best_round": 3.0}}) + "\n")
    assert len(load_label_runs(path)) == 1  # an unscored run is skipped, and said so
    assert "l.jsonl, line 2: skipped, field 'final' has no test 'accuracy'" in capsys.readouterr().err
    path.write_text(json.dumps(good) + "\n" + json.dumps({k: v for k, v in good.items() if k != "method"}) + "\n")
    with pytest.raises(ReportError, match=r"l.jsonl, line 2: not a bench_labels.py record \(missing 'method'\)"):
        load_label_runs(path)
    path.write_text(json.dumps({**good, "fraction": "a lot"}) + "\n")
    with pytest.raises(SystemExit, match=r"report: .*l.jsonl, line 1: a field has the wrong type"):
        main([str(path), "--out", str(tmp_path / "out")])
