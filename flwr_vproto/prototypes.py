"""Prototype math (design §3): class means, EMA, pseudo-labels and the prototype losses. Plain PyTorch.

A *prototype* is the mean embedding of one class over the aligned rows. Classes absent from the aligned rows have no
prototype; every function here carries a boolean ``mask`` of present classes so that such classes are skipped rather
than producing NaNs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def maybe_normalize(z: torch.Tensor, normalize: bool) -> torch.Tensor:
    """L2-normalise rows when prototypes live on the unit sphere (the default)."""
    return F.normalize(z, dim=1) if normalize else z


def class_means(z: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean of the rows of ``z`` (vectorised: one scatter, no loop over rows).

    Returns ``(means, mask)``: ``means`` is ``(num_classes, d)`` with zeros for absent classes, ``mask`` marks the
    classes that had at least one row. Rows labelled ``-1`` (unknown) are ignored.
    """
    keep = labels >= 0
    z, labels = z[keep], labels[keep]
    sums = torch.zeros(num_classes, z.shape[1], dtype=z.dtype, device=z.device)
    sums.index_add_(0, labels, z)
    counts = torch.bincount(labels, minlength=num_classes).to(z.dtype)
    mask = counts > 0
    means = sums / counts.clamp(min=1).unsqueeze(1)
    return means, mask


def ema_update(
    old: torch.Tensor | None, old_mask: torch.Tensor | None, new: torch.Tensor, new_mask: torch.Tensor, momentum: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exponential moving average of prototypes across rounds: ``momentum * old + (1 - momentum) * new``.

    A class seen for the first time takes its new value; a class absent this round keeps its old value.
    """
    if old is None or old_mask is None or momentum == 0.0:
        return new.clone(), new_mask.clone()
    both = old_mask & new_mask
    out = torch.where(new_mask.unsqueeze(1), new, old)
    out[both] = momentum * old[both] + (1.0 - momentum) * new[both]
    return out, old_mask | new_mask


def distances(z: torch.Tensor, protos: torch.Tensor, kind: str) -> torch.Tensor:
    """Distance of every row of ``z`` to every prototype, ``(n, C)``: ``sqeuclidean`` or ``cosine`` (1 - cos)."""
    if kind == "sqeuclidean":
        return (z.unsqueeze(1) - protos.unsqueeze(0)).pow(2).sum(-1)
    if kind == "cosine":
        return 1.0 - F.normalize(z, dim=1) @ F.normalize(protos, dim=1).T
    raise ValueError(f"unknown distance {kind!r}; expected 'sqeuclidean' or 'cosine'")


def _masked_logits(z: torch.Tensor, protos: torch.Tensor, mask: torch.Tensor, kind: str, tau: float) -> torch.Tensor:
    """Negative distances over temperature, with absent classes at -inf so softmax gives them zero mass."""
    logits = -distances(z, protos, kind) / tau
    return logits.masked_fill(~mask.unsqueeze(0), float("-inf"))


def pseudo_labels(
    z: torch.Tensor, protos: torch.Tensor, mask: torch.Tensor, kind: str, tau: float, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-prototype labels and whether each is confident enough to train on.

    Confidence is the softmax over negative distances with temperature ``tau``; a row is kept when its top
    probability exceeds ``threshold``. Returns ``(labels, keep)``; with no prototype at all nothing is kept.
    """
    if not bool(mask.any()):
        return torch.full((z.shape[0],), -1, dtype=torch.long, device=z.device), torch.zeros(
            z.shape[0], dtype=torch.bool, device=z.device
        )
    probs = torch.softmax(_masked_logits(z, protos, mask, kind, tau), dim=1)
    conf, labels = probs.max(dim=1)
    return labels, conf > threshold


def prototype_loss(
    z: torch.Tensor, labels: torch.Tensor, protos: torch.Tensor, mask: torch.Tensor, *, kind: str, tau: float
) -> torch.Tensor:
    """Mean prototype loss over rows whose class has a prototype (others skipped; no rows -> 0, never NaN).

    Cross-entropy over negative distances to all present prototypes: it pulls a row to its class prototype and
    pushes it away from the others'. The literal pull-only loss of the method's description measured worse on adult
    and Fashion-MNIST (BENCHMARKS.md §2) and was removed.
    """
    valid = labels >= 0
    valid[valid.clone()] = mask[labels[valid]]
    if not bool(valid.any()):
        return z.sum() * 0.0
    z, labels = z[valid], labels[valid]
    return F.cross_entropy(_masked_logits(z, protos, mask, kind, tau), labels)


def gate_threshold(
    z: torch.Tensor, labels: torch.Tensor, protos: torch.Tensor, mask: torch.Tensor, *, kind: str, tau: float,
    target: float, min_kept: int = 10,
) -> float:
    """Confidence threshold at which the nearest-prototype pseudo-labels reach precision ``target`` on labelled rows.

    The active party scores each passive's nearest-second-prototype classifier on rows whose labels it knows
    (``z``: that passive's embeddings of them, ``labels`` their classes, ``-1`` ignored), ranks the rows by
    confidence, and returns the lowest threshold whose kept rows (confidence strictly above it, at least
    ``min_kept`` of them) are right at least ``target`` of the time: the most coverage the precision bar allows.
    Returns ``1.0`` (keep nothing: softmax confidence never exceeds 1) when no threshold reaches the bar, and ``0.0``
    when every row may be kept. Only this one number leaves the active party; the labels stay with it.
    """
    keep = labels >= 0
    z, labels = z[keep], labels[keep]
    n = z.shape[0]
    if n == 0 or not bool(mask.any()):
        return 1.0
    probs = torch.softmax(_masked_logits(z, protos, mask, kind, tau), dim=1)
    conf, pred = probs.max(dim=1)
    conf, order = torch.sort(conf, descending=True)
    correct = (pred[order] == labels[order]).to(torch.float64)
    kept = torch.arange(1, n + 1, dtype=torch.float64, device=z.device)
    precision = correct.cumsum(0) / kept
    # A cut after the k-th row is realisable by a threshold only where the next row's confidence is strictly lower.
    distinct = torch.ones(n, dtype=torch.bool, device=z.device)
    distinct[:-1] = conf[:-1] > conf[1:]
    ok = distinct & (precision >= target) & (kept >= min(min_kept, n))
    if not bool(ok.any()):
        return 1.0
    k = int(torch.nonzero(ok).flatten().max())  # index of the last kept row
    return 0.0 if k == n - 1 else float(conf[k + 1])
