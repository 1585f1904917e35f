"""The joint model's logits: top model, residual on the active-only head, and the passives' prototype classifiers.

Keys read (:class:`JointLogits`): ``method.research.joint_residual``, ``method.research.prototype_logits``,
``method.research.joint_trains_active_encoder``, plus the :class:`~flwr_vproto.method.losses.PrototypeGeometry` keys for
the prototype classifiers. The modules (top model, heads, learned weights) stay with the active party and come in as
arguments, so this module holds no parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from flwr_vproto import prototypes
from flwr_vproto.method.losses import PrototypeGeometry


@dataclass(frozen=True)
class JointLogits:
    """Which terms the joint logits have in this run.

    ``residual``: the top model learns a correction on the active-only head's logits (``joint_residual``, when the
    run has a head); ``prototype_logits``: each passive's nearest-second-prototype classifier joins as a product of
    experts (vproto only); ``detach_active``: the supervised loss does not train the shared active encoder
    (``joint_trains_active_encoder`` off while a head trains it on all labelled rows).
    """

    residual: bool
    prototype_logits: bool
    detach_active: bool
    geometry: PrototypeGeometry

    @classmethod
    def from_method(cls, m: Any, *, has_local_head: bool, joint: bool) -> JointLogits:
        return cls(residual=has_local_head and joint and m.research.joint_residual,
                   prototype_logits=m.name == "vproto" and m.research.prototype_logits,
                   detach_active=has_local_head and not m.research.joint_trains_active_encoder,
                   geometry=PrototypeGeometry.from_method(m))


def prototype_log_probs(
    z: torch.Tensor, protos: torch.Tensor, mask: torch.Tensor, geometry: PrototypeGeometry
) -> torch.Tensor:
    """Log-probabilities of the nearest-prototype classifier (softmax over ``-distance / tau``) for one passive.

    A class without a prototype gets the mean of the others' scores: no vote rather than a veto, so a class missing
    from the aligned rows is not ruled out by every passive's classifier.
    """
    t = -prototypes.distances(geometry.normalized(z), protos, geometry.distance) / geometry.tau
    fill = (t * mask).sum(1, keepdim=True) / mask.sum()
    t = torch.where(mask.unsqueeze(0), t, fill)
    return torch.log_softmax(t, dim=1)


def joint_logits(
    part: JointLogits,
    top: torch.nn.Module,
    h: torch.Tensor,
    zs: Sequence[torch.Tensor],
    *,
    joint_features: torch.Tensor | None = None,
    residual_logits: Callable[[torch.Tensor], torch.Tensor] | None = None,
    residual_weight: torch.Tensor | float = 1.0,
    second: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    prototype_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits of the joint model for a batch.

    ``h``: the shared active encoder's output; ``joint_features``: the joint encoder's
    (``method.research.joint_encoder``), which then feeds the top model in place of ``h``; ``zs``: the passives'
    embeddings. ``residual_logits`` maps ``h`` to the active-only logits the residual builds on (the live head, or the
    frozen best-validation base); its logits are detached, so the head learns only from its own loss. ``second``: per
    passive, its second prototypes and mask; ``prototype_weights``: one learned weight per passive for its classifier.
    """
    if part.detach_active:
        h = h.detach()
    logits = top(torch.cat([h if joint_features is None else joint_features, *zs], dim=1))
    if part.residual:
        if residual_logits is None:
            raise ValueError("joint_residual needs the active-only logits (residual_logits)")
        logits = logits + residual_weight * residual_logits(h).detach()
    if part.prototype_logits and second is not None:
        if prototype_weights is None:
            raise ValueError("prototype_logits needs one weight per passive (prototype_weights)")
        for k, (z, (pk, mask)) in enumerate(zip(zs, second, strict=True)):
            if not bool(mask.any()):
                continue
            logits = logits + prototype_weights[k] * prototype_log_probs(z, pk, mask, part.geometry)
    return logits


def average_of(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax is the mean of ``softmax(first)`` and ``softmax(second)``: two joint models (the network
    and the joint trees, ``method.research.joint_trees``) averaged as probabilities, so calibration, scores and
    prediction, which read logits, see the average without knowing it is one."""
    both = torch.stack([torch.log_softmax(first, dim=1), torch.log_softmax(second, dim=1)])
    return torch.logsumexp(both, dim=0) - math.log(2.0)
