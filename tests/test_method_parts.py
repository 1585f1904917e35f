"""The named parts of the method (flwr_vproto/method/), one by one, and the active party's calibration step."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flwr_vproto.config import MethodConfig, ResearchConfig, config_from_dict
from flwr_vproto.method.batching import index_batches, num_batches, round_seed
from flwr_vproto.method.calibration import (
    BestValidation,
    Calibration,
    fit_combine_weight,
    fit_pseudo_gates,
    majority_share,
)
from flwr_vproto.method.joint import JointLogits, joint_logits, prototype_log_probs
from flwr_vproto.method.losses import (
    FirstLoss,
    PrototypeGeometry,
    PseudoTally,
    ThirdLoss,
    ThirdLossRound,
    first_prototype_loss,
    local_head_loss,
    passive_pseudo_targets,
    supervised_joint_loss,
    third_prototype_loss,
)
from flwr_vproto.method.scores import classification_scores

# Two classes with prototypes at (1, 0) and (0, 1); rows near one of them.
PROTOS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
BOTH = torch.tensor([True, True])
GEO = PrototypeGeometry(distance="sqeuclidean", normalize=True, tau=0.1)


# ------------------------------------------------------------------------------------------------ batching, scores
def test_round_seeds_differ_per_party_and_round_and_repeat():
    seeds = {round_seed(0, p, r) for p in range(3) for r in range(5)}
    assert len(seeds) == 15 and round_seed(3, 1, 2) == round_seed(3, 1, 2) != round_seed(4, 1, 2)


def test_index_batches_cycle_through_every_row_before_repeating():
    assert num_batches(0, 4) == 0 and num_batches(9, 4) == 3
    batches = index_batches(10, 4, 6, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    assert sorted(torch.cat(batches[:3]).tolist()) == list(range(10)) == sorted(torch.cat(batches[3:]).tolist())
    assert all(len(b) == 0 for b in index_batches(0, 4, 3, torch.Generator()))


def test_scores_skip_unknown_labels_and_give_auc_for_two_classes():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    s = classification_scores(probs, np.array([0, 1, 1, -1]), 2)
    assert s["accuracy"] == pytest.approx(2 / 3)
    assert s["loss"] == pytest.approx(-np.log([0.9, 0.8, 0.4]).mean())
    assert s["auc"] == pytest.approx(1.0)
    assert classification_scores(probs, np.full(4, -1), 2) == {}
    assert "auc" not in classification_scores(np.eye(3), np.arange(3), 3)


# ------------------------------------------------------------------------------------------------ losses
def test_supervised_joint_loss_ignores_rows_of_unknown_label():
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, -1, 2, 1, -1])
    keep = y >= 0
    assert supervised_joint_loss(logits, y) == pytest.approx(float(F.cross_entropy(logits[keep], y[keep])))


def test_each_part_reads_its_own_keys():
    m = MethodConfig(lambda_active=0.3, lambda_passive=0.7, confidence_threshold=0.4, warmup_rounds=2, tau=0.5,
                     research=ResearchConfig(pseudo_label_once=True, distance="cosine", normalize=False))
    geo = PrototypeGeometry("cosine", False, 0.5)
    assert PrototypeGeometry.from_method(m) == geo
    assert FirstLoss.from_method(m) == FirstLoss(0.3, 0.4, geo)
    assert ThirdLoss.from_method(m) == ThirdLoss(0.7, 0.4, True, 2, geo)
    cal = Calibration.from_method(MethodConfig(combine_weight=0.2, lambda_passive=1.0,
                                               research=ResearchConfig(pseudo_gate="majority")))
    assert cal == Calibration(0.2, "majority", 0.5, "best_val", 2.0)
    assert JointLogits.from_method(m, has_local_head=True, joint=True) == JointLogits(True, True, True, geo)
    vanilla = MethodConfig(name="vanilla", research=ResearchConfig(joint_trains_active_encoder=True))
    assert JointLogits.from_method(vanilla, has_local_head=False, joint=True) == JointLogits(
        False, False, False, PrototypeGeometry.from_method(vanilla))


def test_first_loss_keeps_known_labels_and_pseudo_labels_only_confident_unknown_rows():
    part = FirstLoss(weight=1.0, threshold=0.9, geometry=GEO)
    h = torch.tensor([[1.0, 0.05], [0.05, 1.0], [1.0, 0.9], [0.0, 2.0]], requires_grad=True)
    y = torch.tensor([1, -1, -1, 0])  # row 0 labelled against its nearest prototype; row 2 is ambiguous
    tally = PseudoTally()
    loss = first_prototype_loss(h, y, PROTOS, BOTH, part, tally)
    assert (tally.seen, tally.kept) == (2, 1)  # row 1 confident, row 2 not
    hn = F.normalize(h.detach(), dim=1)
    expected = GEO.loss(hn[[0, 1, 3]], torch.tensor([1, 1, 0]), PROTOS, BOTH)
    assert float(loss.detach()) == pytest.approx(float(expected))
    loss.backward()
    assert h.grad is not None and torch.all(h.grad[2] == 0)  # the skipped row gets no gradient


def test_local_head_loss_concatenates_batches_and_is_none_without_labels():
    head = torch.nn.Linear(2, 2)
    a, b = (torch.randn(3, 2), torch.tensor([0, 1, -1])), (torch.randn(2, 2), torch.tensor([1, 1]))
    loss = local_head_loss(head, [a, b])
    feats, labels = torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])
    with torch.no_grad():
        assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(head(feats), labels, ignore_index=-1)))
    assert local_head_loss(head, []) is None
    assert local_head_loss(head, [(torch.randn(2, 2), torch.tensor([-1, -1]))]) is None


def test_passive_pseudo_targets_drop_unconfident_rows():
    z = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.1, 1.0]]), dim=1).requires_grad_(True)
    targets, keep = passive_pseudo_targets(z, PROTOS, BOTH, GEO, threshold=0.9)
    assert targets.tolist() == [0, -1, 1] and keep.tolist() == [True, False, True]
    assert not targets.requires_grad
    loss = third_prototype_loss(z, targets, PROTOS, BOTH, ThirdLoss(1.0, 0.9, False, 1, GEO))
    expected = GEO.loss(z[[0, 2]].detach(), torch.tensor([0, 1]), PROTOS, BOTH)
    assert float(loss.detach()) == pytest.approx(float(expected))


def test_third_loss_starts_after_warmup_with_weight_and_a_prototype():
    part = ThirdLoss(weight=1.0, threshold=0.5, label_once=False, warmup_rounds=1, geometry=GEO)
    mask = np.array([True, False])
    assert part.active(2, mask) and not part.active(1, mask)
    assert not part.active(2, np.array([False, False])) and not part.active(2, None)
    assert not ThirdLoss(0.0, 0.5, False, 1, GEO).active(2, mask)


@pytest.mark.parametrize("once", [False, True])
def test_third_loss_round_tallies_coverage_and_pseudo_accuracy(once):
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.1]])
    encoder = torch.nn.Identity()
    part = ThirdLoss(weight=1.0, threshold=0.9, label_once=once, warmup_rounds=1, geometry=GEO)
    rows = torch.tensor([0, 1, 2, 3])
    rnd = ThirdLossRound(part, rows, [torch.tensor([0, 1]), torch.tensor([2, 3])], PROTOS, BOTH, 0.9,
                         truth=torch.tensor([0, 0, 1, 0]))
    if once:
        rnd.label_all(x)
        assert rnd.fixed is not None and rnd.fixed[0].tolist() == [0, 1, -1, 0]
    losses = [float(rnd.step(i, encoder, x)) for i in range(2)]
    assert all(math.isfinite(v) for v in losses)
    m = rnd.metrics(steps=2)
    assert m["pseudo_coverage"] == pytest.approx(3 / 4)  # row 2 sits between both prototypes
    assert m["pseudo_accuracy"] == pytest.approx(2 / 3)  # row 1 is labelled 1, its truth is 0
    assert m["third_loss"] == pytest.approx(sum(losses) / 2)
    assert ThirdLossRound(part, rows, [], PROTOS, BOTH, 0.9).metrics(1) == {}


# ------------------------------------------------------------------------------------------------ joint logits
def test_joint_logits_residual_is_detached_and_prototype_logits_vote_per_passive():
    geo = PrototypeGeometry(normalize=False)
    top, head = torch.nn.Linear(4, 2), torch.nn.Linear(2, 2)
    h, z = torch.randn(3, 2, requires_grad=True), torch.randn(3, 2)
    part = JointLogits(residual=True, prototype_logits=True, detach_active=True, geometry=geo)
    w = torch.tensor([0.5])
    pw = torch.tensor([2.0])
    out = joint_logits(part, top, h, [z], residual_logits=head, residual_weight=w, second=[(PROTOS, BOTH)],
                       prototype_weights=pw)
    expected = top(torch.cat([h, z], 1)) + w * head(h) + pw[0] * prototype_log_probs(z, PROTOS, BOTH, geo)
    assert torch.allclose(out, expected)
    out.sum().backward()
    assert h.grad is None and head.weight.grad is None  # active encoder and head untouched by this loss
    plain = JointLogits(residual=False, prototype_logits=False, detach_active=False, geometry=geo)
    h2 = torch.randn(3, 2, requires_grad=True)
    joint_logits(plain, top, h2, [z]).sum().backward()
    assert h2.grad is not None


def test_a_class_without_prototype_gets_the_mean_vote_not_a_veto():
    z = torch.tensor([[1.0, 0.0]])
    mask = torch.tensor([True, False, True])
    protos = torch.tensor([[1.0, 0.0], [9.0, 9.0], [0.0, 1.0]])
    lp = prototype_log_probs(z, protos, mask, PrototypeGeometry(normalize=False, tau=1.0))
    scores = torch.tensor([0.0, -2.0])  # -distance to the two prototypes
    expected = torch.log_softmax(torch.tensor([0.0, scores.mean(), -2.0]), 0)
    assert torch.allclose(lp[0], expected)


# ------------------------------------------------------------------------------------------------ calibration
def test_combine_weight_follows_the_better_model_on_validation_rows():
    y = np.array([0, 1, 0, 1])
    right, wrong = np.eye(2)[y] * 0.8 + 0.1, np.eye(2)[1 - y] * 0.8 + 0.1
    assert fit_combine_weight(right, wrong, y) == 1.0
    assert fit_combine_weight(wrong, right, y) == 0.0
    assert fit_combine_weight(right, wrong, np.full(4, -1)) is None


def test_gates_reach_the_precision_target_and_never_go_below_the_floor():
    z = torch.tensor([[1.0, 0.0]] * 12 + [[0.0, 1.0]] * 12)
    y = torch.tensor([0] * 12 + [1] * 12)
    assert fit_pseudo_gates([z], y, [PROTOS], BOTH, GEO, target=0.9, floor=0.3) == [0.3]  # all right: floor
    flipped = fit_pseudo_gates([z], 1 - y, [PROTOS], BOTH, GEO, target=0.9, floor=0.3)
    assert flipped == [1.0]  # every pseudo-label wrong: keep nothing
    assert majority_share(torch.tensor([0, 0, 1, -1]), 2) == pytest.approx(2 / 3)


def test_best_validation_marks_each_new_low_and_round_trips():
    best = BestValidation()
    assert [best.observe(v) for v in (0.5, 0.6, 0.4, 0.4)] == [True, False, True, False]
    assert best.pending and not best.ready and best.loss == 0.4
    assert BestValidation.from_list(best.to_list()) == best


# ------------------------------------------------------------------------------------------------ calibrate step
def _trained_active(method: dict, rounds: int = 3):
    from flwr_vproto.inprocess import run_inprocess

    cfg = config_from_dict({"engine": "inprocess", "num_rounds": rounds, "dataset": {"name": "digits",
                            "aligned_fraction": 0.2, "max_train_users": 400},
                            "method": {"batch_size": 64, **method},
                            "privacy": {"clear_prototypes": method.get("lambda_passive", 0) > 0}})
    return run_inprocess(cfg)


def _val_test_embeddings(res):
    passives = res["state"]["passives"]
    return [p.embed("val") for p in passives], [p.embed("test") for p in passives]


def test_evaluate_has_no_side_effects_and_calibrate_fits_what_val_reports():
    res = _trained_active({"name": "vproto", "lambda_passive": 1.0, "research": {"pseudo_gate": "majority"}})
    active = res["state"]["active"]
    val, test = _val_test_embeddings(res)
    scoring = active.scoring
    before = (scoring.combine_weight, list(scoring.gates), SimpleNamespace(**vars(active.best_val)))
    state = {k: v.clone() for k, v in active.encoder.state_dict().items()}
    first = scoring.evaluate("val", val)
    assert scoring.evaluate("val", val) == first and scoring.evaluate("test", test) == scoring.evaluate("test", test)
    assert (scoring.combine_weight, list(scoring.gates), vars(active.best_val)) == (before[0], before[1],
                                                                                    vars(before[2]))
    assert all(torch.equal(state[k], v) for k, v in active.encoder.state_dict().items())
    assert not any(k.startswith(("pseudo_gate", "residual_base")) for k in first)
    cal = scoring.calibrate(val)
    assert set(cal) == {"residual_base_update", "pseudo_gate1", "aligned_users", "own_users", "own_accuracy",
                        "own_loss", "active_only_kept", "combine_gain_z", "combine_gated"}
    assert cal["pseudo_gate1"] == scoring.gates[0]
    assert cal["aligned_users"] == int((active.labels("val") >= 0).sum())
    assert scoring.pseudo_gates() == scoring.gates
    last = res["rounds"][-1]
    # The engines' sequence gives the keys (and, on the same state, the values) a run reports.
    merged = {**scoring.evaluate("val", val), **cal}
    assert {f"val/{k}" for k in merged} == {k for k in last if k.startswith("val/")}


def test_calibrate_without_anything_to_fit_returns_nothing():
    res = _trained_active({"name": "vanilla", "local_head": False, "combine_weight": 1.0,
                           "research": {"joint_residual": False}},
                          rounds=2)
    active = res["state"]["active"]
    val, _ = _val_test_embeddings(res)
    # nothing fitted: only the count of labelled aligned validation users that round selection reads
    assert active.scoring.calibrate(val) == {"aligned_users": float(len(val[0]))}
    assert active.scoring.pseudo_gates() is None
