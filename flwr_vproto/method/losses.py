"""The loss terms of one round (design §3), each a small pure function with the settings it reads.

Every part reads only its own ``method.*`` keys, gathered by its settings class's ``from_method``; the party classes
(:mod:`flwr_vproto.parties`) only orchestrate: which rows, which batches, which modules. The weighting by
``lambda_*`` stays with the caller, so every function returns the unweighted term the metrics report.

* supervised joint loss (aligned rows): :func:`supervised_joint_loss`;
* first prototype loss (active party, non-aligned rows): :class:`FirstLoss`, :func:`first_prototype_loss`;
* active-only head (local loss, all the active party's labelled rows): :func:`local_head_loss`;
* third loss (passive party, non-aligned rows) and its pseudo-labelling: :class:`ThirdLoss`,
  :func:`passive_pseudo_targets`, :func:`third_prototype_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from flwr_vproto import prototypes


@dataclass(frozen=True)
class PrototypeGeometry:
    """How embeddings are compared with prototypes. Keys: ``method.research.distance``,
    ``method.research.normalize``, ``method.tau``.

    Shared by the first and third losses, the pseudo-labels and the prototype logits, so the active party and every
    passive measure "near a prototype" the same way.
    """

    distance: str = "sqeuclidean"
    normalize: bool = True
    tau: float = 0.1

    @classmethod
    def from_method(cls, m: Any) -> PrototypeGeometry:
        r = m.research
        return cls(distance=r.distance, normalize=r.normalize, tau=m.tau)

    def normalized(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` as prototype math sees it (L2-normalised rows unless ``normalize`` is off)."""
        return prototypes.maybe_normalize(z, self.normalize)

    def loss(self, z: torch.Tensor, labels: torch.Tensor, protos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The prototype loss on already-normalised ``z`` (rows labelled ``-1`` skipped)."""
        return prototypes.prototype_loss(z, labels, protos, mask, kind=self.distance, tau=self.tau)

    def pseudo_labels(
        self, z: torch.Tensor, protos: torch.Tensor, mask: torch.Tensor, threshold: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest-prototype labels of already-normalised ``z`` and whether each is above ``threshold``."""
        return prototypes.pseudo_labels(z, protos, mask, self.distance, self.tau, threshold)


# ------------------------------------------------------------------------------------------- supervised joint loss
def supervised_joint_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the joint model on a batch of aligned rows; rows of unknown label (``-1``) are ignored.

    This is the only term that sees the passives' embeddings with labels, hence the only source of the embedding
    gradients sent back to them. Reads no ``method.*`` key.
    """
    return F.cross_entropy(logits, labels, ignore_index=-1)


# ------------------------------------------------------------------------------------------- first prototype loss
@dataclass(frozen=True)
class FirstLoss:
    """The first loss: the active encoder pulled to its own (first) prototypes on the non-aligned rows.
    Keys: ``method.lambda_active`` (``weight``), ``method.confidence_threshold`` (pseudo-label floor), and the
    :class:`PrototypeGeometry` keys."""

    weight: float
    threshold: float
    geometry: PrototypeGeometry

    @classmethod
    def from_method(cls, m: Any) -> FirstLoss:
        return cls(weight=m.lambda_active, threshold=m.confidence_threshold,
                   geometry=PrototypeGeometry.from_method(m))


@dataclass
class PseudoTally:
    """How many rows needed a pseudo-label and how many got a confident one (for the coverage metrics)."""

    seen: int = 0
    kept: int = 0


def first_prototype_loss(
    h: torch.Tensor, labels: torch.Tensor, protos: torch.Tensor, mask: torch.Tensor, part: FirstLoss,
    tally: PseudoTally | None = None,
) -> torch.Tensor:
    """First loss on a batch of the active party's non-aligned rows (``h``: its encoder's output, ``labels``).

    A row keeps its own label when the active party knows it (``>= 0``); an unlabelled row takes its nearest first
    prototype's class if confident above ``part.threshold``, else it is skipped. This is how rows no other party
    holds still shape the active encoder. The pseudo-labels are computed without gradient (targets, not outputs).
    """
    g = part.geometry
    hn = g.normalized(h)
    lab = labels.clone()
    unknown = lab < 0
    if bool(unknown.any()):
        with torch.no_grad():
            pl, keep = g.pseudo_labels(hn[unknown], protos, mask, part.threshold)
        lab[unknown] = torch.where(keep, pl, torch.full_like(pl, -1))
        if tally is not None:
            tally.seen += int(unknown.sum())
            tally.kept += int(keep.sum())
    return g.loss(hn, lab, protos, mask)


# ------------------------------------------------------------------------------------------- active-only head
def local_head_loss(
    head: torch.nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor | None:
    """Cross-entropy of the active-only head ``h`` on the active encoder outputs of this step's labelled rows.

    ``batches`` are ``(features, labels)`` pairs (the aligned batch and the non-aligned batch), concatenated so the
    head sees one batch; ``None`` when no row is labelled. The head learns from every labelled row the active party
    holds, which is what keeps the method at least as good as the active party alone. Reads no ``method.*`` key.
    """
    if not batches:
        return None
    features = torch.cat([f for f, _ in batches])
    labels = torch.cat([y for _, y in batches])
    if not bool((labels >= 0).any()):
        return None
    return F.cross_entropy(head(features), labels, ignore_index=-1)


# ------------------------------------------------------------------------------------------- third loss (passive)
@dataclass(frozen=True)
class ThirdLoss:
    """The third loss: a passive encoder pulled to the second prototypes on its non-aligned rows, by pseudo-label.
    Keys: ``method.lambda_passive`` (``weight``), ``method.confidence_threshold`` (the threshold when the active
    party sends no gate), ``method.research.pseudo_label_once`` (``label_once``), ``method.warmup_rounds``, and the
    :class:`PrototypeGeometry` keys."""

    weight: float
    threshold: float
    label_once: bool
    warmup_rounds: int
    geometry: PrototypeGeometry

    @classmethod
    def from_method(cls, m: Any) -> ThirdLoss:
        return cls(weight=m.lambda_passive, threshold=m.confidence_threshold, label_once=m.research.pseudo_label_once,
                   warmup_rounds=m.warmup_rounds, geometry=PrototypeGeometry.from_method(m))

    def active(self, rnd: int, prototype_mask: Any) -> bool:
        """Whether round ``rnd`` trains with this loss: past warm-up, weight > 0 and at least one prototype."""
        return rnd > self.warmup_rounds and self.weight > 0 and prototype_mask is not None and bool(
            np.any(prototype_mask))


def passive_pseudo_targets(
    z: torch.Tensor, protos: torch.Tensor, mask: torch.Tensor, geometry: PrototypeGeometry, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A passive's pseudo-labels of its own rows (``z`` already normalised): nearest second prototype, ``-1`` where
    the confidence is not above ``threshold``. Returns ``(targets, keep)``; no gradient flows through them.

    The passive has no labels at all, so these are the only targets its non-aligned rows get.
    """
    with torch.no_grad():
        lab, keep = geometry.pseudo_labels(z, protos, mask, threshold)
    return torch.where(keep, lab, torch.full_like(lab, -1)), keep


def third_prototype_loss(
    z: torch.Tensor, targets: torch.Tensor, protos: torch.Tensor, mask: torch.Tensor, part: ThirdLoss
) -> torch.Tensor:
    """Third loss on a batch of a passive's non-aligned rows (``z`` normalised, ``targets`` from
    :func:`passive_pseudo_targets`; ``-1`` rows skipped)."""
    return part.geometry.loss(z, targets, protos, mask)


class ThirdLossRound:
    """One round of a passive's third loss: its non-aligned rows, their batches, and the running tallies.

    With ``label_once`` every row is pseudo-labelled once, with the round-start encoder (the one the active party's
    gate scored), so the loss cannot inflate its own labels' confidence mid-round; else each batch is labelled afresh.
    ``truth`` (simulation only: the true labels the passive never sees) feeds the ``pseudo_accuracy`` diagnostic.
    """

    def __init__(
        self, part: ThirdLoss, rows: torch.Tensor, batches: list[torch.Tensor], protos: torch.Tensor,
        mask: torch.Tensor, threshold: float, truth: torch.Tensor | None = None,
    ) -> None:
        self.part, self.rows, self.batches = part, rows, batches
        self.protos, self.mask, self.threshold, self.truth = protos, mask, threshold, truth
        self.fixed: tuple[torch.Tensor, torch.Tensor] | None = None
        self.loss_sum, self.seen, self.kept, self.known, self.correct = 0.0, 0, 0, 0, 0

    def label_all(self, z: torch.Tensor) -> None:
        """``label_once``: pseudo-label every row now from ``z``, the encoder's (no-grad) output on all rows."""
        self.fixed = passive_pseudo_targets(self.part.geometry.normalized(z), self.protos, self.mask,
                                            self.part.geometry, self.threshold)

    def step(self, i: int, encoder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The unweighted third loss of batch ``i`` (``x``: all the passive's training rows); updates the tallies."""
        rows = self.rows[self.batches[i]]
        z = self.part.geometry.normalized(encoder(x[rows]))
        if self.fixed is not None:
            lab, keep = self.fixed[0][self.batches[i]], self.fixed[1][self.batches[i]]
        else:
            lab, keep = passive_pseudo_targets(z, self.protos, self.mask, self.part.geometry, self.threshold)
        loss = third_prototype_loss(z, lab, self.protos, self.mask, self.part)
        self.loss_sum += float(loss.detach())
        self.seen += len(rows)
        self.kept += int(keep.sum())
        if self.truth is not None:
            t = self.truth[rows]
            ok = keep & (t >= 0)
            self.known += int(ok.sum())
            self.correct += int((lab[ok] == t[ok]).sum())
        return loss

    def metrics(self, steps: int) -> dict[str, float]:
        """``third_loss`` (mean per step), ``pseudo_coverage`` and, with known truth, ``pseudo_accuracy``."""
        if not self.seen:
            return {}
        out = {"third_loss": self.loss_sum / steps, "pseudo_coverage": self.kept / self.seen}
        if self.known:
            out["pseudo_accuracy"] = self.correct / self.known
        return out


# ------------------------------------------------------------------------------------------------ received gradients
def gradient_loss(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``<f(x), dL/dz>`` over a batch: its gradient through the encoder is the chain rule the active party could
    not finish (one pass over a received gradient message)."""
    return (z * g).sum()


def proximal_scale(z0: torch.Tensor, g: torch.Tensor, reach: float) -> float:
    """``eta`` of :func:`proximal_gradient_loss`: the step along ``-g`` whose mean length is ``reach`` times the
    embeddings' mean norm, so the target is as far from the sent embeddings whatever the gradients' scale."""
    gn = float(g.norm(dim=1).mean())
    return reach * float(z0.norm(dim=1).mean()) / gn if gn > 0 else 0.0


def proximal_gradient_loss(z: torch.Tensor, g: torch.Tensor, z0: torch.Tensor, eta: float) -> torch.Tensor:
    """The linearised loss plus a proximal term, ``<z - z0, g> + |z - z0|^2 / (2 eta)``, summed over a batch.

    ``z0`` are the embeddings the gradients ``g`` were computed at (what the passive sent). At ``z = z0`` its
    gradient is ``g``, so the first step is :func:`gradient_loss`'s; its minimum is ``z0 - eta g``, so many passes
    over one message move the embeddings toward that target instead of overshooting (as repeating
    :func:`gradient_loss` does). Proximal gradient reuse in the spirit of FedBCD / CELU-VFL's local updates.
    """
    d = z - z0
    if eta <= 0:
        return (d * g).sum()
    return (d * g).sum() + (d * d).sum() / (2.0 * eta)
