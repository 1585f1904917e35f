"""How a prediction is scored: the numbers every method, round and split report."""

from __future__ import annotations

import numpy as np


def classification_scores(probs: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy, log-loss and (binary tasks) AUC of ``probs`` on the rows with a known label (``y >= 0``).

    Rows without a label (``-1``) are skipped rather than counted wrong: a party may not know every label.
    Returns ``{}`` when no row is labelled.
    """
    keep = y >= 0
    probs, y = probs[keep], y[keep]
    if y.size == 0:
        return {}
    out = {
        "accuracy": float((probs.argmax(1) == y).mean()),
        "loss": float(-np.log(np.clip(probs[np.arange(y.size), y], 1e-12, None)).mean()),
    }
    if num_classes == 2 and np.unique(y).size == 2:
        from sklearn.metrics import roc_auc_score  # here, not at import: a ClientApp process starts per message

        out["auc"] = float(roc_auc_score(y, probs[:, 1]))
    return out
