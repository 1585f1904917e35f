"""Offline check of a direction of issue 28 item 2 (not in the package; BENCHMARKS §1, "A tree head under vproto").

A boosted joint model on the aligned users, starting from the tree head's margin (LightGBM ``init_score``): over
[the active party's columns, the passive's label-free pre-trained embedding] (``emb``: what vproto's active party
could train; by default the passive's encoder is its pre-training only), and, as a reference no federation sees,
over [active columns, raw passive columns] (``raw``: the issue's stacking). Same grid, early stopping and selection
rule as the tree baselines (flwr_vproto/trees.py); test scores on the aligned test users. One process, one thread.

    python benchmarks/bench_boosted_joint.py F S   # appends a line to benchmarks/boosted_joint.jsonl
"""
import json
import sys
import time

import lightgbm as lgb
import numpy as np

from flwr_vproto import trees
from flwr_vproto.alignment import align_dataset
from flwr_vproto.config import config_from_dict
from flwr_vproto.data import SPLITS, load_vertical_dataset
from flwr_vproto.method.scores import classification_scores
from flwr_vproto.parties import ActiveParty, PassiveParty

f, s = float(sys.argv[1]), int(sys.argv[2])
t0 = time.time()
cfg = config_from_dict({"engine": "inprocess", "seed": s, "dataset": {"name": "adult", "aligned_fraction": f},
                        "method": {"name": "vproto", "head": "gbdt"}})
ds = load_vertical_dataset(cfg)
al = align_dataset(ds, cfg.seed, cfg.dataset.min_aligned)
passive = PassiveParty(ds.passives[0], cfg, 1, ds.num_classes)
passive.set_alignment(al[1])
passive.train_round(1)
active = ActiveParty(ds.active, cfg, ds.num_classes, [64])
active.set_alignment(al[0])
view = {}
for sp in SPLITS:
    ra, rp = al[0][sp], al[1][sp]
    m = active._tree_logits(sp, ra).numpy()[:, 1].astype(np.float64)
    xa = np.asarray(ds.active.split(sp).x[ra]).reshape(len(ra), -1)
    z = passive.embed(sp)
    xp = np.asarray(ds.passives[0].split(sp).x[rp]).reshape(len(rp), -1)
    y = np.asarray(ds.active.split(sp).y[ra])
    view[sp] = (xa, z, xp, y, m)
def run(kind):
    best = None
    for setting in trees.grid():
        def X(sp):
            xa, z, xp, y, m = view[sp]
            return np.hstack([xa, z if kind == "emb" else xp]).astype(np.float32)
        tr, va = view["train"], view["val"]
        keep = tr[3] >= 0
        d = lgb.Dataset(X("train")[keep], tr[3][keep], init_score=tr[4][keep], params={"verbosity": -1})
        dv = lgb.Dataset(X("val"), va[3], init_score=va[4], reference=d)
        b = lgb.train(trees._params_seeded(s, 2, setting) | {"num_threads": 1}, d, num_boost_round=trees.MAX_TREES,
                      valid_sets=[dv], callbacks=[lgb.early_stopping(trees.EARLY_STOPPING, verbose=False)])
        sc = {}
        for sp in ("val", "test"):
            raw = b.predict(X(sp), num_iteration=b.best_iteration, raw_score=True) + view[sp][4]
            p = 1 / (1 + np.exp(-raw))
            sc[sp] = classification_scores(np.column_stack([1 - p, p]), view[sp][3], 2)
        key = (sc["val"]["accuracy"], -sc["val"]["loss"])
        if best is None or key > best[0]:
            best = (key, setting, sc["test"])
    return best
out = {"fraction": f, "seed": s}
for kind in ("emb", "raw"):
    k, setting, t = run(kind)
    out[kind] = {"accuracy": t["accuracy"], "auc": t["auc"], **setting}
out["seconds"] = round(time.time() - t0, 1)
print(json.dumps(out))
with open("benchmarks/boosted_joint.jsonl", "a") as fh:
    fh.write(json.dumps(out) + "\n")
