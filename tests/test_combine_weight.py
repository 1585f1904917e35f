"""Issue 22, item 6c: a combine weight fitted on a few dozen validation rows is shrunk toward the plain average of
the joint model and the active-only head; from ``COMBINE_TRUSTED_ROWS`` rows up it is used as fitted, bit for bit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flwr_vproto import scoring
from flwr_vproto.config import config_from_dict
from flwr_vproto.data import load_vertical_dataset
from flwr_vproto.inprocess import run_inprocess
from flwr_vproto.method.calibration import COMBINE_TRUSTED_ROWS, trusted_combine_weight
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
