"""What the active party can read of a passive's raw columns from the embeddings it receives (adult; BENCHMARKS §1).

The passive trains its encoder as the default does before round 1 (label-free pre-training; with the default label
protection that is all it ever learns) and embeds its aligned users. The active party holds those embeddings. Two
attacks on them, each scored on the aligned test users against the passive's raw encoded columns:

* ``known``: a ridge regression from the embedding to the raw columns, fitted on ``K`` aligned training users whose
  passive row the attacker knows from elsewhere (``K`` in ``--known``). It reports R² per numeric column, and for each
  categorical column the share of users whose category is the argmax of the predicted one-hots, next to the share
  of its most common category (what a guess without the embedding gets).
* ``blind``: no known row. The independent components the joint trees use (``trees.fit_unmixing``) are computed, and
  the best |Pearson r| of any component with each numeric column is reported. A heavy-tailed column such as
  capital-gain stands out by its shape alone.

One process, one thread. Appends a line per seed:

    python benchmarks/bench_feature_inference.py --seeds 0 1 --fraction 0.1 --out benchmarks/feature_inference.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from sklearn.linear_model import Ridge

from flwr_vproto import trees
from flwr_vproto.adult_columns import NUMERIC
from flwr_vproto.alignment import align_dataset
from flwr_vproto.config import config_from_dict
from flwr_vproto.data import load_vertical_dataset
from flwr_vproto.parties import PassiveParty


def _known_attack(z: dict, xp: dict, names: list[str], known: int, rng: np.random.Generator) -> dict:
    """Ridge from the embedding to the raw columns, fitted on ``known`` training users' true rows."""
    idx = rng.choice(len(z["train"]), known, replace=False)
    fit = Ridge(1.0).fit(z["train"][idx], xp["train"][idx])
    pred, true = fit.predict(z["test"]), xp["test"]
    out: dict = {}
    for j, name in enumerate(names):
        if "=" not in name and true[:, j].var() > 0:
            out[f"{name} R2"] = round(float(1 - ((pred[:, j] - true[:, j]) ** 2).mean() / true[:, j].var()), 4)
    for block in sorted({n.split("=", 1)[0] for n in names if "=" in n}):
        cols = [j for j, n in enumerate(names) if n.startswith(block + "=")]
        right = (pred[:, cols].argmax(1) == true[:, cols].argmax(1)).mean()
        majority = np.bincount(true[:, cols].argmax(1)).max() / len(true)
        out[f"{block} right"], out[f"{block} majority"] = round(float(right), 4), round(float(majority), 4)
    return out


def _blind_attack(z: dict, xp: dict, names: list[str], seed: int) -> dict:
    """The best |r| of any independent component (the joint trees' own, no label, no known row) with each numeric
    column."""
    unmixing = trees.fit_unmixing(z["train"], seed)
    if unmixing is None:
        return {}
    ics = trees.unmixed(z["test"], unmixing).astype(np.float64)
    out = {}
    for j, name in enumerate(names):
        if "=" in name or xp["test"][:, j].var() == 0:
            continue
        r = [abs(np.corrcoef(ics[:, i], xp["test"][:, j])[0, 1]) for i in range(ics.shape[1])]
        out[f"{name} best |r|"] = round(float(np.nanmax(r)), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--known", nargs="+", type=int, default=[100, 300])
    ap.add_argument("--out", default="benchmarks/feature_inference.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for seed in args.seeds:
        t0 = time.time()
        cfg = config_from_dict({"engine": "inprocess", "seed": seed,
                                "dataset": {"name": "adult", "aligned_fraction": args.fraction},
                                "method": {"name": "vproto"}})
        ds = load_vertical_dataset(cfg)
        aligned = align_dataset(ds, seed, cfg.dataset.min_aligned)
        passive = PassiveParty(ds.passives[0], cfg, 1, ds.num_classes)
        passive.set_alignment(aligned[1])
        passive.train_round(1)  # its label-free pre-training, then a round with no gradient row (the default)
        names = list(ds.passives[0].feature_names)
        z = {sp: np.asarray(passive.embed(sp), dtype=np.float64) for sp in ("train", "test")}
        xp = {sp: np.asarray(ds.passives[0].split(sp).x[aligned[1][sp]], dtype=np.float64) for sp in ("train", "test")}
        rng = np.random.default_rng(seed)
        line = {"seed": seed, "fraction": args.fraction, "passive_numeric": [n for n in names if n in NUMERIC],
                **{f"known{k}": _known_attack(z, xp, names, k, rng) for k in args.known},
                "blind": _blind_attack(z, xp, names, seed),
                "seconds": round(time.time() - t0, 1), "load": round(os.getloadavg()[0], 2)}
        print(json.dumps(line), flush=True)
        with open(args.out, "a") as fh:
            fh.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
