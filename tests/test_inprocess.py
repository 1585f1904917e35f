"""The learning core end to end on small digits runs: methods, determinism, state round trips, edge cases."""

import math

import numpy as np
import pytest
import torch

from flwr_vproto.alignment import align_dataset
from flwr_vproto.config import config_from_dict
from flwr_vproto.data import load_vertical_dataset
from flwr_vproto.inprocess import run_inprocess
from flwr_vproto.parties import ActiveParty, PassiveParty, state_from_bytes, state_to_bytes
from flwr_vproto.results import per_round
from flwr_vproto.scoring import ActiveScoring

VANILLA = {"name": "vanilla"}


THIRD = {"name": "vproto", "lambda_passive": 1.0}  # the passive third loss is off by default


def cfg_for(method=None, rounds=3, **dataset):
    ds = {"name": "digits", "aligned_fraction": 0.2, **dataset}
    # the third loss's prototypes leave in clear: acknowledged (privacy.clear_prototypes), else refused
    return config_from_dict({"engine": "inprocess", "num_rounds": rounds, "dataset": ds,
                             "method": {"batch_size": 64, "warmup_rounds": 1, **(method or {"name": "vproto"})},
                             "privacy": {"clear_prototypes": method is THIRD}})


def finite(history):
    return all(math.isfinite(v) for rec in history for v in rec.values())


@pytest.mark.parametrize("method", [{"name": "vproto"}, VANILLA, {"name": "local"}, {"name": "centralized"}])
def test_every_method_trains_and_reports(method):
    res = run_inprocess(cfg_for(method, rounds=6))
    rounds = per_round(res)
    assert len(rounds) == 6 and finite(rounds)
    final = res["final"]
    assert 0.3 < final["accuracy"] <= 1.0  # well above 10-class chance after a few rounds
    first, last = rounds[0], rounds[-1]
    assert last["val/accuracy"] > first["val/accuracy"]


def test_vproto_reports_prototype_metrics_and_pseudo_label_accuracy():
    res = run_inprocess(cfg_for(THIRD, rounds=4))
    last = res["rounds"][-1]
    for key in ("active/sup_loss", "active/first_loss", "passive1/third_loss", "passive1/pseudo_coverage",
                "passive1/pseudo_accuracy", "test/active_only_accuracy", "test/joint_accuracy"):
        assert key in last, key
    assert 0 <= last["passive1/pseudo_coverage"] <= 1
    assert last["passive1/pseudo_accuracy"] > 0.2  # far better than chance: prototypes carry class structure
    assert "passive1/third_loss" not in res["rounds"][0]  # warm-up round: no prototype loss yet


def test_same_seed_same_numbers_other_seed_other_numbers():
    a = run_inprocess(cfg_for(rounds=2))["rounds"]
    b = run_inprocess(cfg_for(rounds=2))["rounds"]
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b]
    c = run_inprocess(config_from_dict({**cfg_for(rounds=2).to_dict(), "seed": 1}))["rounds"]
    assert c[-1]["test/accuracy"] != a[-1]["test/accuracy"] or c[-1]["active/sup_loss"] != a[-1]["active/sup_loss"]


def test_two_passive_parties():
    res = run_inprocess(cfg_for(THIRD, rounds=3, num_passive=2))
    assert "passive2/third_loss" in res["rounds"][-1] and finite(res["rounds"])


@pytest.mark.slow
def test_binary_task_reports_auc():
    cfg = config_from_dict({"engine": "inprocess", "num_rounds": 2,
                            "dataset": {"name": "adult", "aligned_fraction": 0.05, "max_train_users": 3000}})
    final = run_inprocess(cfg)["final"]
    assert 0.5 < final["auc"] <= 1.0


def _parties(cfg, ds):
    al = align_dataset(ds, cfg.seed)
    active = ActiveParty(ds.active, cfg, ds.num_classes, [cfg.model.embedding_dim] * len(ds.passives))
    active.set_alignment(al[0])
    passive = PassiveParty(ds.passives[0], cfg, 1, ds.num_classes)
    passive.set_alignment(al[1])
    return active, passive


def test_state_round_trip_continues_identically():
    cfg = cfg_for(rounds=3)
    ds = load_vertical_dataset(cfg)
    active, passive = _parties(cfg, ds)
    out = passive.train_round(1)
    res = active.train_round(1, [out.embeddings])
    # Continue in fresh objects restored from bytes, as a new Flower ClientApp process would.
    a2, p2 = _parties(cfg, ds)
    a2.load_state_dict(state_from_bytes(state_to_bytes(active.state_dict())))
    p2.load_state_dict(state_from_bytes(state_to_bytes(passive.state_dict())))
    for pa, aa in ((passive, active), (p2, a2)):
        o = pa.train_round(2, res.gradients[0], res.prototypes[0], res.prototype_mask, ("test",))
        r = aa.train_round(2, [o.embeddings])
        aa.last = (o.embeddings, r.gradients[0], aa.scoring.evaluate("test", [o.eval_embeddings["test"]]))
    np.testing.assert_array_equal(active.last[0], a2.last[0])
    np.testing.assert_array_equal(active.last[1], a2.last[1])
    assert active.last[2] == a2.last[2]


def test_class_missing_from_aligned_rows_is_skipped_not_nan():
    cfg = cfg_for(rounds=3)
    ds = load_vertical_dataset(cfg)
    aligned = set(ds.active.train.ids) & set(ds.passives[0].train.ids)
    tr = ds.passives[0].train
    drop = np.array([i in aligned and t == 3 for i, t in zip(tr.ids, tr.y_true, strict=True)])
    assert drop.any()
    tr.ids, tr.x, tr.y_true = tr.ids[~drop], tr.x[~drop], tr.y_true[~drop]
    res = run_inprocess(cfg, ds)
    assert finite(res["rounds"])
    assert res["rounds"][-1]["active/prototype_classes"] == 9


def test_wrong_gradient_shape_is_a_clear_error():
    cfg = cfg_for(rounds=1)
    ds = load_vertical_dataset(cfg)
    _, passive = _parties(cfg, ds)
    with pytest.raises(ValueError, match="passive1, round 2: gradients of shape"):
        passive.train_round(2, np.zeros((3, 3), dtype=np.float32))


def test_intersection_below_the_configured_minimum_stops_before_training():
    from flwr_vproto.psi import PSIError

    cfg = config_from_dict({"engine": "inprocess", "num_rounds": 1,
                            "dataset": {"name": "digits", "aligned_fraction": 0.2, "min_aligned": 100000}})
    with pytest.raises(PSIError, match="100000"):
        run_inprocess(cfg)


def test_joint_encoder_and_learned_residual_weight():
    """vproto's joint model has its own active encoder and learns how much of the active-only head to keep."""
    on = run_inprocess(cfg_for(rounds=3))["state"]["active"]
    assert on.joint_enc is not None and on.residual_weight is not None
    assert float(on.residual_weight.param.detach()) != 1.0  # trained, from its start at 1
    assert any(not torch.equal(p, q) for p, q in zip(on.joint_enc.parameters(), on.encoder.parameters(), strict=True))
    off = run_inprocess(cfg_for({"name": "vproto", "research": {"joint_encoder": False, "residual_weight": "fixed"}},
                                rounds=2))
    assert off["state"]["active"].joint_enc is None and off["state"]["active"].residual_weight is None


@pytest.mark.parametrize("passes", [1, 2])
def test_aligned_passes_bounds_the_supervised_steps(passes):
    """method.research.aligned_passes: the joint loss sees the aligned rows k times a round."""
    res = run_inprocess(cfg_for({"name": "vproto", "research": {"aligned_passes": passes}}, rounds=2,
                                aligned_fraction=0.05))
    active = res["state"]["active"]
    n_batches = math.ceil(len(active.aligned["train"]) / 64)
    last = res["rounds"][-1]
    assert last["active/steps"] > 2 * n_batches  # many more non-aligned than aligned batches
    assert last["active/sup_steps"] == passes * n_batches


def test_joint_warm_start_copies_the_shared_encoder_after_the_warm_up():
    """method.research.joint_warm_start: at the start of round warmup_rounds + 1 the joint encoder becomes the shared
    one."""
    cfg = cfg_for({"name": "vproto", "warmup_rounds": 1, "research": {"joint_warm_start": True}}, rounds=2)
    with_copy = run_inprocess(cfg)
    without = run_inprocess(cfg_for({"name": "vproto", "warmup_rounds": 1, "research": {"joint_warm_start": False}},
                                    rounds=2))
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in per_round(with_copy)]
    assert strip[0] == {k: v for k, v in per_round(without)[0].items() if k != "seconds"}  # round 1: no copy yet
    assert strip[1]["active/sup_loss"] != per_round(without)[1]["active/sup_loss"]
    # round 2 started from the shared encoder: with one aligned pass, the joint encoder moved only a few steps
    def distance(party):
        return max(float((p - q).detach().abs().max())
                   for p, q in zip(party.joint_enc.parameters(), party.encoder.parameters(), strict=True))

    gap, far = distance(with_copy["state"]["active"]), distance(without["state"]["active"])
    assert gap < far


def test_passive_pretraining_learns_to_reconstruct_and_changes_the_embeddings():
    """method.passive_pretrain_epochs: a denoising autoencoder on the passive's own rows before round 1."""
    short = run_inprocess(cfg_for({"name": "vproto", "passive_pretrain_epochs": 1,
                                   "research": {"passive_pretrain_min_steps": 0}},
                                  rounds=1))
    longer = run_inprocess(cfg_for({"name": "vproto", "passive_pretrain_epochs": 4,
                                    "research": {"passive_pretrain_min_steps": 0}},
                                   rounds=1))
    assert longer["rounds"][0]["passive1/pretrain_loss"] < short["rounds"][0]["passive1/pretrain_loss"]
    plain = run_inprocess(cfg_for({"name": "vproto", "passive_pretrain_epochs": 0}, rounds=1))
    assert "passive1/pretrain_loss" not in plain["rounds"][0]
    assert "passive1/pretrain_loss" in run_inprocess(cfg_for(rounds=1))["rounds"][0]  # on by default (5 epochs)
    assert plain["rounds"][0]["test/joint_accuracy"] != short["rounds"][0]["test/joint_accuracy"]


def test_without_gradient_rows_the_passive_pretrains_at_least_the_auto_number_of_steps(monkeypatch):
    """method.research.passive_pretrain_min_steps=null: 500 optimiser steps when no gradient row will reach the passive
    (its pre-training is all it learns), none added when rows come; an explicit value wins."""
    from flwr_vproto.data import load_vertical_dataset
    from flwr_vproto.parties import PRETRAIN_STEPS_WITHOUT_ROWS, PassiveParty

    seen = []
    real = PassiveParty._pretrain
    monkeypatch.setattr(PassiveParty, "_pretrain", lambda self, epochs: seen.append(epochs) or real(self, 0))

    def cfg(release_rounds, **research):
        return config_from_dict({"engine": "inprocess", "num_rounds": 2, "defence": {"release_rounds": release_rounds},
                                 "dataset": {"name": "digits", "aligned_fraction": 0.2},
                                 "method": {"batch_size": 64, "research": research}})

    for c in (cfg(0), cfg(None), cfg(0, passive_pretrain_min_steps=64)):
        run_inprocess(c)
    per_epoch = -(-len(load_vertical_dataset(cfg(0)).passives[0].train) // 64)
    assert seen == [-(-PRETRAIN_STEPS_WITHOUT_ROWS // per_epoch), 5, max(5, -(-64 // per_epoch))]
    assert seen[0] > 5


def test_residual_base_is_the_active_only_model_at_its_best_validation_loss(monkeypatch):
    """method.research.residual_base=best_val: the joint model's residual builds on a frozen copy of the shared encoder
    and head, taken (at the next round's start) whenever their validation loss reaches a new low."""
    seen: list[tuple[float, float, dict]] = []
    track = ActiveScoring._track_base

    def recording(self, local_probs, y):
        loss = -np.log(np.clip(local_probs[np.arange(len(y)), y], 1e-12, None)).mean()
        updated = track(self, local_probs, y)
        seen.append((float(loss), updated, {k: v.clone() for k, v in self.party.encoder.state_dict().items()}))
        return updated

    monkeypatch.setattr(ActiveScoring, "_track_base", recording)
    res = run_inprocess(cfg_for({"name": "vproto", "research": {"residual_base": "best_val"}}, rounds=6))
    assert [r["val/residual_base_update"] for r in per_round(res)] == [u for _, u, _ in seen]
    best = np.inf
    for loss, updated, _ in seen:  # an update exactly at each new lowest validation loss
        assert updated == float(loss < best)
        best = min(best, loss)
    active = res["state"]["active"]
    assert active.base is not None and not any(p.requires_grad for p in active.base.parameters())
    trained = {id(p) for g in active.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in trained for p in active.base.parameters())
    applied = [sd for _, u, sd in seen[:-1] if u]  # the last round's update would apply at a round never run
    assert all(torch.equal(active.base[0].state_dict()[k], v) for k, v in applied[-1].items())


def test_residual_base_is_the_live_head_until_the_first_validation():
    """Before any validation best_val has no base and trains exactly as the live head; with one, it differs."""
    def strip(res):
        return [{k: v for k, v in r.items() if k != "seconds" and "residual_base" not in k} for r in per_round(res)]

    def run(base, rounds=3, eval_every=1):
        cfg = cfg_for({"name": "vproto", "research": {"residual_base": base}}, rounds=rounds)
        return run_inprocess(config_from_dict({**cfg.to_dict(), "eval_every": eval_every}))

    assert strip(run("live", eval_every=3)) == strip(run("best_val", eval_every=3))  # validated after round 3 only
    every, plain = run("best_val", rounds=2), run("live", rounds=2)
    assert strip(every)[0] == strip(plain)[0]  # round 1: no validation yet
    assert per_round(every)[1]["active/sup_loss"] != per_round(plain)[1]["active/sup_loss"]
