"""Label leakage through the gradients a passive receives: the audit finds it, the defences lower it, and a defence
behaves the same in both engines and on the wire."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flwr_vproto import audit, defences
from flwr_vproto.config import ConfigError, config_from_dict
from flwr_vproto.inprocess import run_inprocess

ADULT = {"name": "adult", "aligned_fraction": 0.2, "max_train_users": 2000}
VANILLA = {"name": "vanilla", "local_head": False, "combine_weight": 1.0, "batch_size": 128}


def adult_cfg(tmp_path, method=None, rounds=2, **extra):
    return config_from_dict({"engine": "inprocess", "num_rounds": rounds, "dataset": ADULT,
                             "method": method or VANILLA, "audit": {"record": True, "dir": str(tmp_path / "audit")},
                             **extra})


def recorded(tmp_path, rnd=1):
    with np.load(tmp_path / "audit" / f"round-{rnd}.npz") as data:
        return data["passive1.gradients"], data[audit.LABELS]


# ------------------------------------------------------------------------------------------------ the attacks
def test_attacks_read_labels_from_separable_rows_and_nothing_from_noise():
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.25).astype(np.int64)
    direction = rng.normal(size=16)
    rows = np.where(y[:, None] == 1, 3.0, -1.0) * direction + 0.1 * rng.normal(size=(2000, 16))
    leaked = audit.attack(rows, y, 2)
    assert leaked["norm_auc"] > 0.99 and leaked["direction_auc"] > 0.99 and leaked["projection_auc"] > 0.99
    assert leaked["cluster_accuracy"] > 0.99
    noise = audit.attack(rng.normal(size=(2000, 16)), y, 2)
    assert max(noise["norm_auc"], noise["direction_auc"], noise["projection_auc"]) < 0.56
    assert noise["cluster_accuracy"] <= noise["majority_share"] + 0.02  # no better than guessing the majority


def test_multi_class_cluster_attack_and_unknown_labels_skipped():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 1200)
    centres = rng.normal(size=(4, 8)) * 5
    rows = centres[y] + rng.normal(size=(1200, 8))
    y_with_unknown = y.copy()
    y_with_unknown[:100] = -1
    out = audit.attack(rows, y_with_unknown, 4)
    assert "norm_auc" not in out and out["cluster_accuracy"] > 0.95
    assert out["majority_share"] == pytest.approx(np.bincount(y[100:]).max() / 1100)


# ------------------------------------------------------------------------------------------------ a real run
def test_the_audit_finds_the_leak_of_an_undefended_run_and_not_against_shuffled_labels(tmp_path):
    run_inprocess(adult_cfg(tmp_path))
    assert audit.recorded_rounds(tmp_path / "audit") == [1]  # the last round sends nothing
    g, y = recorded(tmp_path)
    assert g.shape[0] == y.shape[0] > 50
    leaked = audit.attack(g, y, 2)
    assert leaked["direction_auc"] > 0.95 and leaked["projection_auc"] > 0.95
    control = audit.attack(g, np.random.default_rng(0).permutation(y), 2)  # negative control
    assert max(control["norm_auc"], control["direction_auc"], control["projection_auc"]) < 0.6


def test_gradient_noise_lowers_the_audited_leak(tmp_path):
    run_inprocess(adult_cfg(tmp_path / "off"))
    run_inprocess(adult_cfg(tmp_path / "on", defence={"grad_clip": 1.0, "grad_noise": 16.0}))
    off, on = audit.attack(*recorded(tmp_path / "off"), 2), audit.attack(*recorded(tmp_path / "on"), 2)
    assert on["direction_auc"] < off["direction_auc"] - 0.2
    assert on["norm_auc"] < off["norm_auc"]


def test_clip_and_noise_bound_rows_relative_to_the_median():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(501, 8)) * rng.uniform(0.1, 10, size=(501, 1))
    clipped = defences.clip_and_noise(g, 1.0, 0.0, rng)
    median = np.median(np.linalg.norm(g, axis=1))
    assert np.linalg.norm(clipped, axis=1).max() == pytest.approx(median, rel=1e-5)
    small = np.linalg.norm(g, axis=1) < median
    assert np.allclose(clipped[small], g[small], atol=1e-6)  # rows under the bound are untouched
    noisy = defences.clip_and_noise(np.zeros((4000, 64)) + 1.0, 1.0, 2.0, np.random.default_rng(1))
    noise_norm = np.linalg.norm(noisy - 1.0, axis=1).mean()
    assert noise_norm == pytest.approx(2.0 * 8.0, rel=0.02)  # expected norm = grad_noise * (clip * median)


# ------------------------------------------------------------------------------------------------ label DP
@pytest.mark.parametrize("classes", [2, 10])
def test_randomized_response_flips_at_the_rate_its_epsilon_implies(classes):
    n, eps = 200_000, 1.0
    labels = np.random.default_rng(3).integers(0, classes, n)
    noised = defences.randomized_response(labels, eps, classes, np.random.default_rng(4))
    keep = defences.keep_probability(eps, classes)
    kept = float((noised == labels).mean())
    assert abs(kept - keep) < 4 * math.sqrt(keep * (1 - keep) / n)
    flipped = noised[noised != labels]
    if classes > 2:  # the other classes uniformly: every class appears as a flip target about equally often
        counts = np.bincount(flipped, minlength=classes)
        assert counts.min() > 0.9 * counts.mean()
    unknown = defences.randomized_response(np.full(10, -1), eps, classes, np.random.default_rng(5))
    assert (unknown == -1).all()


# ------------------------------------------------------------------------------------------------ config
def test_defences_are_refused_where_nothing_is_sent():
    with pytest.raises(ConfigError, match=r"defence.grad_clip=1.0: expected null: method 'local' sends"):
        config_from_dict({"method": {"name": "local"}, "defence": {"grad_clip": 1.0}})
    with pytest.raises(ConfigError, match=r"invalid audit.record=True: expected false: method 'centralized'"):
        config_from_dict({"engine": "inprocess", "method": {"name": "centralized"}, "audit": {"record": True}})
    with pytest.raises(ConfigError, match=r"defence.grad_noise=2.0: expected 0 unless defence.grad_clip is set"):
        config_from_dict({"defence": {"grad_noise": 2.0}})
    with pytest.raises(ConfigError, match=r"defence.label_epsilon=0: expected null \(off\) or a number > 0"):
        config_from_dict({"defence": {"label_epsilon": 0}})


# ------------------------------------------------------------------------------------------------ engines and wire
@pytest.mark.parametrize("method", ["vanilla", "vproto"])
def test_a_defence_gives_the_same_numbers_in_both_engines_and_only_defended_rows_leave(tmp_path, method):
    from test_flower_sim import M, assert_same_history, run_inline, small_cfg

    def cfg(name, **defence):
        return small_cfg(method, rounds=3, defence=defence, audit={"record": True, "dir": str(tmp_path / name)})

    defended = cfg("on", grad_clip=1.0, grad_noise=2.0)
    strategy, _, grid = run_inline(defended)
    assert_same_history(strategy.history, run_inprocess(defended)["rounds"])
    run_inprocess(cfg("off"))  # round 1 trains the same either way; only what leaves differs
    raw = np.load(tmp_path / "off" / "round-1.npz")["passive1.gradients"]
    sent = [m for m in grid.sent if m.metadata.message_type == M.TRAIN and M.round_of(m.content) == 2
            and M.GRADIENTS in m.content[M.ARRAYS]]
    assert len(sent) == 1
    wire = sent[0].content[M.ARRAYS][M.GRADIENTS].numpy()
    expected = defences.clip_and_noise(raw, 1.0, 2.0, defences.gradient_rng(defended.seed, 1, 1))
    assert np.array_equal(wire, expected) and not np.allclose(wire, raw)


# ------------------------------------------------------------------------------------------------ label DP in runs
def _payloads(monkeypatch, cfg, ds) -> list[bytes]:
    """Every byte each passive receives in an in-process run (its ToPassive messages, in order)."""
    from flwr_vproto import protocol

    seen: list[bytes] = []
    step = protocol.passive_step

    def spy(party, msg):
        for arr in (msg.gradients, msg.prototypes, msg.prototype_mask):
            seen.append(b"" if arr is None else np.ascontiguousarray(arr).tobytes())
        return step(party, msg)

    monkeypatch.setattr(protocol, "passive_step", spy)
    run_inprocess(cfg, dataset=ds)
    monkeypatch.setattr(protocol, "passive_step", step)
    return seen


def _with_labels_changed(ds, rows: dict[str, int]):
    """A copy of ``ds`` in which the active party's true label of one row per split is another class."""
    import copy

    changed = copy.deepcopy(ds)
    for split, row in rows.items():
        y = changed.active.split(split).y
        y[row] = (y[row] + 1) % ds.num_classes
    return changed


def test_with_the_noised_labels_held_fixed_no_aligned_users_true_label_changes_a_byte_a_passive_receives(
        monkeypatch):
    from flwr_vproto.alignment import align_dataset
    from flwr_vproto.data import load_vertical_dataset

    cfg = config_from_dict({"engine": "inprocess", "num_rounds": 3, "eval_every": 1,
                            "dataset": {"name": "digits", "aligned_fraction": 0.2, "max_train_users": 400},
                            "method": {"name": "vproto", "lambda_passive": 1.0, "batch_size": 64},
                            "defence": {"label_epsilon": 1.0}})
    ds = load_vertical_dataset(cfg)
    aligned = align_dataset(ds, cfg.seed, cfg.dataset.min_aligned)[0]
    rows = {"train": int(aligned["train"][3]), "val": int(aligned["val"][1])}  # one aligned user per split
    changed = _with_labels_changed(ds, rows)
    real = defences.randomized_response
    fixed = {}  # split length -> the noised labels drawn from the unchanged data
    for split in ("train", "val"):
        true = ds.active.split(split).y[aligned[split]]
        fixed[len(true)] = real(true, 1.0, ds.num_classes, defences.label_rng(cfg.seed, split))
    assert len(fixed) == 2
    monkeypatch.setattr(defences, "randomized_response", lambda labels, *_: fixed[len(labels)].copy())
    assert _payloads(monkeypatch, cfg, ds) == _payloads(monkeypatch, cfg, changed)
    monkeypatch.setattr(defences, "randomized_response", real)  # the control: the same change, labels not fixed
    assert _payloads(monkeypatch, cfg, ds) != _payloads(monkeypatch, cfg, changed)


@pytest.mark.parametrize("method", ["vanilla", "vproto"])
def test_label_dp_gives_the_same_numbers_in_both_engines(method):
    from test_flower_sim import assert_same_history, run_inline, small_cfg

    cfg = small_cfg(method, rounds=3, defence={"label_epsilon": 1.0})
    strategy, _, _ = run_inline(cfg)
    reference = run_inprocess(cfg)["rounds"]
    assert_same_history(strategy.history, reference)
    plain = run_inprocess(small_cfg(method, rounds=3))["rounds"]
    assert reference[-1]["active/sup_loss"] != plain[-1]["active/sup_loss"]  # the noised labels were used


def test_label_dp_bounds_what_the_attacks_read_off_the_gradients(tmp_path):
    run_inprocess(adult_cfg(tmp_path, defence={"label_epsilon": 0.4}))
    g, y = recorded(tmp_path)
    leaked = audit.attack(g, y, 2)
    bound = defences.keep_probability(0.4, 2)  # ~0.599: no test on the released rows can do better in expectation
    for key in ("norm_auc", "direction_auc", "projection_auc"):
        assert leaked[key] < bound + 0.05, (key, leaked)
