"""Offline bound: vproto's default with the joint trees fed the passive's raw columns (issue 28; not in the package).

The joint trees (``method.research.joint_trees``) see each passive through the embedding it sent and that embedding's
independent components (``ActiveParty._joint_tree_features``). This script runs the whole default method, in process,
with one change: the joint trees' inputs are [active columns, the passive's raw encoded columns of the same users].
No federation may do this (raw columns never leave the passive); it measures the most any representation of the
passive's columns could give the method as it is built (the tree head, the network, the joint trees, the combination
and its gate all unchanged), so a cell it does not lift above the goal cannot be lifted there by a better embedding.
Tag ``oracle_raw``; ``--with-default`` adds the default (tag ``vproto``) to the same sweep for a side-by-side.

    python benchmarks/bench_joint_tree_oracle.py --datasets adult adult_weak --fractions 0.05 0.1 \
        --seeds 0 1 2 3 4 --with-default --out benchmarks/joint_tree_oracle.jsonl
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from bench_methods import run_one, summarise
from jsonl_runs import run_pending

ORACLE = {"on": False}  # this worker's current job is tag oracle_raw


def _patch() -> None:
    """In this worker (once): remember each passive's raw rows and the shared order at set-up, and, while
    ``ORACLE["on"]``, give the joint trees those raw rows instead of the embeddings."""
    from flwr_vproto import inprocess
    from flwr_vproto.parties import ActiveParty

    if getattr(ActiveParty, "_oracle", False):
        return
    set_up, features = inprocess._set_up, ActiveParty._joint_tree_features

    def set_up_remembering(cfg, ds, secret):
        active, passives = set_up(cfg, ds, secret)
        raw = {}
        for split in active.aligned:
            lookup = np.full(len(ds.active.split(split)), -1, dtype=np.int64)
            lookup[active.aligned[split]] = passives[0].aligned[split]
            x = np.asarray(ds.passives[0].split(split).x, dtype=np.float32)
            raw[split] = (lookup, x.reshape(len(x), -1))
        active._oracle_raw = raw
        return active, passives

    def raw_features(self, split, rows, embeddings):
        if not ORACLE["on"]:
            return features(self, split, rows, embeddings)
        lookup, x_passive = self._oracle_raw[split]
        passive_rows = lookup[np.asarray(rows)]
        assert (passive_rows >= 0).all(), "a joint-tree row that is not aligned"
        x = np.asarray(self.data.split(split).x[rows], dtype=np.float32).reshape(len(rows), -1)
        return np.hstack([x, x_passive[passive_rows]])

    inprocess._set_up = set_up_remembering
    ActiveParty._joint_tree_features = raw_features
    ActiveParty._oracle = True


def run_oracle(job: dict) -> dict:
    """One run; the raw-column joint trees for tag ``oracle_raw``, the package as it is otherwise."""
    _patch()
    ORACLE["on"] = job["tag"] == "oracle_raw"
    return run_one(job)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["adult", "adult_weak"])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.05, 0.1])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--with-default", action="store_true", help="also run the default (tag vproto), same sweep")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--out", default="benchmarks/joint_tree_oracle.jsonl")
    args = ap.parse_args()
    tags = ["oracle_raw", *(["vproto"] if args.with_default else [])]
    jobs = [{"tag": tag, "method": "vproto", "method_overrides": {}, "dataset": ds, "fraction": frac, "seed": seed,
             "rounds": args.rounds, "dataset_overrides": {}}
            for ds in args.datasets for frac in args.fractions for seed in args.seeds for tag in tags]
    rows = run_pending(Path(args.out), jobs, run_oracle, args.workers)
    print(summarise(rows))


if __name__ == "__main__":
    main()
