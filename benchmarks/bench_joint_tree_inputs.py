"""Offline: what the joint trees could gain from other inputs (issue 28; not in the package; BENCHMARKS §1).

The joint trees (``method.research.joint_trees``) are LightGBM on the aligned users' [active columns, each passive's
embedding], boosted from the tree head's margin (``trees.fit_joint``, as the package fits them: the same grid,
early stopping and choice on the aligned validation users' log-loss). This script fits them on one adult cell with
the passive as the default trains it before round 1 (its label-free pre-training, all it learns under the default
protection) and scores the trees alone on the aligned test users, for each input kind:

* ``emb``: what the package uses;
* ``emb+proto``: plus each embedding's squared distance to each class mean of the normalised training embeddings (the
  second prototypes' geometry) and their differences to class 0: a label-aligned summary axis-aligned trees can split;
* ``emb+lr``: plus a logistic regression's logit on the normalised embedding (out of fold on the training rows,
  5 folds; fitted on all of them for validation and test): a learned label-aligned direction;
* ``raw``: [active columns, the passive's raw columns], a reference no federation sees (what the embedding loses).

``X`` (environment, JSON) overrides config sections for the passive (e.g. ``{"model": {"embedding_dim": 128}}``),
``KINDS`` picks the kinds (default ``emb``, ``emb+proto``, ``raw``). One process, one thread.

    python benchmarks/bench_joint_tree_inputs.py F S [weak]   # appends a line to benchmarks/joint_tree_inputs.jsonl
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch

from flwr_vproto import trees
from flwr_vproto.adult_columns import COLUMNS
from flwr_vproto.alignment import align_dataset
from flwr_vproto.config import config_from_dict
from flwr_vproto.data import SPLITS, load_vertical_dataset
from flwr_vproto.method.scores import classification_scores
from flwr_vproto.parties import ActiveParty, PassiveParty

WEAK_ACTIVE = ["age", "race", "sex", "native-country", "fnlwgt"]  # as bench_methods.py's adult_weak


def _normalised(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def main() -> None:
    fraction, seed, weak = float(sys.argv[1]), int(sys.argv[2]), len(sys.argv) > 3
    overrides = json.loads(os.environ.get("X", "{}"))
    kinds = os.environ.get("KINDS", "emb,emb+proto,raw").split(",")
    t0 = time.time()
    data = {"name": "adult", "aligned_fraction": fraction}
    if weak:
        data["feature_split"] = [WEAK_ACTIVE, [c for c in COLUMNS if c not in WEAK_ACTIVE]]
    cfg = config_from_dict({"engine": "inprocess", "seed": seed, "dataset": data, **overrides,
                            "method": {"name": "vproto", "head": "gbdt", **overrides.get("method", {})}})
    ds = load_vertical_dataset(cfg)
    al = align_dataset(ds, cfg.seed, cfg.dataset.min_aligned)
    passive = PassiveParty(ds.passives[0], cfg, 1, ds.num_classes)
    passive.set_alignment(al[1])
    passive.train_round(1)  # pre-training, then a round with no gradient row (the default protection)
    active = ActiveParty(ds.active, cfg, ds.num_classes, [cfg.model.embedding_dim])
    active.set_alignment(al[0])
    view = {}
    for sp in SPLITS:
        rows = al[0][sp]
        view[sp] = {"xa": np.asarray(ds.active.split(sp).x[rows], dtype=np.float32).reshape(len(rows), -1),
                    "z": passive.embed(sp),
                    "xp": np.asarray(ds.passives[0].split(sp).x[al[1][sp]], dtype=np.float32).reshape(len(rows), -1),
                    "y": np.asarray(ds.active.split(sp).y[rows]), "margin": active._tree_logits(sp, rows).numpy()}
    labelled = view["train"]["y"] >= 0
    z, y = _normalised(view["train"]["z"][labelled]), view["train"]["y"][labelled]
    means = np.stack([z[y == c].mean(0) for c in range(ds.num_classes)])

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    lr = LogisticRegression(max_iter=2000)
    zt_all = _normalised(view["train"]["z"])
    lr_logit = {"train": np.zeros(len(zt_all))}
    lr_logit["train"][labelled] = cross_val_predict(lr, z, y, cv=StratifiedKFold(5, shuffle=True, random_state=seed),
                                                    method="decision_function")
    lr.fit(z, y)
    for sp in ("val", "test"):
        lr_logit[sp] = lr.decision_function(_normalised(view[sp]["z"]))

    def features(kind: str, sp: str) -> np.ndarray:
        v = view[sp]
        if kind == "raw":
            return np.hstack([v["xa"], v["xp"]])
        if kind == "emb":
            return np.hstack([v["xa"], v["z"]])
        if kind == "emb+lr":
            return np.hstack([v["xa"], v["z"], lr_logit[sp][:, None]]).astype(np.float32)
        dist = ((_normalised(v["z"])[:, None, :] - means[None]) ** 2).sum(-1)
        return np.hstack([v["xa"], v["z"], dist, dist[:, 1:] - dist[:, :1]]).astype(np.float32)

    out: dict = {"fraction": fraction, "seed": seed, "weak": weak, "overrides": overrides}
    for kind in kinds:
        tr, va, te = view["train"], view["val"], view["test"]
        booster, setting = trees.fit_joint((features(kind, "train")[labelled], tr["y"][labelled]),
                                           (features(kind, "val"), va["y"]), (tr["margin"][labelled], va["margin"]),
                                           ds.num_classes, seed)
        logits = trees.joint_margin(booster, features(kind, "test"), te["margin"], ds.num_classes)
        scores = classification_scores(torch.softmax(torch.as_tensor(logits, dtype=torch.float64), 1).numpy(),
                                       te["y"], ds.num_classes)
        out[kind] = {"accuracy": scores["accuracy"], "auc": scores["auc"], **setting}
    out["seconds"] = round(time.time() - t0, 1)
    out["load"] = [round(x, 2) for x in os.getloadavg()[:1]]
    print(json.dumps(out), flush=True)
    with open("benchmarks/joint_tree_inputs.jsonl", "a") as fh:
        fh.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
