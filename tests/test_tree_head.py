"""``method.head=gbdt`` (issue 28 item 2): the active-only head as LightGBM on the active party's own columns and
labelled rows, the residual joint model correcting its margin. It learns from that party's rows only, nothing of
it reaches a passive, both engines give the same numbers, and it is refused in one line where it cannot run. With it,
the joint trees (``method.research.joint_trees``) average LightGBM on the aligned users into the joint model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_same_history, passive_payloads, run_inline, write_csvs

from flwr_vproto import trees
from flwr_vproto.alignment import align_dataset
from flwr_vproto.config import ConfigError, config_from_dict
from flwr_vproto.data import load_vertical_dataset
from flwr_vproto.inprocess import run_inprocess

ADULT = {"name": "adult", "aligned_fraction": 0.1}
SECRET = b"\x07" * 32


@pytest.fixture(autouse=True)
def small_grid(monkeypatch):
    """One setting and few trees: the tests check the plumbing, not LightGBM."""
    monkeypatch.setattr(trees, "NUM_LEAVES", (4,))
    monkeypatch.setattr(trees, "MIN_CHILD_SAMPLES", (20,))
    monkeypatch.setattr(trees, "MAX_TREES", 40)


@pytest.fixture
def tables(tmp_path):
    """A tiny table (conftest.write_csvs: 240 bank users, 3 classes, 180 held by the shop too)."""
    return {"name": "csv", "csv": {"paths": write_csvs(tmp_path)}}


def cfg(data, head="gbdt", rounds=2, **extra):
    method = {"name": "vproto", "head": head, "batch_size": 64, "research": {"passive_pretrain": "none"}}
    return config_from_dict({"engine": "inprocess", "seed": 0, "num_rounds": rounds, "eval_every": 1,
                             "dataset": data, "method": method, **extra})


def _payloads(monkeypatch, c, ds) -> tuple:
    """Every field of every message a passive receives in an in-process run, in order, and the run's results."""
    return passive_payloads(monkeypatch, c, ds, SECRET)


def test_the_tree_head_learns_from_the_active_partys_rows_only_and_is_the_active_only_model(monkeypatch, tables):
    """Fitted once, on the active party's columns and every labelled training row it holds (aligned or not),
    early-stopped on its labelled validation rows; its margin is the active-only prediction."""
    c = cfg(tables)
    ds = load_vertical_dataset(c)
    fits = []
    fit = trees.fit_head

    def spy(train, val, num_classes, seed):
        fits.append((train, val))
        return fit(train, val, num_classes, seed)

    monkeypatch.setattr(trees, "fit_head", spy)
    res = run_inprocess(c, dataset=ds)
    assert len(fits) == 1
    (xt, yt), (xv, yv) = fits[0]
    a = ds.active
    labelled = a.train.y >= 0
    assert xt.shape == (int(labelled.sum()), a.train.x.shape[1])  # own columns, every labelled row
    assert np.array_equal(xt, a.train.x[labelled]) and np.array_equal(yt, a.train.y[labelled])
    aligned = len(set(a.train.ids) & set(ds.passives[0].train.ids))
    assert aligned < len(yt)  # the non-aligned rows are in
    assert np.array_equal(yv, a.val.y[a.val.y >= 0])
    # The active-only scores are the trees' (LightGBM alone on the same rows), not the network head's.
    booster = trees.head_from_bytes(trees.head_to_bytes(fit(fits[0][0], fits[0][1], 3, 0)))
    margin = trees.head_margin(booster, a.val.x, 3)
    keep = (a.val.y >= 0) & np.isin(a.val.ids, ds.passives[0].val.ids)  # scored on the users both hold
    want = float((margin.argmax(1)[keep] == a.val.y[keep]).mean())
    assert res["rounds"][-1]["val/local_accuracy"] == pytest.approx(want)


def test_nothing_label_dependent_reaches_a_passive_and_the_tree_is_not_refit_per_message(monkeypatch, tables):
    """By default (no gradient row released) changing the active party's labels of half the aligned training and
    validation users, which moves the trees, changes no byte any passive receives; the control (gradient rows
    every round) does. The Flower ClientApp, which rebuilds the party from its state every message, gives the
    in-process numbers without refitting the trees."""
    c = cfg(tables)
    ds = load_vertical_dataset(c)
    aligned = align_dataset(ds, c.seed, c.dataset.min_aligned)[0]
    import copy

    changed = copy.deepcopy(ds)
    for split in ("train", "val"):
        y = changed.active.split(split).y
        rows = aligned[split][::2]
        y[rows] = (y[rows] + 1) % ds.num_classes
    base, res = _payloads(monkeypatch, c, ds)
    other, res_changed = _payloads(monkeypatch, c, changed)
    assert res["rounds"][-1]["test/loss"] != res_changed["rounds"][-1]["test/loss"]  # the labels did matter
    assert base == other
    leaky = cfg(tables, defence={"release_rounds": None})
    assert _payloads(monkeypatch, leaky, ds)[0] != _payloads(monkeypatch, leaky, changed)[0]

    fits = []
    fit = trees.fit_head
    monkeypatch.setattr(trees, "fit_head", lambda *a: fits.append(1) or fit(*a))
    strategy, _, _ = run_inline(cfg(tables, rounds=3), secret=SECRET)
    assert len(fits) == 1  # fitted in round 1, loaded from the party's state after
    assert_same_history(strategy.history, run_inprocess(cfg(tables, rounds=3), active_secret=SECRET)["rounds"])


def _spy_joint_fits(monkeypatch) -> list:
    fits = []
    fit = trees.fit_joint
    monkeypatch.setattr(trees, "fit_joint", lambda *a: fits.append(a) or fit(*a))
    return fits


def test_the_joint_model_is_the_average_of_the_network_and_the_joint_trees(monkeypatch, tables):
    """``method.research.joint_trees`` (on by default with the tree head): LightGBM on the aligned training users'
    [own columns, passives' embeddings], boosted from the tree head's margin of those rows and early-stopped on the
    aligned validation users, fitted once when the passives never change; the joint probabilities every score and
    prediction read are the mean of the network's and the trees'."""
    c = cfg(tables, rounds=3)
    ds = load_vertical_dataset(c)
    fits = _spy_joint_fits(monkeypatch)
    res = run_inprocess(c, dataset=ds)
    assert len(fits) == 1  # the passives are frozen (no gradient row leaves): one fit for the run
    (xt, yt), (xv, yv), (bt, bv), _, _, setting = fits[0]
    assert setting is None  # the first fit searches the grid
    active, passive = res["state"]["active"], res["state"]["passives"][0]
    al = active.aligned
    assert np.array_equal(yt, ds.active.train.y[al["train"]]) and np.array_equal(yv, ds.active.val.y[al["val"]])
    width, dim = ds.active.train.x.shape[1], c.model.embedding_dim
    unmixing = active._joint_unmixing[0]  # fitted on the training embeddings the trees are fitted on
    assert unmixing is not None and unmixing[1].shape == (trees.UNMIXED_COMPONENTS, dim)
    assert xt.shape == (len(al["train"]), width + dim + trees.UNMIXED_COMPONENTS)
    assert np.array_equal(xt[:, :width], ds.active.train.x[al["train"]])
    z = passive.embed("train")
    assert np.allclose(xt[:, width:width + dim], z)  # the embedding the passive sent, never its columns
    assert np.allclose(xt[:, width + dim:], trees.unmixed(z, unmixing), atol=1e-5)  # and its independent components
    assert np.array_equal(bt, active._tree_logits("train", al["train"]).numpy())  # from the tree head's margin
    rows, emb = al["val"], [passive.embed("val")]
    _, both = active.logits("val", rows, emb)
    trees_only = active._joint_tree_logits("val", rows, emb, active._tree_logits("val", rows))
    fitted, active._joint_tree_bytes = active._joint_tree_bytes, None
    _, network = active.logits("val", rows, emb)
    active._joint_tree_bytes = fitted
    mean = (torch.softmax(network, 1) + torch.softmax(trees_only, 1)) / 2
    assert torch.allclose(torch.softmax(both, 1), mean, atol=1e-6)
    assert not torch.allclose(torch.softmax(network, 1), mean, atol=1e-3)  # the trees do move it

    fits.clear()
    off = run_inprocess(cfg(tables, rounds=3, method={"name": "vproto", "head": "gbdt", "batch_size": 64,
                                                      "research": {"passive_pretrain": "none",
                                                                   "joint_trees": False}}), dataset=ds)
    assert not fits and off["rounds"][-1]["test/loss"] != res["rounds"][-1]["test/loss"]


def test_the_unmixing_puts_a_heavy_tailed_source_back_on_an_axis_of_its_own():
    """``trees.fit_unmixing`` (the joint trees' independent components): a sparse, heavy-tailed source (like adult's
    capital-gain: mostly zero, a few large values) that a rotation spreads over every dimension of an embedding comes
    back as one component; the matrix depends on the embeddings and the seed only; a rank-deficient embedding gets as
    many components as its rank, and one row or no spread gets none (the trees then see the embedding alone)."""
    rng = np.random.default_rng(0)
    n, d = 3000, 24
    sparse = np.where(rng.random(n) < 0.08, rng.exponential(5.0, n), 0.0)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    z = np.column_stack([sparse, rng.normal(size=(n, d - 1))]) @ q.T

    def best_match(columns: np.ndarray) -> float:
        return max(abs(np.corrcoef(columns[:, j], sparse)[0, 1]) for j in range(columns.shape[1]))

    assert best_match(z) < 0.8  # no axis of the embedding carries it alone
    unmixing = trees.fit_unmixing(z, seed=0)
    assert unmixing is not None
    components = trees.unmixed(z, unmixing)
    assert components.shape == (n, trees.UNMIXED_COMPONENTS) and components.dtype == np.float32
    assert best_match(components) > 0.99
    again = trees.fit_unmixing(z.copy(), seed=0)
    assert again is not None and all(np.array_equal(a, b) for a, b in zip(unmixing, again, strict=True))
    low = trees.fit_unmixing(z[:, :3] @ rng.normal(size=(3, 8)), seed=0)
    assert low is not None and low[1].shape == (3, 8)
    assert trees.fit_unmixing(z[:1], seed=0) is None and trees.fit_unmixing(np.ones((50, 8)), seed=0) is None


def test_the_joint_trees_refit_only_when_the_embeddings_move_and_travel_in_the_partys_state(monkeypatch, tables):
    """With gradient rows released every round the passives' embeddings move, so the trees are refitted at every
    calibration, with the setting the first fit chose; with several exchanges over frozen passives the Flower
    ClientApp, which rebuilds the active party from its state for every message, loads them instead and gives the
    in-process numbers."""
    fits = _spy_joint_fits(monkeypatch)
    run_inprocess(cfg(tables, rounds=3, defence={"release_rounds": None}), active_secret=SECRET)
    assert len(fits) == 3 and fits[0][-1] is None
    assert fits[1][-1] == fits[2][-1] == trees.grid()[0]  # refits keep the first fit's setting
    fits.clear()
    c = cfg(tables, rounds=3, exchange={"count": 3})
    strategy, _, _ = run_inline(c, secret=SECRET)
    assert len(fits) == 1
    fits.clear()
    assert_same_history(strategy.history, run_inprocess(c, active_secret=SECRET)["rounds"])
    assert len(fits) == 1


def test_the_joint_trees_change_no_gradient_row_a_passive_receives(monkeypatch, tables):
    """They move scores and the selected round, never training: with gradient rows released every round
    (``defence=none``), each passive receives the same rows, byte for byte, with the joint trees as without."""
    from flwr_vproto import protocol

    def received(joint_trees: bool) -> tuple[list[bytes], float]:
        seen: list[bytes] = []
        step = protocol.passive_step
        monkeypatch.setattr(protocol, "passive_step", lambda party, msg, *a: (
            seen.append(b"" if msg.gradients is None else np.ascontiguousarray(msg.gradients).tobytes())
            or step(party, msg, *a)))
        method = {"name": "vproto", "head": "gbdt", "batch_size": 64,
                  "research": {"passive_pretrain": "none", "joint_trees": joint_trees}}
        res = run_inprocess(cfg(tables, rounds=3, method=method, defence={"release_rounds": None}),
                            active_secret=SECRET)
        monkeypatch.setattr(protocol, "passive_step", step)
        return seen, res["rounds"][-1]["test/loss"]

    (on, loss_on), (off, loss_off) = received(True), received(False)
    assert len(on) == 3 and any(on) and on == off
    assert loss_on != loss_off  # while the scores do move


def test_averaged_logits_are_the_mean_of_the_probabilities():
    from flwr_vproto.method.joint import average_of

    a, b = torch.randn(5, 3), torch.randn(5, 3) * 4
    assert torch.allclose(torch.softmax(average_of(a, b), 1), (torch.softmax(a, 1) + torch.softmax(b, 1)) / 2,
                          atol=1e-6)


def test_the_tree_head_is_the_default_for_vproto_on_tables_and_the_network_head_elsewhere():
    """``method.head`` left null follows from the dataset and the method, in every entry point (the Hydra presets:
    tests/test_config_store.py's snapshot; the run-config of ``flwr run`` here); a value the user gives is kept."""
    from flwr_vproto.config import default_head, null_default
    from flwr_vproto.run_config import config_from_run_config, run_config_from_config

    def head(**raw):
        return config_from_dict(raw).method.head

    assert head(dataset=ADULT) == "gbdt"
    assert head(dataset={"name": "digits"}) == head() == "nn"  # images keep the network head
    for name in ("vanilla", "local", "centralized"):  # no active-only head, or the network one alone
        assert head(dataset=ADULT, method={"name": name}) == "nn"
    assert head(dataset=ADULT, method={"local_head": False, "combine_weight": 1.0,
                                       "research": {"joint_residual": False}}) == "nn"
    assert head(dataset=ADULT, method={"head": "nn"}) == "nn"  # the user's value is kept
    assert default_head("csv", "vproto") == "gbdt" and default_head("fashion_mnist", "vproto") == "nn"
    flat = run_config_from_config()
    assert flat["method.head"] == "null"
    assert config_from_run_config({**flat, "dataset.name": "adult"})[0].method.head == "gbdt"
    assert config_from_run_config(flat)[0].method.head == "nn"
    assert null_default("method.head", {"dataset": {"name": "adult"}, "method": {"name": "vproto"}}) == "gbdt"


@pytest.mark.parametrize(("override", "words"), [
    ({"dataset": {"name": "digits"}}, "invalid method.head='gbdt': expected 'nn' on digits"),
    ({"method": {"name": "vanilla", "head": "gbdt", "local_head": False, "combine_weight": 1.0}},
     "unless method.name=vproto"),
    ({"method": {"name": "vproto", "head": "tree"}}, "invalid method.head='tree': expected one of"),
])
def test_the_option_is_refused_in_one_line_where_it_cannot_run(override, words):
    raw = {"engine": "inprocess", "dataset": ADULT, "method": {"name": "vproto", "head": "gbdt"}, **override}
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_saved_models_predict_new_users_with_the_same_trees(tmp_path, monkeypatch):
    """The trees (the head and the joint trees) travel in the active party's model file: prediction on new raw rows
    (the held-out test users, in new files) gives the accuracy the run reported, joint and active-only, without
    refitting."""
    import pandas as pd
    from conftest import import_script

    from flwr_vproto.data.csv_files import split_of
    from flwr_vproto.predict import predict

    paths = write_csvs(tmp_path, n=400)
    c = cfg({"name": "csv", "csv": {"paths": paths}}, rounds=1)
    results = import_script("run_simulation").run_local(c, {"save_models": True}, tmp_path / "run")
    new = []
    for k, p in enumerate(paths):
        frame = pd.read_csv(p, dtype=str)
        new.append(str(tmp_path / f"new{k}.csv"))
        frame[split_of(frame["id"].to_numpy(), c.seed, 0.2, 0.1) == "test"].to_csv(new[-1], index=False)
    fits = []
    fit = trees.fit_head
    monkeypatch.setattr(trees, "fit_head", lambda *a: fits.append(1) or fit(*a))
    joint_fits = _spy_joint_fits(monkeypatch)
    pred = predict(tmp_path / "run" / "models", new, tmp_path / "pred.csv")
    last = results["rounds"][-1]
    assert not fits and not joint_fits  # the head and the joint trees both load from the model file
    assert pred.metrics["accuracy"] == pytest.approx(last["test/accuracy"], abs=1e-12)
    assert pred.metrics["active_only_accuracy"] == pytest.approx(last["test/active_only_accuracy"], abs=1e-12)
