"""Self-supervised pre-training of a passive encoder on all its own training rows, before round 1 (no labels).

A passive party holds many more rows than PSI aligns, and none of them carry labels. Pre-training its encoder on all of
them lets the few aligned rows fine-tune features instead of learning them, and it is the only learning a passive does
when it receives few or no embedding gradients (label protection). ``method.research.passive_pretrain`` picks:

* :func:`denoising_autoencoder` (``dae``): reconstruct each row from a copy with 20 % of its features zeroed;
* :func:`contrastive` (``contrastive``): InfoNCE / NT-Xent between two random views of each row (SCARF feature
  corruption for tables, shifts / noise / cutout for image strips) through a projection head that is thrown away.

Both are pure functions of their arguments: every random draw (batches, corruptions) comes from ``gen``, and the
helper modules (decoder, projection head) are initialised by torch's global RNG, which the caller forks and seeds
(``PassiveParty._pretrain``), so a run repeats bit for bit in a fresh process. Both return the last epoch's mean
loss and train ``encoder`` in place with their own optimiser (the party's optimiser state is left untouched).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flwr_vproto.config import PRETRAIN_OPTIONS
from flwr_vproto.method.batching import index_batches, num_batches
from flwr_vproto.models import mlp

__all__ = ["PRETRAIN_OPTIONS", "contrastive", "denoising_autoencoder", "image_view", "nt_xent", "scarf_view"]

# Contrastive defaults (chosen on digits / adult seed 0 validation accuracy; benchmarks/bench_pretrain.py).
TEMPERATURE = 0.1
CORRUPTION = 0.6


def denoising_autoencoder(
    encoder: nn.Module, x: torch.Tensor, embedding_dim: int, hidden: list[int], epochs: int, batch_size: int,
    lr: float, gen: torch.Generator, device: torch.device,
) -> float:
    """Train ``encoder`` as the encoder of a denoising autoencoder on the rows ``x`` (flattened, on ``device``).

    Each batch zeroes a random 20 % of every row's features and asks an MLP decoder (the encoder's hidden widths
    mirrored) to rebuild the whole row (MSE): features that predict each other are what the embedding keeps. The
    decoder lives only here; returns the last epoch's mean reconstruction loss.
    """
    x = x.flatten(1)
    decoder = mlp([embedding_dim, *reversed(hidden), x.shape[1]]).to(device)
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=lr)
    encoder.train(True)
    last = 0.0
    for _ in range(epochs):
        total, batches = 0.0, index_batches(len(x), batch_size, num_batches(len(x), batch_size), gen)
        for b in batches:
            keep = (torch.rand(len(b), x.shape[1], generator=gen) > 0.2).to(device)
            loss = F.mse_loss(decoder(encoder(x[b] * keep)), x[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        last = total / max(len(batches), 1)
    return last


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR's InfoNCE): row ``i`` of ``z1`` must pick row ``i`` of ``z2`` (and vice versa) out of the
    ``2n - 1`` other projections of the batch, by cosine similarity over ``temperature``."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), -math.inf)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def scarf_view(x: torch.Tensor, pool: torch.Tensor, rate: float, gen: torch.Generator) -> torch.Tensor:
    """SCARF corruption: each feature of each row is, with probability ``rate``, replaced by the same feature of a
    random row of ``pool`` (a draw from that feature's empirical marginal), so a view stays in the data's range
    and its unchanged features are what identify the row."""
    n, d = x.shape
    swap = (torch.rand(n, d, generator=gen) < rate).to(x.device)
    donors = torch.randint(len(pool), (n, d), generator=gen).to(x.device)
    drawn = torch.gather(pool, 0, donors)
    return torch.where(swap, drawn, x)


def image_view(x: torch.Tensor, shape: tuple[int, ...], gen: torch.Generator, noise: float = 0.1,
               cutout: float = 0.25) -> torch.Tensor:
    """A random view of flattened image rows of per-row ``shape`` ``(C, H, W)``: a shift of up to about an eighth
    of each side (at least one pixel, zero-padded), Gaussian noise of ``noise`` times the batch's pixel standard
    deviation, and (half of the rows) one zeroed rectangle of ``cutout`` of each side. Small strips (digits' 8x4)
    keep their content; the view changes what a pixel-exact encoder would latch onto."""
    c, h, w = shape
    n = x.shape[0]
    img = x.view(n, c, h, w)
    sh, sw = max(1, h // 8), max(1, w // 8)
    padded = F.pad(img, (sw, sw, sh, sh))
    dy = torch.randint(0, 2 * sh + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * sw + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)).to(x.device)  # (n, h)
    cols = (dx[:, None] + torch.arange(w)).to(x.device)  # (n, w)
    idx = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (n, c, h, w)
    out = out + noise * img.std() * torch.randn(n, c, h, w, generator=gen).to(x.device)
    ch, cw = max(1, round(h * cutout)), max(1, round(w * cutout))
    y0 = torch.randint(0, h - ch + 1, (n,), generator=gen)
    x0 = torch.randint(0, w - cw + 1, (n,), generator=gen)
    on = torch.rand(n, generator=gen) < 0.5
    ys, xs = torch.arange(h), torch.arange(w)
    hole = (((ys[None, :] >= y0[:, None]) & (ys[None, :] < y0[:, None] + ch))[:, :, None]
            & ((xs[None, :] >= x0[:, None]) & (xs[None, :] < x0[:, None] + cw))[:, None, :] & on[:, None, None])
    out = out.masked_fill(hole[:, None].to(x.device), 0.0)
    return out.reshape(n, -1)


def contrastive(
    encoder: nn.Module, x: torch.Tensor, embedding_dim: int, hidden: list[int], epochs: int, batch_size: int,
    lr: float, gen: torch.Generator, device: torch.device, input_shape: tuple[int, ...] | None = None,
    temperature: float = TEMPERATURE, corruption: float = CORRUPTION,
) -> float:
    """Train ``encoder`` contrastively on the rows ``x``: two random views of each row must find each other in the
    batch (:func:`nt_xent`) after a projection head (``embedding_dim -> widest hidden -> embedding_dim``, ReLU)
    that is discarded afterwards, so the embedding keeps what survives corruption instead of what the contrastive
    task alone needs.

    Rows of an image ``input_shape`` ``(C, H, W)`` with ``H, W >= 2`` get :func:`image_view`; other rows (tables)
    get :func:`scarf_view` with ``corruption`` (both views corrupted, donors from the whole of ``x``). Returns the
    last epoch's mean loss.
    """
    x = x.flatten(1)
    image_shape = (tuple(input_shape) if input_shape is not None and len(input_shape) == 3
                   and min(input_shape[1:]) >= 2 else None)
    width = max(hidden) if hidden else embedding_dim
    head = mlp([embedding_dim, width, embedding_dim]).to(device)
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=lr)
    encoder.train(True)

    def view(rows: torch.Tensor) -> torch.Tensor:
        if image_shape is not None:
            return image_view(rows, image_shape, gen)
        return scarf_view(rows, x, corruption, gen)

    last = 0.0
    for _ in range(epochs):
        total, batches = 0.0, index_batches(len(x), batch_size, num_batches(len(x), batch_size), gen)
        used = 0
        for b in batches:
            if len(b) < 2:  # a lone row has no negatives
                continue
            rows = x[b.to(device)]
            loss = nt_xent(head(encoder(view(rows))), head(encoder(view(rows))), temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, used = total + float(loss.detach()), used + 1
        last = total / max(used, 1)
    return last
