"""Custom loss terms (``method.extra_losses``): a user adds a term to the active party's loss without editing this
package.

Each entry is ``{_target_: dotted.path, weight: w, **kwargs}``. The target is imported when the active party is
built. A function is called as ``target(batch, **kwargs)`` at every supervised step; a class is instantiated once as
``target(**kwargs)`` and the instance called as ``instance(batch)``. Either returns a scalar tensor, added to the
loss times ``weight`` (default 1). ``batch`` is a :class:`LossBatch`. Gradients flow into whatever the term uses:
the active encoder, the top model, and the passives' embeddings (whose gradients are sent to the passives).
A term's own parameters, if it has any, are neither trained (they are not in the party's optimizer) nor saved:
terms are fixed functions of the batch. Without terms (the default) nothing is computed, so no number moves.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from flwr_vproto.targets import call_factory, target_factory


@dataclass(frozen=True)
class LossBatch:
    """What a custom loss term sees: one supervised step's batch of the active party's rows.

    ``features``: the shared active encoder's output ``f_A(x)``, ``(n, model.embedding_dim)``; ``logits``: the
    prediction this step trains, ``(n, num_classes)`` (the joint model's for vproto/vanilla, the active-only head's
    for local); ``labels``: ``(n,)`` class indices, ``-1`` where unknown; ``passive_embeddings``: per passive, its
    embeddings of these rows ``(n, d_k)`` (empty for local); ``round``: the round number (1-based).
    """

    features: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    passive_embeddings: tuple[torch.Tensor, ...]
    round: int


@dataclass(frozen=True)
class ExtraLoss:
    """One configured term: its name (the target's path), weight and the callable ``term(batch) -> Tensor``."""

    name: str
    weight: float
    term: Callable[[LossBatch], torch.Tensor]

    def __call__(self, batch: LossBatch) -> torch.Tensor:
        value = self.term(batch)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ValueError(f"method.extra_losses term {self.name} returned {type(value).__name__}"
                             f"{'' if not isinstance(value, torch.Tensor) else tuple(value.shape)}, expected a scalar "
                             f"tensor")
        return value.reshape(())


def load_extra_losses(specs: Sequence[Mapping[str, Any]], party: str) -> list[ExtraLoss]:
    """The terms of ``method.extra_losses`` (already shape-checked by ``config.validate``), imported and bound."""
    out = []
    for spec in specs:
        path = str(spec["_target_"])
        factory = target_factory(spec, "method.extra_losses", party, drop=("weight",))
        # A class is built once (its instance is the term); a function is the term, called with its bound kwargs.
        term = (call_factory(factory, path, "method.extra_losses", party) if inspect.isclass(factory.func)
                else factory)
        out.append(ExtraLoss(path, float(spec.get("weight", 1.0)), term))
    return out


def extra_loss_total(terms: Sequence[ExtraLoss], batch: LossBatch, sums: dict[str, float]) -> torch.Tensor | None:
    """Weighted sum of the terms on ``batch`` (``None`` without terms); adds each unweighted value to
    ``sums["extra_loss/<name>"]`` for the round's metrics."""
    total: torch.Tensor | None = None
    for t in terms:
        value = t(batch)
        key = f"extra_loss/{t.name}"
        sums[key] = sums.get(key, 0.0) + float(value.detach())
        total = t.weight * value if total is None else total + t.weight * value
    return total
