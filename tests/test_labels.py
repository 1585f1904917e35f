"""Label leakage through the gradients a passive receives: the audit finds it, the defences lower it, and a defence
behaves the same in both engines and on the wire."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import SECRET, passive_payloads

from flwr_vproto import audit, defences
from flwr_vproto.config import ConfigError, config_from_dict
from flwr_vproto.inprocess import run_inprocess

ADULT = {"name": "adult", "aligned_fraction": 0.2, "max_train_users": 2000}
VANILLA = {"name": "vanilla", "local_head": False, "combine_weight": 1.0, "batch_size": 128}


def adult_cfg(tmp_path, method=None, rounds=2, **extra):
    extra["defence"] = {"release_rounds": None, **extra.get("defence", {})}  # rows every round unless told
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


def test_the_gaussian_channel_lowers_the_audited_leak(tmp_path):
    run_inprocess(adult_cfg(tmp_path / "off"))
    run_inprocess(adult_cfg(tmp_path / "on", defence={"noise_multiplier": 1.0}))
    off, on = audit.attack(*recorded(tmp_path / "off"), 2), audit.attack(*recorded(tmp_path / "on"), 2)
    assert on["direction_auc"] < off["direction_auc"] - 0.2
    assert on["projection_auc"] < off["projection_auc"] - 0.2


def test_gaussian_rows_have_a_label_free_bound_and_the_calibrated_noise():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(501, 8)) * rng.uniform(0.1, 10, size=(501, 1))
    g[7] = 0.0
    unit = defences.gaussian_rows(g, 0.0, rng)  # no noise: every row on the unit sphere, whatever its norm was
    norms = np.linalg.norm(unit, axis=1)
    assert np.allclose(np.delete(norms, 7), 1.0, atol=1e-6) and norms[7] == 0.0
    assert np.allclose(unit[0] * np.linalg.norm(g[0]), g[0], atol=1e-5)  # direction kept
    # one label replaced moves its unit row by at most the sensitivity; the noise is N(0, (2 sigma)^2) per coordinate
    assert np.linalg.norm(unit[0] - (-unit[0])) == pytest.approx(defences.SENSITIVITY)
    noisy = defences.gaussian_rows(np.ones((4000, 64)), 1.5, np.random.default_rng(1))
    assert (noisy - 1 / 8.0).std() == pytest.approx(defences.SENSITIVITY * 1.5, rel=0.01)


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
def test_defences_are_refused_where_nothing_is_sent_or_where_they_would_not_cover_what_is_sent():
    with pytest.raises(ConfigError, match=r"defence.noise_multiplier/target_epsilon=1.0: expected off: method "
                                          r"'local' sends"):
        config_from_dict({"method": {"name": "local"}, "defence": {"noise_multiplier": 1.0}})
    with pytest.raises(ConfigError, match=r"invalid audit.record=True: expected false: method 'centralized'"):
        config_from_dict({"engine": "inprocess", "method": {"name": "centralized"}, "audit": {"record": True}})
    with pytest.raises(ConfigError, match=r"defence.noise_multiplier=1.0: expected 0 when defence.target_epsilon"):
        config_from_dict({"defence": {"noise_multiplier": 1.0, "target_epsilon": 2.0}})
    with pytest.raises(ConfigError, match=r"defence.label_epsilon=0: expected null \(off\) or a number > 0"):
        config_from_dict({"defence": {"label_epsilon": 0}})
    with pytest.raises(ConfigError, match=r"defence.release_every=0: expected an integer >= 1"):
        config_from_dict({"defence": {"release_every": 0}})
    with pytest.raises(ConfigError, match=r"method.lambda_passive=1.0: expected 0 with the Gaussian gradient channel"):
        config_from_dict({"method": {"lambda_passive": 1.0}, "defence": {"target_epsilon": 4.0,
                                                                           "release_rounds": None}})
    from flwr_vproto.privacy import gradient_noise_multiplier

    with pytest.raises(ConfigError, match=r"defence.target_epsilon=0.001: cannot be reached with delta=1e-05 over "
                                          r"1 gradient-row releases \(one round's rows, given that round's model\)"):
        gradient_noise_multiplier(config_from_dict({"defence": {"target_epsilon": 0.001, "release_rounds": None},
                                                   "num_rounds": 20}))
    with pytest.raises(ConfigError, match=r"defence.release_rounds=0: expected null or > 0 with the Gaussian"):
        config_from_dict({"defence": {"noise_multiplier": 1.0}})  # the default sends no rows: nothing to noise


# ------------------------------------------------------------------------------------------------ engines and wire

@pytest.mark.parametrize("method", ["vanilla", "vproto"])
def test_the_gaussian_channel_gives_the_same_numbers_in_both_engines_and_only_its_rows_leave(tmp_path, method,
                                                                                            monkeypatch):
    from conftest import assert_same_history, run_inline, small_cfg, to_passives

    from flwr_vproto.parties import ActiveParty

    before_noise: dict[int, np.ndarray] = {}  # the snapshot rows as they reach the Gaussian mechanism
    release = ActiveParty.release_gradients

    def spy(self, rnd, gradients):
        before_noise[rnd] = np.asarray(gradients[0])
        return release(self, rnd, gradients)

    monkeypatch.setattr(ActiveParty, "release_gradients", spy)

    def cfg(name, **defence):
        return small_cfg(method, rounds=3, defence=defence, audit={"record": True, "dir": str(tmp_path / name)})

    defended = cfg("on", noise_multiplier=2.0)
    strategy, _, grid = run_inline(defended, secret=SECRET)
    assert_same_history(strategy.history, run_inprocess(defended, active_secret=SECRET)["rounds"])
    raw = before_noise[1]  # the model snapshot's rows (tests/test_ledger.py checks what they depend on)
    sent = [r for _, r in to_passives(grid, defended) if r.round == 2 and r.gradients is not None]
    assert len(sent) == 1
    wire = sent[0].gradients
    expected = defences.gaussian_rows(raw, 2.0, defences.gradient_rng(SECRET, 1, 1))
    assert np.array_equal(wire, expected) and not np.allclose(wire, raw)
    # every round reports the noise multiplier and the per-round bound given the model, no run-level epsilon
    assert all(r["privacy/gradient_sigma"] == 2.0 and r["privacy/gradient_release_epsilon"] > 0
               and "privacy/gradient_epsilon" not in r for r in strategy.history)


def test_the_noise_comes_from_the_active_partys_secret_never_from_the_run_config(tmp_path):
    """Play the passive: it holds the run config (seed included) and every row it received. Same config and seed: a
    fresh secret per run gives other noise, the same secret the same noise; replaying every generator the run
    config determines (the previous code's streams) finds no noise to subtract and reads nothing more than the rows
    themselves. Positive control: the same rows noised with the old config-seeded stream are read back."""
    def rows(secret, name, **defence):
        c = adult_cfg(tmp_path / name, rounds=4, defence=defence)
        run_inprocess(c, active_secret=secret)
        return {r: recorded(tmp_path / name, r)[0] for r in (1, 2, 3)}, recorded(tmp_path / name)[1], c.seed

    fresh_a, labels, seed = rows(None, "a", noise_multiplier=3.0)
    fresh_b, _, _ = rows(None, "b", noise_multiplier=3.0)
    given_a, _, _ = rows(SECRET, "c", noise_multiplier=3.0)
    given_b, _, _ = rows(SECRET, "d", noise_multiplier=3.0)
    assert not np.allclose(fresh_a[1], fresh_b[1]) and np.array_equal(given_a[1], given_b[1])
    replay = audit.replay_attack(fresh_a, seed, 1, labels)
    assert replay["replay_scale"] < 0.05  # no replayed stream explains the noise
    assert replay["replay_auc"] < replay["noreplay_auc"] + 0.03 and replay["replay_auc"] < 0.65
    clean, _, _ = rows(None, "clean")  # control: what the old code sent, noise from the seeded stream
    old = {r: defences.unit_rows(g) + 6.0 * audit.old_gradient_noise(seed, r, 1, g.shape) for r, g in clean.items()}
    control = audit.replay_attack(old, seed, 1, labels)
    assert control["noreplay_auc"] < 0.65 < 0.95 < control["replay_auc"]


def test_a_resumed_defended_run_draws_the_noise_of_its_own_secret(tmp_path):
    """The secret lives in the active party's checkpoint: a resumed run with no secret given sends exactly what
    the uninterrupted run would have."""
    def cfg(**extra):
        return config_from_dict({"engine": "inprocess", "num_rounds": 4,
                                 "dataset": {"max_train_users": 500, "aligned_fraction": 0.2},
                                 "method": {"batch_size": 64},
                                 "defence": {"noise_multiplier": 0.5, "release_rounds": None},
                                 "checkpoint": {"dir": str(tmp_path), "every": 2}, **extra})

    full = run_inprocess(cfg())  # a fresh secret
    (tmp_path / "server" / "round-4.pt").unlink()
    resumed = run_inprocess(cfg(resume=True))
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in full["rounds"]]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed["rounds"]] == strip
    assert resumed["defence"] == full["defence"] and full["defence"]["release_epsilon_given_model"] > 0


# ------------------------------------------------------------------------------------------------ accounting
def test_target_epsilon_is_the_bound_of_one_rounds_rows_given_the_model_and_picks_sigma():
    from flwr_vproto.privacy import Accountant, gradient_noise_multiplier

    cfg = config_from_dict({"num_rounds": 10, "defence": {"target_epsilon": 3.0, "release_rounds": 4}})
    assert defences.planned_releases(cfg) == 4
    sigma = gradient_noise_multiplier(cfg)
    acc = Accountant(sigma, 1e-5)
    acc.step(1)  # one passive: one Gaussian release per round
    assert 2.9 < acc.epsilon() <= 3.0 and defences.release_epsilon(cfg) == pytest.approx(acc.epsilon())
    two_cfg = config_from_dict({"num_rounds": 10, "dataset": {"num_passive": 2},
                                "defence": {"target_epsilon": 3.0, "release_rounds": 4}})
    assert gradient_noise_multiplier(two_cfg) > sigma  # two passives: the round's two releases share the bound
    assert 2.9 < defences.release_epsilon(two_cfg) <= 3.0
    every_other = config_from_dict({"num_rounds": 10, "defence": {"release_every": 3, "release_rounds": None}})
    assert [r for r in range(1, 11) if defences.releases(every_other, r)] == [1, 4, 7]  # never the last round
    two = config_from_dict({"num_rounds": 10, "dataset": {"num_passive": 2}, "defence": {"release_rounds": 4}})
    assert defences.planned_releases(two) == 8  # every passive's rows are a release over the same users


def test_results_state_each_defences_guarantee():
    from flwr_vproto.defences import defence_summary

    def summary(**defence):
        return defence_summary(config_from_dict({"num_rounds": 5, "defence": defence}), [])["defence"]

    default = summary()
    assert default["label_free"] and default["every_byte_epsilon"] == 0.0 and default["planned_releases"] == 0
    assert summary(release_rounds=None, label_epsilon=0.5)["every_byte_epsilon"] == 0.5
    gaussian = summary(release_rounds=2, target_epsilon=1.0)
    assert gaussian["every_byte_epsilon"] is None and gaussian["planned_releases"] == 2 and gaussian["delta"] == 1e-5
    assert gaussian["transcript_bounded"] is False and "gradient_epsilon" not in gaussian
    assert "not bounded" in defences.describe({"defence": gaussian})
    assert defence_summary(config_from_dict({"defence": {"release_rounds": None}}), []) == {}  # defence=none


def test_a_release_schedule_freezes_the_passive_and_sends_no_selection_flag(tmp_path):
    """release_rounds=2: rows after rounds 1-2 only; the passive's embeddings stop changing once it has applied
    them; the test rows travel only after a change; no test_previous flag ever travels; the run still reports the
    test accuracy of its best validation round."""
    from flwr_vproto import protocol

    seen = []
    step = protocol.passive_step

    def spy(party, msg, *args):
        out = step(party, msg, *args)
        seen.append((msg, out))
        return out

    cfg = config_from_dict({"engine": "inprocess", "num_rounds": 6, "dataset": ADULT, "method": {"batch_size": 256},
                            "defence": {"release_rounds": 2}})
    import unittest.mock

    with unittest.mock.patch.object(protocol, "passive_step", spy):
        res = run_inprocess(cfg)
    assert [m.gradients is not None for m, _ in seen] == [False, True, True, False, False, False]
    assert not any(m.test_previous for m, _ in seen)
    assert [("test" in m.splits) for m, _ in seen] == [True, True, True, False, False, True]
    assert np.array_equal(seen[3][1].embeddings, seen[5][1].embeddings)  # frozen after round 3
    assert not np.array_equal(seen[1][1].embeddings, seen[2][1].embeddings)
    assert all("test/accuracy" in r for r in res["rounds"])  # scored on the kept test rows every round
    best = max(res["rounds"], key=lambda r: (r["val/accuracy"], -r["val/loss"], -r["round"]))  # ties: the loss
    assert res["final"]["accuracy"] == best["test/accuracy"]


# ------------------------------------------------------------------------------------------------ label DP in runs
def _payloads(monkeypatch, cfg, ds) -> list:
    """Everything each passive receives in an in-process run (:func:`conftest.passive_payloads`)."""
    return passive_payloads(monkeypatch, cfg, ds, SECRET)[0]


def _with_labels_changed(ds, rows: dict[str, np.ndarray]):
    """A copy of ``ds`` in which the active party's true labels of the given rows are another class."""
    import copy

    changed = copy.deepcopy(ds)
    for split, r in rows.items():
        y = changed.active.split(split).y
        y[r] = (y[r] + 1) % ds.num_classes
    return changed


def test_with_the_noised_labels_held_fixed_no_true_label_changes_a_byte_a_passive_receives(monkeypatch):
    """Label DP covers every byte: with the noised labels fixed, changing the true labels of half the aligned
    training and validation users changes nothing any passive receives in any message of the run, flags and
    thresholds included. Controls: unfixed labels change the bytes, and so does a selection on true labels."""
    from flwr_vproto import protocol
    from flwr_vproto.alignment import align_dataset
    from flwr_vproto.data import load_vertical_dataset

    cfg = config_from_dict({"engine": "inprocess", "num_rounds": 5, "eval_every": 1,
                            "dataset": {"name": "digits", "aligned_fraction": 0.2, "max_train_users": 400},
                            "method": {"name": "vproto", "lambda_passive": 1.0, "batch_size": 64,
                                       "research": {"pseudo_gate": 0.8}},
                            "defence": {"label_epsilon": 1.0, "release_rounds": None}})
    ds = load_vertical_dataset(cfg)
    aligned = align_dataset(ds, cfg.seed, cfg.dataset.min_aligned)[0]
    rows = {s: aligned[s][::2] for s in ("train", "val")}  # half the aligned users of each split
    changed = _with_labels_changed(ds, rows)
    real = defences.randomized_response
    fixed = {}  # split length -> the noised labels drawn from the unchanged data
    for split in ("train", "val"):
        true = ds.active.split(split).y[aligned[split]]
        fixed[len(true)] = real(true, 1.0, ds.num_classes, defences.label_rng(SECRET, split))
    assert len(fixed) == 2
    monkeypatch.setattr(defences, "randomized_response", lambda labels, *_: fixed[len(labels)].copy())
    base = _payloads(monkeypatch, cfg, ds)
    assert any(v is True for v in base)  # a test_previous flag did travel, decided on the noised labels
    assert base == _payloads(monkeypatch, cfg, changed)
    select = protocol.selection_accuracy  # control 1: the same run, the best round picked on true labels
    monkeypatch.setattr(protocol, "selection_accuracy", lambda val: val.get("accuracy", -math.inf))
    assert _payloads(monkeypatch, cfg, ds) != _payloads(monkeypatch, cfg, changed)
    monkeypatch.setattr(protocol, "selection_accuracy", select)
    monkeypatch.setattr(defences, "randomized_response", real)  # control 2: the same change, labels not fixed
    assert _payloads(monkeypatch, cfg, ds) != _payloads(monkeypatch, cfg, changed)


@pytest.mark.parametrize("method", ["vanilla", "vproto"])
def test_label_dp_gives_the_same_numbers_in_both_engines(method):
    from conftest import assert_same_history, run_inline, small_cfg

    cfg = small_cfg(method, rounds=3, defence={"label_epsilon": 1.0})
    strategy, _, _ = run_inline(cfg, secret=SECRET)
    reference = run_inprocess(cfg, active_secret=SECRET)["rounds"]
    assert_same_history(strategy.history, reference)
    plain = run_inprocess(small_cfg(method, rounds=3))["rounds"]
    assert reference[-1]["active/sup_loss"] != plain[-1]["active/sup_loss"]  # the noised labels were used


def test_label_dp_bounds_what_the_attacks_read_off_the_gradients(tmp_path):
    # A fixed secret: the noise is one fixed draw, so the check does not depend on the run (without it each run
    # drew a fresh secret, and one suite run's draw read direction AUC 0.656 against the 0.649 allowed)
    run_inprocess(adult_cfg(tmp_path, defence={"label_epsilon": 0.4}), active_secret=SECRET)
    g, y = recorded(tmp_path)
    leaked = audit.attack(g, y, 2)
    bound = defences.keep_probability(0.4, 2)  # ~0.599: no test on the released rows can do better in expectation
    for key in ("norm_auc", "direction_auc", "projection_auc"):
        assert leaked[key] < bound + 0.05, (key, leaked)
