"""The seed's protocol safe by default (DP second prototypes for a changed label, refused in clear unless
acknowledged, attacked by the audit) and the Gaussian gradient channel's premise checked round by round."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flwr_vproto import audit, defences, privacy
from flwr_vproto.config import ConfigError, config_from_dict
from flwr_vproto.parties import ActiveParty

SEED = {"name": "vproto", "lambda_passive": 1.0, "batch_size": 64}


def test_clear_second_prototypes_are_refused_in_one_line_unless_protected_or_acknowledged():
    with pytest.raises(ConfigError, match=r"method.lambda_passive=1.0: .*privacy=dp.*privacy=none") as err:
        config_from_dict({"method": SEED})
    assert "\n" not in str(err.value)
    assert config_from_dict({"method": SEED, "privacy": {"clear_prototypes": True}}).privacy.clear_prototypes
    assert config_from_dict({"method": SEED, "privacy": {"target_epsilon": 1.0}}).privacy.gaussian
    config_from_dict({"method": SEED, "defence": {"label_epsilon": 1.0}})  # computed from randomised labels
    config_from_dict({"method": SEED, "exchange": {"count": 1}})  # one exchange: the last prototypes never leave
    with pytest.raises(ConfigError, match=r"method.research.pseudo_gate='majority': expected 'off' with DP prototypes"):
        config_from_dict({"method": {**SEED, "research": {"pseudo_gate": "majority"}},
                          "privacy": {"target_epsilon": 1.0}})


def test_the_noise_is_scaled_for_one_changed_label():
    """Changing one label moves the class sums by sqrt(2) C and the counts by sqrt(2): the noise is sigma times
    that, so sigma is the noise multiplier of the label-DP relation the accountant charges."""
    z = torch.nn.functional.normalize(torch.randn(50, 8), dim=1) * 0.5
    y = torch.randint(0, 3, (50,))
    y2 = y.clone()
    y2[0] = (y[0] + 1) % 3
    zero = torch.zeros_like(z)
    sums = [privacy.noisy_class_sums(z, lab, 3, 0.5, 0.0, torch.Generator().manual_seed(0)) for lab in (y, y2)]
    assert float((sums[0] - sums[1]).norm()) == pytest.approx(math.sqrt(2) * 0.5, rel=1e-5)
    noise = privacy.noisy_class_sums(zero, torch.full((50,), -1), 3, 0.5, 2.0, torch.Generator().manual_seed(1))
    big = privacy.noisy_class_sums(torch.zeros(20000, 1), torch.full((20000,), -1), 20000, 0.5, 2.0,
                                   torch.Generator().manual_seed(2))
    assert float(noise.abs().max()) > 0 and float(big.std()) == pytest.approx(2.0 * math.sqrt(2) * 0.5, rel=0.03)
    counts = torch.stack([privacy.noisy_counts(torch.zeros(0, dtype=torch.long), 4000, 2.0,
                                               torch.Generator().manual_seed(3))])
    assert float(counts.std()) == pytest.approx(2.0 * math.sqrt(2), rel=0.05)


def test_the_ledger_composes_releases_with_their_own_noise_multipliers():
    one = privacy.Accountant(4.0, 1e-5)
    one.step(2)
    mixed = privacy.Accountant(4.0, 1e-5)
    mixed.step(1)
    mixed.step(1, noise_multiplier=2.0)
    assert mixed.steps == 2 and mixed.epsilon() > one.epsilon() > 0


def _prototypes(z: np.ndarray, y: np.ndarray, classes: int) -> np.ndarray:
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    return np.stack([u[y == c].mean(axis=0) for c in range(classes)])


def test_the_audit_inverts_clear_prototypes_and_dp_noise_defeats_it():
    """Clear prototypes over enough rounds give every label away (rounds x d >= users); the same attack on
    prototypes noised for a small label-change epsilon is near chance."""
    rng = np.random.default_rng(0)
    n, d, rounds, classes = 120, 16, 10, 3
    y = rng.integers(0, classes, n)
    emb = {r: rng.normal(size=(n, d)) for r in range(1, rounds + 1)}
    clear = {r: _prototypes(z, y, classes) for r, z in emb.items()}
    got = audit.prototype_attacks(emb, clear, {}, y, classes)
    assert got["prototype_inversion_accuracy"] == 1.0 and got["prototype_pairs"] == rounds
    sigma = privacy._calibrate(0.5, 1e-5, rounds * 2)
    counts = np.bincount(y, minlength=classes)
    noisy = {r: p + rng.normal(0, sigma * math.sqrt(2), p.shape) / counts[:, None] for r, p in clear.items()}
    weak = audit.prototype_attacks(emb, noisy, {}, y, classes)
    assert weak["prototype_inversion_accuracy"] < 0.6


def test_the_summary_names_what_protects_the_prototypes_and_claims_no_bound_that_is_off():
    clear = {"defence": {"release_rounds": 0, "planned_releases": 0, "label_free": False},
             "privacy": {"clear_prototypes": True, "epsilon": None, "steps": 19}}
    line = defences.describe(clear)
    assert "sent in clear 19 times" in line and "no bound" in line and "bounds them" not in line
    dp = {"defence": {"release_rounds": 0, "planned_releases": 0, "label_free": False, "every_byte_epsilon": 0.9},
          "privacy": {"noise_multiplier": 25.0, "clip_norm": 1.0, "epsilon": 0.9, "delta": 1e-5, "steps": 38}}
    assert "label-change epsilon 0.9 at delta 1e-05 over 38 releases" in defences.describe(dp)


def test_gaussian_rows_move_only_the_flipped_users_row_given_the_model_round_by_round(monkeypatch):
    """With defence=gradient_noise every round's released rows come from one snapshot of the model: flipping one
    aligned user's label (the model held fixed) moves that user's unit row by at most 2 and no other row at all."""
    from flwr_vproto.inprocess import run_inprocess

    checked: list[int] = []
    original = ActiveParty.train_round

    def train_round(self, rnd, passive_embeddings, release=True):
        out = original(self, rnd, passive_embeddings, release)
        zs = [torch.as_tensor(e, dtype=torch.float32) for e in passive_embeddings]
        y = torch.as_tensor(self.labels("train"))
        i = int(np.flatnonzero(y.numpy() >= 0)[0])
        flipped = y.clone()
        flipped[i] = (y[i] + 1) % self.num_classes
        rows = [defences.unit_rows(g) for g in self.snapshot_rows(zs, y)]
        moved = [defences.unit_rows(g) for g in self.snapshot_rows(zs, flipped)]
        for g, a, b in zip(out.gradients, rows, moved, strict=True):
            np.testing.assert_array_equal(defences.unit_rows(g), a)  # what leaves is the snapshot's rows
            diff = np.linalg.norm(a - b, axis=1)
            assert 0 < diff[i] <= 2.0 + 1e-6
            assert np.count_nonzero(np.delete(diff, i)) == 0
        checked.append(rnd)
        return out

    monkeypatch.setattr(ActiveParty, "train_round", train_round)
    cfg = config_from_dict({"engine": "inprocess", "num_rounds": 3, "eval_every": 3,
                            "dataset": {"name": "digits", "aligned_fraction": 0.2, "max_train_users": 300},
                            "method": {"batch_size": 64, "research": {"passive_pretrain_min_steps": 0}},
                            "defence": {"target_epsilon": 1.0, "release_rounds": None}})
    res = run_inprocess(cfg)
    assert checked == [1, 2, 3]
    d = res["defence"]
    assert d["transcript_bounded"] is False and "gradient_epsilon" not in d
    assert d["release_epsilon_given_model"] == pytest.approx(1.0, abs=0.02)
    assert all("privacy/gradient_release_epsilon" in r and "privacy/gradient_epsilon" not in r
               for r in res["rounds"])
