"""The active party's prediction, evaluation and calibration parts (flwr_vproto/method/evaluation.py and
calibration.py) on hand-made cases, and the active party's scoring (flwr_vproto/scoring.py) giving exactly what the
parts compute."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flwr_vproto.config import config_from_dict
from flwr_vproto.method.calibration import Calibration, shared_prototype_mask, validation_loss
from flwr_vproto.method.evaluation import (
    active_only_rows,
    prediction_probs,
    softmax_probs,
    split_scores,
    top1_accuracy,
)

LOCAL = torch.log(torch.tensor([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]]))
JOINT = torch.log(torch.tensor([[0.1, 0.9], [0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]))


# ------------------------------------------------------------------------------------------------ prediction
def test_prediction_probs_combine_joint_and_local_with_the_weight():
    out = prediction_probs(LOCAL, JOINT, 0.25)
    assert set(out) == {"local", "joint", "combined"}
    np.testing.assert_allclose(out["local"], [[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(out["joint"], [[0.1, 0.9], [0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], rtol=1e-6)
    assert np.array_equal(out["combined"], 0.25 * out["joint"] + 0.75 * out["local"])
    np.testing.assert_allclose(out["combined"].sum(1), 1.0, rtol=1e-6)


def test_prediction_probs_ship_the_only_part_there_is():
    joint_only = prediction_probs(None, JOINT, 0.25)  # vanilla: no active-only head, the weight is unused
    assert set(joint_only) == {"joint", "combined"} and joint_only["combined"] is joint_only["joint"]
    local_only = prediction_probs(LOCAL, None, 1.0)  # local: no joint model
    assert set(local_only) == {"local", "combined"} and local_only["combined"] is local_only["local"]
    with pytest.raises(ValueError, match="logits"):
        prediction_probs(None, None, 0.5)


# ------------------------------------------------------------------------------------------------ scores
def test_split_scores_score_the_combined_prediction_and_each_part():
    probs = prediction_probs(LOCAL, JOINT, 0.5)  # combined rows: [.45 .55] [.75 .25] [.25 .75] [.55 .45]
    y = np.array([1, 0, 0, -1])  # the last row's label unknown: skipped
    s = split_scores(probs, y, 2, 0.5)
    assert s["accuracy"] == pytest.approx(2 / 3)
    assert s["loss"] == pytest.approx(-np.log([0.55, 0.75, 0.25]).mean(), rel=1e-6)
    assert s["auc"] == pytest.approx(0.5)  # positive row scored 0.55: above one negative, below the other
    assert s["combine_weight"] == 0.5
    assert s["local_accuracy"] == pytest.approx(1 / 3) and s["joint_accuracy"] == pytest.approx(2 / 3)
    assert "selection_accuracy" not in s


def test_split_scores_with_one_part_report_no_weight_and_no_part_accuracy():
    s = split_scores(prediction_probs(None, JOINT, 0.5), np.array([1, 0, 1, 0]), 2, 0.5)
    assert s["accuracy"] == 1.0
    assert not {"combine_weight", "joint_accuracy", "local_accuracy"} & set(s)


def test_split_scores_select_on_the_noised_labels_only():
    """defence.label_epsilon: selection_accuracy reads the labels the party trains on; accuracy the true ones."""
    probs = prediction_probs(None, JOINT, 1.0)  # predicts 1, 0, 1, 0
    s = split_scores(probs, np.array([1, 0, 1, 0]), 2, 1.0, selection_labels=np.array([0, 0, -1, 1]))
    assert s["accuracy"] == 1.0 and s["selection_accuracy"] == pytest.approx(1 / 3)


def test_active_only_rows_are_the_labelled_rows_no_passive_holds():
    y = np.array([0, 1, 1, 0, -1, 2])
    assert active_only_rows(6, np.array([1, 3]), y).tolist() == [0, 2, 5]
    assert active_only_rows(6, np.arange(6), y).size == 0
    assert active_only_rows(3, np.zeros(0, dtype=np.int64), np.array([-1, -1, 0])).tolist() == [2]


def test_top1_accuracy_and_no_rows():
    assert top1_accuracy(softmax_probs(LOCAL), np.array([0, 0, 1, 1])) == 0.75  # ties go to the first class
    assert top1_accuracy(np.zeros((0, 2)), np.zeros(0, dtype=np.int64)) is None


# ------------------------------------------------------------------------------------------------ calibration
def test_shared_prototype_mask_keeps_classes_every_passive_has_and_leaves_the_masks():
    a, b = torch.tensor([True, True, False]), torch.tensor([True, False, True])
    assert shared_prototype_mask([a, b]).tolist() == [True, False, False]
    assert a.tolist() == [True, True, False] and b.tolist() == [True, False, True]
    with pytest.raises(ValueError):
        shared_prototype_mask([])


def test_gate_target_is_the_majority_share_or_the_number():
    y = torch.tensor([0, 0, 0, 1, -1, 2])  # 3 of 5 labelled rows in class 0
    assert Calibration(1.0, "majority", 0.5, "live", None).gate_target(y, 3) == pytest.approx(0.6)
    assert Calibration(1.0, 0.9, 0.5, "live", None).gate_target(y, 3) == 0.9


def test_validation_loss_is_the_log_loss_or_inf_without_labels():
    p = np.array([[0.8, 0.2], [0.25, 0.75]])
    assert validation_loss(p, np.array([0, 1]), 2) == pytest.approx(-np.log([0.8, 0.75]).mean())
    assert validation_loss(p, np.array([-1, -1]), 2) == float("inf")


# ------------------------------------------------------------------------------------------------ the party's scoring
def test_active_party_scores_what_the_parts_compute():
    """On a trained party: evaluate = split_scores of predict_proba; active_only_accuracy = the head's accuracy on the
    labelled rows of the split that only the active party holds, computed here from its modules directly."""
    from flwr_vproto.inprocess import run_inprocess
    from flwr_vproto.method.scores import classification_scores

    cfg = config_from_dict({"engine": "inprocess", "num_rounds": 2, "dataset": {
        "name": "digits", "aligned_fraction": 0.2, "max_train_users": 300}, "method": {"batch_size": 64}})
    res = run_inprocess(cfg)
    active, passives = res["state"]["active"], res["state"]["passives"]
    assert active.joint and active.uses_local_head
    test = [p.embed("test") for p in passives]
    probs = active.scoring.predict_proba("test", test)
    w = active.scoring.combine_weight
    assert np.array_equal(probs["combined"], w * probs["joint"] + (1 - w) * probs["local"])
    scores = active.scoring.evaluate("test", test)
    y = active.data.test.y
    assert scores["accuracy"] == classification_scores(probs["combined"], y[active.aligned["test"]], 10)["accuracy"]

    only = np.setdiff1d(np.arange(len(y)), active.aligned["test"])
    only = only[y[only] >= 0]
    assert only.size
    active.encoder.eval()
    active.head.eval()
    with torch.no_grad():
        logits = active.head(active.encoder(torch.as_tensor(active.data.test.x[only], dtype=torch.float32)))
    expected = float((logits.argmax(1).numpy() == y[only]).mean())
    assert scores["active_only_accuracy"] == pytest.approx(expected)
    assert np.array_equal(active.scoring.active_only_proba("test", only), softmax_probs(logits))
