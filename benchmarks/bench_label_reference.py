"""What the labels vproto may learn from are worth: centralized references trained on exactly those rows.

vproto learns from the aligned users (every party's features and the active party's labels) and from the active
party's labelled non-aligned users (the active party's features only); the passive parties' non-aligned users have
features and no labels. This script trains, in one place and with the same data encodings, encoders, top model,
optimiser, batch size and number of rounds (epochs) as the ``centralized`` method, two references:

- ``ref_aligned``: the aligned users only, with every party's features: what ``vanilla`` learns from, without the
  split and the round-delayed passive gradients;
- ``ref_labelled``: the aligned users plus the active party's labelled non-aligned users, whose passive features are
  missing: each passive encoder's output is zeroed there and a flag input tells the top model which parties a row
  has (the usual missing-indicator model).

``ref_labelled`` is a yardstick, not a bound: it sees every label vproto sees, with no federated constraint, but it
does not use the passives' unlabelled rows (vproto pre-trains the passive encoders on them). Where ``ref_labelled``
is barely above ``ref_aligned``, the extra labels add little, and no method that gets its gain from them can beat
``vanilla`` by much. Like every method in ``bench_methods.py``, each run is reported at its best validation round
(validation users are held by every party). It joins the parties' rows by user ID in one process, which only a
simulation may do.

    python benchmarks/bench_label_reference.py --datasets adult --fractions 0.01 0.02 0.05 0.1 \
        --seeds 0 1 2 3 4 5 6 7 8 9 --out benchmarks/label_reference.jsonl

Results are appended as JSON lines to ``--out`` (runs already there are skipped); the summary table puts them next
to ``vanilla`` and ``vproto`` from ``--methods-file`` (same cells and seeds only).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jsonl_runs import KEY_FIELDS, run_pending
from sklearn.metrics import roc_auc_score
from torch import nn

from flwr_vproto.config import Config, ModelConfig, config_from_dict
from flwr_vproto.data import load_vertical_dataset
from flwr_vproto.data.types import VerticalDataset
from flwr_vproto.models import make_encoder, make_top_model
from flwr_vproto.report import Run, markdown_table

REFERENCES = ("ref_aligned", "ref_labelled")


class MissingPartyModel(nn.Module):
    """One encoder per party and the top model; passive blocks a row lacks are zeroed and flagged to the top model."""

    def __init__(self, input_shapes: list[tuple[int, ...]], num_classes: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(make_encoder(s, cfg) for s in input_shapes)
        passives = len(input_shapes) - 1
        self.top = make_top_model(cfg.embedding_dim * len(input_shapes) + passives, num_classes, cfg)

    def forward(self, xs: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """``xs``: one block per party, active first; ``present[:, k]``: 1 where the row has passive ``k + 1``."""
        hs = [enc(x) for enc, x in zip(self.encoders, xs, strict=True)]
        passive = [h * present[:, k : k + 1] for k, h in enumerate(hs[1:])]
        return self.top(torch.cat([hs[0], *passive, present], dim=1))


def joined_rows(ds: VerticalDataset, split: str, aligned_only: bool) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The active party's labelled rows of ``split`` joined by user ID with each passive's rows.

    Returns one feature block per party (zeros where a passive lacks the user), the presence flags and the labels.
    Val and test rows are held by every party by construction; ``aligned_only`` keeps only such rows for training.
    """
    act = ds.active.split(split)
    keep = act.y >= 0
    ids, blocks = act.ids[keep], [act.x[keep]]
    present = np.ones((len(ids), len(ds.passives)), dtype=np.float32)
    for k, party in enumerate(ds.passives):
        data = party.split(split)
        where = {uid: i for i, uid in enumerate(data.ids)}
        idx = np.array([where.get(uid, -1) for uid in ids])
        present[:, k] = idx >= 0
        block = np.zeros((len(ids), *data.x.shape[1:]), dtype=np.float32)
        block[idx >= 0] = data.x[idx[idx >= 0]]
        blocks.append(block)
    rows = present.all(axis=1) if aligned_only or split != "train" else np.ones(len(ids), dtype=bool)
    return [b[rows] for b in blocks], present[rows], act.y[keep][rows]


def train_reference(cfg: Config, ds: VerticalDataset, aligned_only: bool) -> dict[str, float]:
    """Train for ``cfg.num_rounds`` epochs; test accuracy (and AUC for two classes) at the best validation epoch."""
    data = {s: joined_rows(ds, s, aligned_only) for s in ("train", "val", "test")}
    t = {s: ([torch.as_tensor(b) for b in xs], torch.as_tensor(p), torch.as_tensor(y))
         for s, (xs, p, y) in data.items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = MissingPartyModel([p.input_shape for p in ds.parties], ds.num_classes, cfg.model)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.method.lr, weight_decay=cfg.method.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        xs, present, y = t["train"]
        best: dict[str, float] = {"val_accuracy": -1.0}
        for epoch in range(1, cfg.num_rounds + 1):
            model.train()
            for b in torch.randperm(len(y), generator=gen).split(cfg.method.batch_size):
                loss = F.cross_entropy(model([x[b] for x in xs], present[b]), y[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                probs = {s: torch.softmax(model(t[s][0], t[s][1]), dim=1).numpy() for s in ("val", "test")}
            val_acc = float((probs["val"].argmax(1) == data["val"][2]).mean())
            if val_acc > best["val_accuracy"]:
                best = {"val_accuracy": val_acc, "best_round": float(epoch),
                        "accuracy": float((probs["test"].argmax(1) == data["test"][2]).mean())}
                if ds.num_classes == 2:
                    best["auc"] = float(roc_auc_score(data["test"][2], probs["test"][:, 1]))
    best["train_rows"] = float(len(y))
    return best


def run_one(job: dict) -> dict:
    """One reference run in a worker process (one torch thread: the workers share the cores)."""
    torch.set_num_threads(1)
    cfg = config_from_dict({
        "engine": "inprocess", "seed": job["seed"], "num_rounds": job["rounds"],
        "dataset": {"name": job["dataset"], "aligned_fraction": job["fraction"]}, "method": {"name": "centralized"},
    })
    t0 = time.perf_counter()
    final = train_reference(cfg, load_vertical_dataset(cfg), aligned_only=job["tag"] == "ref_aligned")
    return {**job, "final": final, "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["adult"])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.02, 0.05, 0.1])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=20, help="epochs; bench_methods.py's runs use 20 (40 on digits)")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--out", default="benchmarks/label_reference.jsonl")
    ap.add_argument("--methods-file", default="benchmarks/methods.jsonl",
                    help="bench_methods.py's records, for the vanilla and vproto columns of the summary")
    args = ap.parse_args()

    jobs = [{"tag": tag, "dataset": ds, "fraction": frac, "seed": seed, "rounds": args.rounds}
            for ds in args.datasets for frac in args.fractions for seed in args.seeds for tag in REFERENCES]
    refs = run_pending(Path(args.out), jobs, run_one, args.workers, fields=(*KEY_FIELDS, "rounds"))
    print(summarise(refs, Path(args.methods_file)))


def summarise(refs: list[dict], methods_file: Path) -> str:
    """Markdown: the references next to vanilla and vproto, on the cells and seeds the references ran."""
    cells = {(r["dataset"], r["fraction"], r["seed"]) for r in refs}
    methods = [json.loads(line) for line in methods_file.read_text().splitlines()] if methods_file.exists() else []
    keep = [r for r in methods
            if r["tag"] in ("vanilla", "vproto") and (r["dataset"], r["fraction"], r["seed"]) in cells]
    return markdown_table([Run(r["tag"], r["dataset"], r["fraction"], r["seed"], r["final"]) for r in keep + refs])


if __name__ == "__main__":
    main()
