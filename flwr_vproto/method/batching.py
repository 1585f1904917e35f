"""Round seeds and index batches: the randomness every party and the centralized baseline draw the same way.

A round's result depends only on ``(seed, party, round)``, so it is the same whether the round runs in this process
or in a fresh Flower ClientApp process (design §4).
"""

from __future__ import annotations

import math

import torch


def round_seed(seed: int, party: int, rnd: int) -> int:
    """A distinct, reproducible seed for every (run seed, party, round)."""
    return (seed * 1_000_003 + party * 10_007 + rnd * 101 + 17) % (2**63 - 1)


def num_batches(n: int, batch_size: int) -> int:
    """Batches in one pass over ``n`` rows (0 for no rows)."""
    return math.ceil(n / batch_size) if n > 0 else 0


def index_batches(n: int, batch_size: int, steps: int, gen: torch.Generator) -> list[torch.Tensor]:
    """``steps`` index batches over ``n`` rows, reshuffling each time the rows are exhausted (cycling).

    Cycling lets a round take as many steps as its largest set of rows needs while a smaller set (e.g. the few
    aligned rows) keeps contributing a batch to every step.
    """
    if n == 0:
        return [torch.empty(0, dtype=torch.long)] * steps
    out: list[torch.Tensor] = []
    perm = torch.randperm(n, generator=gen)
    pos = 0
    for _ in range(steps):
        if pos >= n:
            perm, pos = torch.randperm(n, generator=gen), 0
        out.append(perm[pos : pos + batch_size])
        pos += batch_size
    return out
