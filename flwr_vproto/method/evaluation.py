"""Prediction and scores of the active party: what its probabilities are and how a split is scored, once
``ActiveScoring`` (:mod:`flwr_vproto.scoring`) has picked the rows and the party has run its modules on them.

Why a part of its own: these numbers select the round, are what ``results.json`` reports and are what ``predict.py``
ships, so they must be the same in every engine and free of side effects (calibration, which fits, is
:mod:`~flwr_vproto.method.calibration`). As functions of logits, probabilities and labels they can be checked on a
hand-made case without training a party. Keys read: none (the combine weight comes in as a number, from
``ActiveScoring.combine_weight``).

* :func:`prediction_probs`: the active-only head's, the joint model's and the shipped (combined) probabilities;
* :func:`split_scores`: the scores ``ActiveScoring.evaluate`` reports for the aligned rows of a split;
* :func:`active_only_rows`, :func:`top1_accuracy`: the active-only fallback, scored on the labelled rows only the
  active party holds.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from flwr_vproto.method.scores import classification_scores


def softmax_probs(logits: torch.Tensor) -> np.ndarray:
    """Class probabilities of ``logits`` ``(n, C)`` as a NumPy array (no gradient), the form every score takes."""
    with torch.no_grad():
        return torch.softmax(logits, 1).cpu().numpy()


def prediction_probs(
    local_logits: torch.Tensor | None, joint_logits: torch.Tensor | None, combine_weight: float
) -> dict[str, np.ndarray]:
    """The probabilities of one set of rows: ``local`` (active-only head), ``joint`` (the split model), each when
    its logits are given, and ``combined``, the prediction the method ships.

    ``combined`` is ``w * joint + (1 - w) * local`` with ``w = combine_weight`` when both exist, else the one that
    exists (``vanilla`` has no head, ``local`` no joint model): the average of the joint and the active-only
    probabilities measured in design §3, its weight fitted on validation rows by ``combine_weight=auto``.
    """
    if local_logits is None and joint_logits is None:
        raise ValueError("a prediction needs the active-only head's or the joint model's logits")
    out: dict[str, np.ndarray] = {}
    if local_logits is not None:
        out["local"] = softmax_probs(local_logits)
    if joint_logits is not None:
        out["joint"] = softmax_probs(joint_logits)
    if "joint" in out and "local" in out:
        w = combine_weight
        out["combined"] = w * out["joint"] + (1 - w) * out["local"]
    else:
        out["combined"] = out["joint"] if "joint" in out else out["local"]
    return out


def split_scores(
    probs: Mapping[str, np.ndarray], y: np.ndarray, num_classes: int, combine_weight: float,
    selection_labels: np.ndarray | None = None,
) -> dict[str, float]:
    """Scores of one split's aligned rows from :func:`prediction_probs`: accuracy, log-loss (and AUC for two classes)
    of the combined prediction against the true labels ``y`` (``-1`` rows skipped); with both parts, the
    ``combine_weight`` used and each part's own ``joint_accuracy`` / ``local_accuracy``.

    ``selection_labels``: the labels the active party trains and calibrates on when they differ from ``y``
    (``defence.label_epsilon``: randomised response). What selects the best round (and so whether test rows travel)
    must see only those, so they get their own ``selection_accuracy`` (and ``selection_loss``, which breaks its ties);
    the true-label scores reach the server only.
    """
    metrics = classification_scores(probs["combined"], y, num_classes)
    if selection_labels is not None:
        noised = classification_scores(probs["combined"], selection_labels, num_classes)
        metrics["selection_accuracy"] = noised.get("accuracy", float("nan"))
        metrics["selection_loss"] = noised.get("loss", float("nan"))  # breaks ties of selection_accuracy
    if "joint" in probs and "local" in probs:
        metrics["combine_weight"] = combine_weight
    for name in ("joint", "local"):
        if name in probs and len(probs) > 2:
            metrics[f"{name}_accuracy"] = classification_scores(probs[name], y, num_classes)["accuracy"]
    return metrics


def active_only_rows(n_rows: int, aligned: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the labelled rows (``y >= 0``) among a split's ``n_rows`` that are not in ``aligned``: the users only
    the active party holds, which no passive can help predict, so only the active-only head scores them."""
    mask = np.ones(n_rows, dtype=bool)
    mask[aligned] = False
    return np.flatnonzero(mask & (y >= 0))


def top1_accuracy(probs: np.ndarray, y: np.ndarray) -> float | None:
    """Share of rows whose most probable class is ``y`` (every row labelled); ``None`` without rows, so a split
    with no such row reports nothing instead of NaN."""
    if not len(y):
        return None
    return float((probs.argmax(1) == y).mean())
