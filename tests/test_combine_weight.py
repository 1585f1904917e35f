"""Issue 22, item 6c: a combine weight fitted on a few dozen validation rows is shrunk toward the plain average of
the joint model and the active-only head; from ``COMBINE_TRUSTED_ROWS`` rows up it is used as fitted, bit for bit,
unless the combination does not beat the active-only head by more than ``method.research.combine_gate`` standard
errors of its log-loss on those rows (issue 28: then the head ships alone)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flwr_vproto import scoring
from flwr_vproto.config import config_from_dict
from flwr_vproto.data import load_vertical_dataset
from flwr_vproto.inprocess import run_inprocess
from flwr_vproto.method.calibration import (
    COMBINE_TRUSTED_ROWS,
    combination_gain,
    gated_combine_weight,
    trusted_combine_weight,
)
from flwr_vproto.split_table import split_table

GRID = [float(w) for w in np.linspace(0.0, 1.0, 11)]  # what fit_combine_weight returns


def test_enough_validation_rows_keep_the_fitted_weight_exactly():
    for rows in (COMBINE_TRUSTED_ROWS, 144, 3000):
        assert [trusted_combine_weight(w, rows) for w in GRID] == GRID


def test_few_rows_shrink_toward_the_plain_average_in_proportion():
    assert trusted_combine_weight(1.0, 0) == trusted_combine_weight(0.0, 0) == 0.5
    assert trusted_combine_weight(1.0, COMBINE_TRUSTED_ROWS // 2) == pytest.approx(0.75)
    assert trusted_combine_weight(0.0, COMBINE_TRUSTED_ROWS // 4) == pytest.approx(0.375)
    for w in GRID:  # always between the fit and 0.5, closer to the fit with more rows
        shrunk = [trusted_combine_weight(w, n) for n in range(0, COMBINE_TRUSTED_ROWS + 1, 7)]
        assert all(min(w, 0.5) <= s <= max(w, 0.5) for s in shrunk)
        assert all(abs(a - w) >= abs(b - w) - 1e-12 for a, b in zip(shrunk[:-1], shrunk[1:], strict=True))


def test_the_readme_datasets_validate_on_enough_rows_to_be_untouched():
    """digits 5 % (the smallest validation set of the README's table, 144 rows) and adult 1 %: every validation
    row is aligned and labelled, so the weight stays as fitted (Fashion-MNIST validates on 6,000)."""
    for name, fraction in (("digits", 0.05), ("adult", 0.01)):
        ds = load_vertical_dataset(config_from_dict({"dataset": {"name": name, "aligned_fraction": fraction}}))
        y = ds.active.val.y
        assert int((y >= 0).sum()) >= COMBINE_TRUSTED_ROWS, (name, len(y))


def test_calibrate_ships_the_shrunk_weight_on_a_small_validation_set(tmp_path, monkeypatch):
    """A table of 300 users validates on ~30 rows: a fit of 1.0 (joint model only) is shipped as about 0.65."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    pd.DataFrame({"id": range(300), **{f"f{j}": y + rng.normal(0, 1, 300) for j in range(4)}, "label": y}).to_csv(
        tmp_path / "t.csv", index=False)
    res = split_table(str(tmp_path / "t.csv"), "id", "label", str(tmp_path / "p"), active_share=0.5, aligned=0.2)
    monkeypatch.setattr(scoring, "fit_combine_weight", lambda joint, local, labels: 1.0)
    out = run_inprocess(config_from_dict({"engine": "inprocess", "num_rounds": 1, "dataset": {
        "name": "csv", "csv": {"paths": [str(p) for p in res.paths], "split_seed": 0}}}))
    rows = res.counts["val"]
    assert rows < COMBINE_TRUSTED_ROWS
    assert out["rounds"][-1]["val/combine_weight"] == pytest.approx(0.5 + 0.5 * rows / COMBINE_TRUSTED_ROWS)


# ------------------------------------------------------------------------------------------------ the gate
def test_the_gain_is_the_paired_log_loss_saving_per_row_and_its_standard_error():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 400)
    y[::50] = -1  # unlabelled rows do not count
    local, joint = rng.dirichlet(np.ones(3), 400), rng.dirichlet(np.ones(3), 400)
    keep = y >= 0
    rows = np.arange(int(keep.sum()))
    for w in (0.0, 0.3, 1.0):
        saved = (np.log((w * joint[keep] + (1 - w) * local[keep])[rows, y[keep]])
                 - np.log(local[keep][rows, y[keep]]))
        mean, se = combination_gain(joint, local, y, w)
        assert mean == pytest.approx(saved.mean()) and se == pytest.approx(saved.std(ddof=1) / np.sqrt(saved.size))
    assert combination_gain(joint, local, y, 0.0) == (pytest.approx(0.0), pytest.approx(0.0))
    assert combination_gain(joint[:1], local[:1], np.array([1]), 1.0) == (0.0, float("inf"))


def test_the_gate_keeps_the_weight_only_above_z_standard_errors_and_only_where_the_weight_is_trusted():
    many = COMBINE_TRUSTED_ROWS
    assert gated_combine_weight(0.7, (0.021, 0.01), many, 2.0) == 0.7
    assert gated_combine_weight(0.7, (0.02, 0.01), many, 2.0) == 0.0  # not *more* than 2 standard errors
    assert gated_combine_weight(0.7, (-0.5, 0.01), many, 0.0) == 0.0  # z = 0: any loss-making combination
    assert gated_combine_weight(0.7, (0.001, 0.01), many, None) == 0.7  # off
    assert gated_combine_weight(0.7, (0.001, 0.01), many - 1, 2.0) == 0.7  # few rows: the shrunk weight, as is
    assert gated_combine_weight(0.0, (0.0, 0.0), many, 2.0) == 0.0


def _table(tmp_path, passive_signal: bool):
    """2,000 users, two classes; the bank holds two weak columns, the shop two columns that carry the label
    strongly (``passive_signal``) or pure noise. Half the users are shared: ~150 aligned validation users."""
    tmp_path.mkdir()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    cols = {"a0": y * 0.5 + rng.normal(0, 1, 2000), "a1": rng.normal(0, 1, 2000)}
    cols.update({f"p{j}": (y * 2.0 if passive_signal else 0.0) + rng.normal(0, 1, 2000) for j in range(2)})
    pd.DataFrame({"id": range(2000), **cols, "label": y}).to_csv(tmp_path / "t.csv", index=False)
    res = split_table(str(tmp_path / "t.csv"), "id", "label", str(tmp_path / "p"), active_share=0.5, aligned=0.5,
                      seed=0)
    return config_from_dict({"engine": "inprocess", "num_rounds": 4, "eval_every": 1, "dataset": {
        "name": "csv", "csv": {"paths": [str(p) for p in res.paths], "split_seed": 0}}})


def _rounds(results: dict) -> list[dict]:
    """One record per round: ``local_rounds`` when an exchange trains several rounds (the default: one exchange)."""
    return results.get("local_rounds") or results["rounds"]


def test_a_passive_without_signal_is_gated_out_and_one_with_signal_is_not(tmp_path):
    """Where the shop's columns are noise the combination never clears the gate, so every round ships the bank's
    own head alone (weight 0: the shipped validation accuracy is the head's); where they carry the label it clears
    it by far and the fitted weight ships."""
    noise = _rounds(run_inprocess(_table(tmp_path / "noise", passive_signal=False)))
    signal = _rounds(run_inprocess(_table(tmp_path / "signal", passive_signal=True)))
    assert all(r["val/aligned_users"] >= COMBINE_TRUSTED_ROWS for r in noise + signal)
    gated = [r for r in noise if r["val/combine_gated"] == 1.0]
    assert gated == noise and all(r["val/combine_weight"] == 0.0 and r["val/accuracy"] == r["val/local_accuracy"]
                         and r["val/combine_gain_z"] <= 2.0 for r in gated)
    assert not any(r["val/combine_gated"] for r in signal)
    assert min(r["val/combine_gain_z"] for r in signal) > 2.0 and all(r["val/combine_weight"] > 0 for r in signal)
