"""README "Extending": a custom encoder, a custom top model and a custom loss term, selected from the config.

    python run_simulation.py engine=inprocess \\
        'model.encoder_target={_target_: flwr_vproto.examples.extending.ResidualMLPEncoder, width: 128}' \\
        'method.extra_losses=[{_target_: flwr_vproto.examples.extending.confidence_penalty, weight: 0.1}]'

Any importable module works the same way (your own package, a file on ``PYTHONPATH``); every party's process must be
able to import it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from flwr_vproto.method.extra import LossBatch


class ResidualMLPEncoder(nn.Module):
    """An encoder: a linear stem and ``depth`` residual blocks of ``width`` units, projected to the embedding.

    The package calls it as ``ResidualMLPEncoder(input_shape=..., embedding_dim=..., **kwargs)``; rows arrive as
    flattened float32 ``(n, prod(input_shape))``.
    """

    def __init__(self, input_shape: tuple[int, ...], embedding_dim: int, width: int = 128, depth: int = 2) -> None:
        super().__init__()
        self.stem = nn.Linear(math.prod(input_shape), width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())
                                    for _ in range(depth))
        self.out = nn.Linear(width, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x.flatten(1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def small_top(in_features: int, num_classes: int, width: int = 32) -> nn.Module:
    """A top model factory: called as ``small_top(in_features=..., num_classes=..., **kwargs)``. Its last layer is
    an ``nn.Linear``, which ``method.research.joint_residual`` starts at zero."""
    return nn.Sequential(nn.Linear(in_features, width), nn.Tanh(), nn.Linear(width, num_classes))


def confidence_penalty(batch: LossBatch, floor: float | None = None) -> torch.Tensor:
    """A loss term: penalise over-confident predictions (low entropy of the softmax, Pereyra et al. 2017), which the
    joint model is prone to on the few aligned rows; with ``floor``, only entropy below ``floor`` nats.

    Called as ``confidence_penalty(batch, **kwargs)``; returns a scalar tensor, which the active party adds to its
    loss times the entry's ``weight``.
    """
    logp = torch.log_softmax(batch.logits, dim=1)
    entropy = -(logp.exp() * logp).sum(1)
    return -entropy.mean() if floor is None else torch.relu(floor - entropy).mean()
