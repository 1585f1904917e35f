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
* ``emb+ica``: plus the independent components of the embedding, as the package computes them
  (``trees.fit_unmixing``: FastICA on the aligned training users' embeddings, no label);
* ``emb+icaK`` / ``icaK``: the same with ``K`` components instead of ``trees.UNMIXED_COMPONENTS``, with the
  embedding beside them / instead of it;
* ``emb+ica+lr``: ``emb+ica`` plus ``emb+lr``'s out-of-fold logit;
* ``emb+ica+kmK``: ``emb+ica`` plus the embedding's k-means cluster (``K`` clusters of the normalised aligned training
  embeddings, no label) as one categorical column;
* ``raw``: [active columns, the passive's raw columns], a reference no federation sees (what the embedding loses);
* ``emb+raw:COLUMN``: the embedding plus one raw encoded passive column (a name of the passive's ``feature_names``,
  e.g. ``capital-gain``), a diagnostic of which column the embedding loses; also no federation sees it.

``X`` (environment, JSON) overrides config sections for the passive (e.g. ``{"model": {"embedding_dim": 128}}``),
``KINDS`` picks the kinds (default ``emb``, ``emb+proto``, ``raw``), ``PARAMS`` (JSON) adds LightGBM parameters to
every joint-tree fit (e.g. ``{"feature_fraction": 0.5}``; before 2026-12-07 late they reached the tree head's fit
too), ``JOINT_GRID`` (JSON, ``{"num_leaves": [...], "min_child_samples": [...]}``) replaces the joint trees' grid,
``BAG`` (an integer >= 2) makes them the average of that many refits of the chosen setting, each on a bag of 80 % of
the rows and columns with its own seed, ``TRANSFORM`` re-encodes the passive's numeric columns
before it pre-trains (``log``: log1p of the encoded (standardised) value above its training minimum, standardised
again; ``ple``: the standardised value plus a piecewise-linear encoding over 16 quantile bins of the values other
than the column's most common one, the "numeric embeddings" of Gorishniy et al. 2022; label-free, the passive's own
rows only). Each line records them. ``OUT`` names the file the line is appended to. One process, one thread.

    python benchmarks/bench_joint_tree_inputs.py F S [weak]   # appends a line to benchmarks/joint_tree_inputs.jsonl
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from flwr_vproto import trees
from flwr_vproto.adult_columns import COLUMNS, NUMERIC
from flwr_vproto.alignment import align_dataset
from flwr_vproto.config import config_from_dict
from flwr_vproto.data import SPLITS, load_vertical_dataset
from flwr_vproto.method.scores import classification_scores
from flwr_vproto.parties import ActiveParty, PassiveParty

WEAK_ACTIVE = ["age", "race", "sex", "native-country", "fnlwgt"]  # as bench_methods.py's adult_weak
PLE_BINS = 16
PARAMS = json.loads(os.environ.get("PARAMS", "{}"))
JOINT_GRID = json.loads(os.environ.get("JOINT_GRID", "null"))
BAG = int(os.environ.get("BAG", "1"))
BAG_PARAMS = {"bagging_fraction": 0.8, "bagging_freq": 1, "feature_fraction": 0.8}
ICA_KIND = re.compile(r"(emb\+)?ica(\d*)(\+lr|\+km\d+)?")  # the kinds built on independent components


@contextmanager
def _categorical_last(on: bool) -> Iterator[None]:
    """The joint trees' last input read as a categorical column (the cluster id of ``emb+ica+km``)."""
    import lightgbm as lgb

    dataset = lgb.Dataset
    if on:
        lgb.Dataset = lambda data, label=None, **kw: dataset(  # type: ignore[misc]
            data, label, **({} if "reference" in kw else {"categorical_feature": [data.shape[1] - 1]}), **kw)
    try:
        yield
    finally:
        lgb.Dataset = dataset


@contextmanager
def _joint_fit_options(extra: dict, grid: dict | None) -> Iterator[None]:
    """LightGBM parameters ``extra`` and the grid ``grid`` for the joint trees' fit only (the tree head, fitted
    when the script first reads its margin, keeps the package's)."""
    seeded, leaves, mcs = trees._params_seeded, trees.NUM_LEAVES, trees.MIN_CHILD_SAMPLES
    trees._params_seeded = lambda *a: {**seeded(*a), **extra}
    if grid:
        trees.NUM_LEAVES, trees.MIN_CHILD_SAMPLES = tuple(grid["num_leaves"]), tuple(grid["min_child_samples"])
    try:
        yield
    finally:
        trees._params_seeded, trees.NUM_LEAVES, trees.MIN_CHILD_SAMPLES = seeded, leaves, mcs


class _Bag:
    """``BAG`` boosters' mean margin, read through ``predict`` as :func:`trees.head_margin` reads a booster's."""

    def __init__(self, boosters: list) -> None:
        self.boosters = boosters

    def predict(self, x: np.ndarray, raw_score: bool = True) -> np.ndarray:
        return np.mean([b.predict(x, raw_score=True) for b in self.boosters], axis=0)


def fit_joint(train: tuple, val: tuple, base: tuple, num_classes: int, seed: int) -> tuple:
    """``trees.fit_joint`` under ``PARAMS`` and ``JOINT_GRID``; with ``BAG`` >= 2, then ``BAG`` refits of the setting
    it chose, each on a bag of the rows and columns (``BAG_PARAMS``) with its own seed, averaged."""
    with _joint_fit_options(PARAMS, JOINT_GRID):
        booster, setting = trees.fit_joint(train, val, base, num_classes, seed)
    if BAG < 2:
        return booster, setting
    boosters = []
    for k in range(BAG):
        with _joint_fit_options({**PARAMS, **BAG_PARAMS}, None):
            boosters.append(trees.fit_joint(train, val, base, num_classes, seed * 1000 + k + 1, setting)[0])
    return _Bag(boosters), {**setting, "bag": BAG}


def _transformed(column: np.ndarray, train: np.ndarray, kind: str) -> np.ndarray:
    """``TRANSFORM``: one numeric column re-encoded from its training values (no label): ``(n, k)``."""
    if kind == "log":
        shifted = np.log1p(train - train.min())
        return ((np.log1p(np.maximum(column - train.min(), 0.0)) - shifted.mean()) / shifted.std())[:, None]
    values, counts = np.unique(train, return_counts=True)
    mode = values[counts.argmax()]
    edges = np.unique(np.concatenate([[train.min(), mode],
                                      np.quantile(train[train != mode], np.linspace(0, 1, PLE_BINS + 1))]))
    return np.hstack([column[:, None], np.clip((column[:, None] - edges[:-1]) / np.diff(edges), 0.0, 1.0)])


def transform_passive(party, numeric: list[str], kind: str) -> None:
    """Re-encode the passive's numeric columns in place (``TRANSFORM``), before it pre-trains."""
    if kind == "none":
        return
    cols = [party.feature_names.index(c) for c in numeric if c in party.feature_names]
    train = np.asarray(party.train.x, dtype=np.float64)
    for sp in SPLITS:
        x = np.asarray(party.split(sp).x, dtype=np.float64)
        blocks = [_transformed(x[:, j], train[:, j], kind) for j in cols]
        rest = np.delete(x, cols, axis=1)
        party.split(sp).x = np.hstack([*blocks, rest]).astype(np.float32)
    party.input_shape = (party.train.x.shape[1],)


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
    transform = os.environ.get("TRANSFORM", "none")
    raw_passive = {sp: np.asarray(ds.passives[0].split(sp).x) for sp in SPLITS}  # before TRANSFORM
    passive_names = list(ds.passives[0].feature_names)
    transform_passive(ds.passives[0], NUMERIC, transform)
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
                    "xp": np.asarray(raw_passive[sp][al[1][sp]], dtype=np.float32).reshape(len(rows), -1),
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

    unmixings: dict[int, trees.Unmixing | None] = {}

    def unmixing(k: int) -> trees.Unmixing | None:
        """The package's unmixing with ``k`` components, fitted once."""
        if k not in unmixings:
            unmixings[k] = trees.fit_unmixing(view["train"]["z"], seed, k)
        return unmixings[k]

    from sklearn.cluster import KMeans

    clusters = {}
    for k in sorted({int(kind.split("km", 1)[1]) for kind in kinds if kind.startswith("emb+ica+km")}):
        km = KMeans(k, n_init=4, random_state=seed).fit(_normalised(view["train"]["z"]))
        clusters[k] = {sp: km.predict(_normalised(view[sp]["z"])).astype(np.float32) for sp in SPLITS}

    def features(kind: str, sp: str) -> np.ndarray:
        v = view[sp]
        if kind == "raw":
            return np.hstack([v["xa"], v["xp"]])
        if kind.startswith("emb+raw:"):
            j = passive_names.index(kind.split(":", 1)[1])
            return np.hstack([v["xa"], v["z"], v["xp"][:, j:j + 1]])
        m = ICA_KIND.fullmatch(kind)
        if m:  # emb+ica, emb+icaK, icaK, emb+ica+lr, emb+ica+kmK
            u = unmixing(int(m.group(2) or trees.UNMIXED_COMPONENTS))
            assert u is not None
            extra = m.group(3) or ""
            last = ([lr_logit[sp][:, None]] if extra == "+lr"
                    else [clusters[int(extra[3:])][sp][:, None]] if extra else [])
            parts = [v["xa"], *([v["z"]] if m.group(1) else []), trees.unmixed(v["z"], u), *last]
            return np.hstack(parts).astype(np.float32)
        if kind == "emb":
            return np.hstack([v["xa"], v["z"]])
        if kind == "emb+lr":
            return np.hstack([v["xa"], v["z"], lr_logit[sp][:, None]]).astype(np.float32)
        dist = ((_normalised(v["z"])[:, None, :] - means[None]) ** 2).sum(-1)
        return np.hstack([v["xa"], v["z"], dist, dist[:, 1:] - dist[:, :1]]).astype(np.float32)

    out: dict = {"fraction": fraction, "seed": seed, "weak": weak, "overrides": overrides,
                 **({"params": PARAMS} if PARAMS else {}), **({"transform": transform} if transform != "none" else {}),
                 **({"joint_grid": JOINT_GRID} if JOINT_GRID else {}), **({"bag": BAG} if BAG >= 2 else {})}
    for kind in kinds:
        tr, va, te = view["train"], view["val"], view["test"]
        with _categorical_last("+km" in kind):
            booster, setting = fit_joint((features(kind, "train")[labelled], tr["y"][labelled]),
                                         (features(kind, "val"), va["y"]), (tr["margin"][labelled], va["margin"]),
                                         ds.num_classes, seed)
        logits = trees.joint_margin(booster, features(kind, "test"), te["margin"], ds.num_classes)
        scores = classification_scores(torch.softmax(torch.as_tensor(logits, dtype=torch.float64), 1).numpy(),
                                       te["y"], ds.num_classes)
        out[kind] = {"accuracy": scores["accuracy"], "auc": scores["auc"], **setting}
    out["seconds"] = round(time.time() - t0, 1)
    out["load"] = [round(x, 2) for x in os.getloadavg()[:1]]
    print(json.dumps(out), flush=True)
    with open(os.environ.get("OUT", "benchmarks/joint_tree_inputs.jsonl"), "a") as fh:
        fh.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
