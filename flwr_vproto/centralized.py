"""The ``centralized`` upper bound: every party's features of every training user, with all labels, in one model.

It needs every party's raw data in one place, so it exists only in simulation (the in-process engine). It uses the
same encoders (one per party's feature block), top model, batching and seeds as the federated methods.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from flwr_vproto.config import Config
from flwr_vproto.data.types import VerticalDataset
from flwr_vproto.method.batching import index_batches, num_batches, round_seed
from flwr_vproto.method.scores import classification_scores
from flwr_vproto.models import make_encoder, make_top_model, resolve_device
from flwr_vproto.results import round_record

RoundCallback = Callable[[dict[str, float]], None]


class CentralizedModel(torch.nn.Module):
    """The same encoders as the federated methods, one per party's feature block, and the same top model."""

    def __init__(self, input_shapes: list[tuple[int, ...]], num_classes: int, cfg: Config) -> None:
        super().__init__()
        self.sizes = [int(np.prod(s)) for s in input_shapes]
        self.encoders = torch.nn.ModuleList(make_encoder(s, cfg.model, "centralized") for s in input_shapes)
        self.top = make_top_model(cfg.model.embedding_dim * len(input_shapes), num_classes, cfg.model, "centralized")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.sizes, dim=1)
        return self.top(torch.cat([enc(p) for enc, p in zip(self.encoders, parts, strict=False)], dim=1))


def _evaluated(cfg: Config, rnd: int) -> bool:
    """Same schedule as the federated engines: every ``eval_every`` rounds and after the last round."""
    return rnd % cfg.eval_every == 0 or rnd == cfg.num_rounds


def run_centralized(
    cfg: Config, ds: VerticalDataset, on_round: RoundCallback | None = None
) -> list[dict[str, float]]:
    """Train the upper bound, one epoch per round; return the round history (``round_record`` per round)."""
    if ds.central is None:
        raise ValueError("method 'centralized' needs a simulated dataset (every party's raw data in one place)")
    c = ds.central
    device = resolve_device(cfg.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(round_seed(cfg.seed, 0, 0))
        model = CentralizedModel(c.input_shapes, ds.num_classes, cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.method.lr, weight_decay=cfg.method.weight_decay)
    x = {s: torch.as_tensor(v, dtype=torch.float32, device=device) for s, v in c.x.items()}
    y = {s: torch.as_tensor(v, dtype=torch.long, device=device) for s, v in c.y.items()}
    history = []
    for rnd in range(1, cfg.num_rounds + 1):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(round_seed(cfg.seed, 0, rnd))
        n = x["train"].shape[0]
        steps = num_batches(n, cfg.method.batch_size)
        model.train()
        total = 0.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(round_seed(cfg.seed, 0, rnd) + 1)
            for b in index_batches(n, cfg.method.batch_size, steps, gen):
                loss = F.cross_entropy(model(x["train"][b]), y["train"][b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
        scores: dict[str, dict[str, float]] = {}
        if _evaluated(cfg, rnd):
            model.eval()
            with torch.no_grad():
                for s in ("val", "test"):
                    probs = torch.softmax(model(x[s]), 1).cpu().numpy()
                    scores[s] = classification_scores(probs, c.y[s], ds.num_classes)
        rec = round_record(rnd, {"sup_loss": total / max(steps, 1), "steps": float(steps)}, [],
                           scores.get("val"), scores.get("test"), time.perf_counter() - t0)
        history.append(rec)
        if on_round:
            on_round(rec)
    return history
