"""The centralized yardstick of ``benchmarks/bench_label_reference.py``: it must train on exactly the rows it claims.

BENCHMARKS.md §2 reads vproto's adult margins against it, so a wrong join (a passive's features on the wrong user,
active-only users given passive features, unlabelled rows kept) would make that reading wrong without any error.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import import_script

from flwr_vproto.config import config_from_dict
from flwr_vproto.data import load_vertical_dataset

_bench = import_script("benchmarks/bench_label_reference")
joined_rows, train_reference = _bench.joined_rows, _bench.train_reference


def _cfg(**dataset):
    return config_from_dict({"engine": "inprocess", "seed": 0, "num_rounds": 2, "method": {"name": "centralized"},
                             "dataset": {"name": "digits", "aligned_fraction": 0.2, "num_passive": 2, **dataset}})


@pytest.mark.parametrize("labels_nonaligned", [True, False])
def test_rows_are_the_active_partys_labelled_users_with_each_passives_features_by_id(labels_nonaligned):
    ds = load_vertical_dataset(_cfg(active_labels_nonaligned=labels_nonaligned))
    act = ds.active.train
    xs, present, y = joined_rows(ds, "train", aligned_only=False)
    labelled = act.y >= 0
    assert len(y) == int(labelled.sum()) and np.array_equal(y, act.y[labelled])
    assert np.array_equal(xs[0], act.x[labelled])
    ids = act.ids[labelled]
    for k, party in enumerate(ds.passives):
        where = {uid: i for i, uid in enumerate(party.train.ids)}
        has = np.array([uid in where for uid in ids])
        assert np.array_equal(present[:, k] == 1, has)
        assert np.array_equal(xs[k + 1][has], party.train.x[[where[uid] for uid in ids[has]]])
        assert not xs[k + 1][~has].any()  # a missing block is zeros, never another user's features
    aligned = present.all(axis=1)
    assert aligned.any() and (labels_nonaligned == (not aligned.all()))
    xs_a, present_a, y_a = joined_rows(ds, "train", aligned_only=True)
    assert present_a.all() and np.array_equal(y_a, y[aligned]) and np.array_equal(xs_a[0], xs[0][aligned])


def test_evaluation_rows_are_the_users_every_party_holds():
    ds = load_vertical_dataset(_cfg())
    for split in ("val", "test"):
        xs, present, y = joined_rows(ds, split, aligned_only=False)
        held = set(ds.active.split(split).ids)
        for party in ds.passives:
            held &= set(party.split(split).ids)
        assert present.all() and len(y) == len(held) > 0


def test_a_reference_run_reports_its_best_validation_epoch():
    cfg = _cfg()
    out = train_reference(cfg, load_vertical_dataset(cfg), aligned_only=False)
    assert 0.0 <= out["accuracy"] <= 1.0 and out["best_round"] in (1.0, 2.0) and 0.0 <= out["val_accuracy"] <= 1.0
    assert "auc" not in out  # ten classes
