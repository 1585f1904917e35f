"""The audit's attacker who keeps every round: averaging over rounds, known labels next to its own features, replay of
config-seeded noise, and the passive-side recording the audit reads. Synthetic rows only (no training run)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flwr_vproto import audit

N, D, ROUNDS, SEED = 1000, 32, 20, 7


def _labels(n: int = N, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < 0.3).astype(np.int64)


def _noisy_rounds(y: np.ndarray, signal: float, noise: float, rounds: int = ROUNDS, seed: int = 1
                  ) -> dict[int, np.ndarray]:
    """Every round: the same label signal along one direction plus fresh isotropic noise."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=D)
    u /= np.linalg.norm(u)
    clean = signal * np.where(y[:, None] == 1, 1.0, -1.0) * u
    return {r: clean + noise * rng.normal(size=(len(y), D)) for r in range(1, rounds + 1)}


# ------------------------------------------------------------------------------------------------ multi-round
def test_averaging_over_rounds_reads_labels_one_round_hides_and_shuffled_labels_stay_at_chance():
    y = _labels()
    rows = _noisy_rounds(y, signal=0.15, noise=1.0)
    multi = {int(r["rounds_kept"]): r for r in audit.multiround_attack(rows, y, 2)}
    assert sorted(multi) == [1, 2, 5, 10, 20]
    one, every = multi[1], multi[20]
    assert one["averaged_projection_auc"] < 0.6 and audit.attack(rows[1], y, 2)["projection_auc"] < 0.6
    assert every["averaged_projection_auc"] > 0.75
    assert every["averaged_projection_auc"] > one["averaged_projection_auc"] + 0.15
    for r in (one, every):
        assert max(r["averaged_projection_chance"], r["averaged_direction_chance"],
                   r["stacked_projection_chance"]) < 0.6
    shuffled = np.random.default_rng(5).permutation(y)  # an independent labelling: nothing to find at any n
    assert max(r["averaged_projection_auc"] for r in audit.multiround_attack(rows, shuffled, 2)) < 0.6


def test_multiround_multi_class_uses_kmeans_and_skips_unknown_labels():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 600)
    centres = rng.normal(size=(3, 8))
    rows = {r: centres[y] + 1.5 * rng.normal(size=(600, 8)) for r in range(1, 11)}
    y[:50] = -1
    multi = audit.multiround_attack(rows, y, 3)
    assert [int(r["rounds_kept"]) for r in multi] == [1, 2, 5, 10]
    assert multi[-1]["averaged_cluster_accuracy"] > 0.9 > multi[0]["averaged_cluster_accuracy"]
    assert multi[-1]["averaged_cluster_chance"] < 0.45 and "averaged_projection_auc" not in multi[-1]


# ------------------------------------------------------------------------------------------------ known labels
def _features(y: np.ndarray, signal: float, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(len(y), 6))
    f[:, 0] += signal * y
    return f


def test_known_labels_rows_that_carry_more_than_the_features_give_an_advantage():
    y = _labels(600)
    rows = _noisy_rounds(y, signal=0.5, noise=1.0, rounds=5)
    out = audit.known_label_attack(rows, y, 2, _features(y, 1.0))
    for m in (20, 50, 100):
        assert out[f"known{m}_used"] == m
        assert 0.55 < out[f"known{m}_features_auc"] < 0.8  # the features alone tell a little
        assert out[f"known{m}_advantage"] > 0.1
        assert out[f"known{m}_auc"] == pytest.approx(out[f"known{m}_features_auc"] + out[f"known{m}_advantage"])
        assert out[f"known{m}_rows_auc"] > out[f"known{m}_features_auc"]


def test_known_labels_noise_rows_give_no_advantage_and_no_features_no_advantage_key():
    y = _labels(600)
    noise = {r: np.random.default_rng(r).normal(size=(600, 16)) for r in range(1, 6)}
    out = audit.known_label_attack(noise, y, 2, _features(y, 1.0))
    for m in (20, 50, 100):
        assert abs(out[f"known{m}_advantage"]) < 0.04, out
        assert abs(out[f"known{m}_rows_auc"] - 0.5) < 0.06, out
    alone = audit.known_label_attack(noise, y, 2)
    assert "known20_rows_auc" in alone and not any("advantage" in k or "features" in k for k in alone)
    few = audit.known_label_attack({1: noise[1][:60]}, y[:60], 2)  # 30 users at most: m capped
    assert few["known50_used"] == few["known100_used"] == 30


# ------------------------------------------------------------------------------------------------ replay
def _old_noised(y: np.ndarray, noise_of_round) -> dict[int, np.ndarray]:
    clean = _noisy_rounds(y, signal=1.0, noise=0.05, rounds=4)
    return {r: (g + 3.0 * noise_of_round(r, g.shape)).astype(np.float32) for r, g in clean.items()}


def test_replay_of_the_old_config_seeded_noise_reads_the_labels():
    y = _labels()
    rows = _old_noised(y, lambda r, shape: np.random.default_rng([SEED, 0x6AD, r, 1]).normal(0, 1, size=shape))
    out = audit.replay_attack(rows, SEED, 1, y)
    assert out["replay_auc"] > 0.99 and out["replay_scale"] > 0.9
    assert out["noreplay_auc"] < 0.8  # without the replay the noise hides most of it
    assert out["streams"]["torch_prototype"]["scale"] < 0.05  # the other stream is not this noise
    wrong = audit.replay_attack(rows, SEED + 1, 1, y)  # another seed regenerates nothing
    assert wrong["replay_scale"] < 0.05 and abs(wrong["replay_auc"] - wrong["noreplay_auc"]) < 0.03


def test_replay_of_the_old_prototype_stream_and_nothing_against_secret_noise():
    import torch

    from flwr_vproto.method.batching import round_seed

    def torch_noise(r, shape):
        gen = torch.Generator().manual_seed(round_seed(SEED, 0, r) + 2)
        return torch.randn(shape, generator=gen, dtype=torch.float64).numpy()

    y = _labels()
    found = audit.replay_attack(_old_noised(y, torch_noise), SEED, 1, y)
    assert found["replay_auc"] > 0.99 and found["streams"]["torch_prototype"]["scale"] > 0.9
    secret = np.random.default_rng(2**40 + 12345)
    rows = _old_noised(y, lambda r, shape: secret.normal(size=shape))
    out = audit.replay_attack(rows, SEED, 1, y)
    assert out["replay_scale"] < 0.05
    assert abs(out["replay_auc"] - out["noreplay_auc"]) < 0.03 and out["replay_auc"] < 0.8


# ------------------------------------------------------------------------------------------------ recording
def test_record_received_and_features_round_trip_and_skip_none(tmp_path):
    g = np.arange(12, dtype=np.float32).reshape(4, 3)
    path = audit.record_received(tmp_path, 2, 5, {"gradients": g, "prototypes": None, "pseudo_threshold": 0.7,
                                                  "test_previous": True, "splits": "val,test"})
    assert path == tmp_path / "passive2" / "received-5.npz" and not list(path.parent.glob("*.tmp*"))
    with np.load(path) as data:
        assert sorted(data.files) == ["gradients", "pseudo_threshold", "splits", "test_previous"]
        assert np.array_equal(data["gradients"], g) and float(data["pseudo_threshold"]) == 0.7
        assert bool(data["test_previous"]) and str(data["splits"]) == "val,test"
    feats = audit.record_features(tmp_path, 2, np.ones((4, 2, 3)))
    with np.load(feats) as data:
        assert data[audit.FEATURES].shape == (4, 6)
    audit.record_round(tmp_path, 5, [g], np.zeros(4), channels={"pseudo_thresholds": np.array([0.7]), "x": None})
    with np.load(tmp_path / "round-5.npz") as data:
        assert sorted(data.files) == ["channel.pseudo_thresholds", "labels", "passive1.gradients"]


def test_audit_folder_reads_the_passive_view_and_reports_every_attack_and_channel(tmp_path):
    y = _labels(300)
    rows = _noisy_rounds(y, signal=0.6, noise=1.0, rounds=6)
    feats = _features(y, 0.5)
    for r, g in rows.items():
        sent = g.astype(np.float32)
        audit.record_round(tmp_path, r, [sent, sent], y, channels={"pseudo_thresholds": np.array([0.5 + r / 100])})
        protos = np.stack([g[y == 0].mean(0), g[y == 1].mean(0)]).astype(np.float32)
        audit.record_received(tmp_path, 1, r, {"gradients": sent, "prototypes": protos,
                                               "prototype_mask": np.array([True, True]),
                                               "pseudo_threshold": 0.5 + r / 100, "test_previous": r % 2 == 0,
                                               "splits": "val" if r < 6 else "val,test"})
    audit.record_features(tmp_path, 1, feats)
    report = audit.audit_folder(tmp_path, 2, seed=SEED)
    assert set(report) == {"rounds", "multiround", "known_label", "replay", "prototypes", "channels", "strongest",
                           "summary"}
    assert len(report["rounds"]) == 12 and {r["passive"] for r in report["multiround"]} == {"passive1", "passive2"}
    one, two = report["channels"]["passive1"], report["channels"]["passive2"]
    assert one["rows_from"] == "received" and two["rows_from"] == "sent" and one["features"] and not two["features"]
    assert one["sent_received_max_diff"] == 0.0 and one["test_previous_rounds"] == 3
    assert one["prototypes"]["rounds"] == 6 and one["pseudo_threshold"]["6"] == pytest.approx(0.56)
    assert one["splits"]["6"] == "val,test"
    assert report["channels"]["active"]["pseudo_thresholds"]["1"] == pytest.approx([0.51])
    known = {r["passive"]: r for r in report["known_label"]}
    assert "known50_advantage" in known["passive1"] and "known50_advantage" not in known["passive2"]
    s = report["summary"]
    for key in ("max_norm_auc", "max_direction_auc", "max_projection_auc", "max_auc_chance", "max_cluster_accuracy",
                "multiround_projection_auc", "multiround_stacked_auc", "multiround_chance", "known20_advantage",
                "known50_advantage", "known100_advantage", "replay_auc", "strongest_auc", "strongest_chance",
                "prototype_rounds", "test_previous_rounds", "pseudo_threshold_rounds"):
        assert key in s and math.isfinite(s[key]), key
    assert s["multiround_rounds"] == 6 and s["test_previous_rounds"] == 3 and s["replay_scale"] < 0.05
    label_free = [s[k] for k in ("max_norm_auc", "max_direction_auc", "max_projection_auc",
                                 "multiround_projection_auc", "multiround_stacked_auc", "replay_auc")]
    assert s["strongest_auc"] == max(label_free) > 0.9 and s["strongest_chance"] < 0.65
    assert s["known50_advantage"] > 0.1
    text = audit.format_summary(s, report["strongest"])
    assert text.startswith("label-leakage audit (worst round/passive): ") and "strongest label-free attack" in text
    assert "replay_auc" not in audit.audit_folder(tmp_path, 2)["summary"]  # no seed: no replay


def test_cli_passes_the_run_seed_to_the_replay_and_writes_the_summary(tmp_path, capsys):
    import json

    y = _labels(400)
    rows = _old_noised(y, lambda r, shape: np.random.default_rng([SEED, 0x6AD, r, 1]).normal(0, 1, size=shape))
    for r, g in rows.items():
        audit.record_round(tmp_path / "audit", r, [g], y)
    (tmp_path / "results.json").write_text(json.dumps({"config": {"seed": SEED, "dataset": {"name": "adult"}}}))
    assert audit.main([str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "results.json").read_text())["audit"]
    assert summary["replay_scale"] > 0.9 and summary["replay_auc"] > 0.99
    assert set(json.loads((tmp_path / "audit.json").read_text())) >= {"multiround", "replay", "summary"}
    out = capsys.readouterr().out
    assert out.startswith("label-leakage audit (worst round/passive): ") and "replay_auc 1.000" in out
