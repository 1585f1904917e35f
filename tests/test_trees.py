"""The LightGBM baselines (``method=gbdt_*``, flwr_vproto/trees.py): each trains on the rows and columns it claims,
with the split every method uses, and reports like every method; and the honest-baseline fixes of issue 28:
``centralized`` on csv files trains on every labelled row, and selection breaks accuracy ties by validation loss."""

import json

import numpy as np
import pytest
from conftest import write_csvs

from flwr_vproto import trees
from flwr_vproto.config import ConfigError, config_from_dict
from flwr_vproto.data import load_vertical_dataset
from flwr_vproto.inprocess import run_inprocess
from flwr_vproto.protocol import InTransit
from flwr_vproto.results import format_summary, select_final, write_results

ADULT = {"name": "adult", "aligned_fraction": 0.1, "max_train_users": 1500}


@pytest.fixture(autouse=True)
def small_grid(monkeypatch):
    """Two settings and few trees: the tests check the plumbing, not LightGBM."""
    monkeypatch.setattr(trees, "NUM_LEAVES", (4,))
    monkeypatch.setattr(trees, "MIN_CHILD_SAMPLES", (5, 20))
    monkeypatch.setattr(trees, "MAX_TREES", 60)


def cfg(method, engine="inprocess", dataset=None, num_rounds=1):
    return config_from_dict({"engine": engine, "seed": 0, "num_rounds": num_rounds, "dataset": dataset or ADULT,
                             "method": {"name": method}})


def test_each_tree_method_trains_on_its_rows_and_columns_and_reports_like_every_method(tmp_path):
    ds = load_vertical_dataset(cfg("gbdt_local"))
    a, p = ds.active, ds.passives[0]
    aligned = len(set(a.train.ids) & set(p.train.ids))
    width = {"gbdt_local": a.train.x.shape[1],
             "gbdt_aligned": a.train.x.shape[1] + p.train.x.shape[1],
             "gbdt_centralized": a.train.x.shape[1] + p.train.x.shape[1]}
    rows = {"gbdt_local": int((a.train.y >= 0).sum()), "gbdt_aligned": aligned,
            "gbdt_centralized": len(ds.central.y["train"])}
    assert rows["gbdt_aligned"] < rows["gbdt_local"] < rows["gbdt_centralized"]
    reference = {"accuracy", "loss", "auc", "best_round", "val_accuracy", "last_round_accuracy"}  # a neural
    # method's final keys on a binary task (test_inprocess.py): what the report and the summary read
    for method in trees.TREE_METHODS:
        res = run_inprocess(cfg(method), ds)
        info = res["trees"]
        assert (info["rows"]["train"], info["columns"]) == (rows[method], width[method]), method
        assert info["rows"]["val"] == len(a.val) and info["rows"]["test"] == len(p.test)  # every party's users
        assert len(res["rounds"]) == 2 and set(res["final"]) == reference, method
        assert 0.7 < res["final"]["accuracy"] <= 1 and 0.7 < res["final"]["auc"] <= 1
        path = write_results(tmp_path / method / "results.json", res)
        saved = json.loads(path.read_text())
        assert set(saved) >= {"config", "rounds", "final", "alignment"}
        lines = format_summary(saved, path)
        assert lines[0].startswith("final: test accuracy") and "AUC" in lines[0]
        assert lines[1].startswith("best of 2 LightGBM settings by validation accuracy: num_leaves 4")


def test_trees_are_inprocess_only_in_one_line(tmp_path):
    from flwr_vproto.cli import _check_config
    from flwr_vproto.strategy import VerticalProtoStrategy

    for method in trees.TREE_METHODS:
        with pytest.raises(ConfigError, match=f"method '{method}' needs every party's raw data in one place"):
            VerticalProtoStrategy(cfg(method, engine="flower"))
        with pytest.raises(SystemExit, match=f"config error: method={method} needs every party's raw data in one "
                                             f"place; run it with engine=inprocess"):
            _check_config(cfg(method, engine="flower"), {}, tmp_path)


def test_centralized_on_csv_files_trains_on_every_labelled_row(tmp_path):
    paths = write_csvs(tmp_path)  # the files overlap on half of the active party's users
    data = {"name": "csv", "csv": {"paths": paths}}
    ds = load_vertical_dataset(cfg("centralized", dataset=data))
    a, p = ds.active, ds.passives[0]
    c = ds.central
    assert len(c.y["train"]) == int((a.train.y >= 0).sum()) > len(set(a.train.ids) & set(p.train.ids))
    held = np.isin(a.train.ids, p.train.ids)
    d = a.train.x.shape[1]
    assert c.input_shapes == [(d + 1,), p.input_shape]
    # the "passive holds this user" column, then the passive's columns: zeros where it lacks the user
    by_id = dict(zip(a.train.ids, held, strict=True))
    order = np.array([by_id[u] for u in a.train.ids[a.train.y >= 0]])
    assert sorted(c.x["train"][:, d].tolist()) == sorted(order.astype(float).tolist())
    lacking = c.x["train"][:, d] == 0
    assert lacking.any() and not c.x["train"][lacking, d + 1:].any()
    for s in ("val", "test"):  # scored on the users every party holds, as every method
        assert len(c.y[s]) == len(set(a.split(s).ids) & set(p.split(s).ids))
    out = run_inprocess(cfg("centralized", dataset=data, num_rounds=2), ds)
    assert 0 <= out["final"]["accuracy"] <= 1
    res = run_inprocess(cfg("gbdt_centralized", dataset=data))
    assert res["trees"]["rows"]["train"] == len(c.y["train"])


def test_accuracy_ties_go_to_the_lower_validation_loss_in_selection_and_in_transit():
    def rec(rnd, acc, loss, test=None):
        r = {"round": float(rnd), "val/accuracy": acc, "val/loss": loss}
        return r if test is None else {**r, "test/accuracy": test}

    history = [rec(1, 0.7, 0.62, 0.70), rec(2, 0.8, 0.50, 0.81), rec(3, 0.8, 0.41, 0.83), rec(4, 0.8, 0.45, 0.79)]
    final = select_final(history)
    assert (final["best_round"], final["accuracy"]) == (3.0, 0.83)
    assert select_final([rec(1, 0.8, 0.4, 0.6), rec(2, 0.8, 0.4, 0.7)])["best_round"] == 1.0  # a full tie: earlier
    # eval_test=best: a tied round with a lower loss is a new best, so its test rows travel (it can be selected)
    transit = InTransit(1)
    seen = []
    for r in history:
        transit.receive(type("Reply", (), {"val": {"accuracy": r["val/accuracy"], "loss": r["val/loss"]},
                                           "test": None, "gradients": [], "prototypes": None,
                                           "pseudo_thresholds": None})())
        seen.append(transit.test_previous)
    assert seen == [True, True, True, False]
    again = InTransit.from_state(1, transit.state())
    assert (again.best_val, again.best_val_loss) == (0.8, 0.41)
