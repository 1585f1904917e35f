"""Scaling of pixel-like CSV columns (``dataset.csv.scaling``, ``dataset.csv.clip``): accuracy and outliers.

scikit-learn's digits (1,797 users, 64 pixel columns of 0..16) are written as one table, split by the split helper
into an active file (the first 32 pixel columns in row-major order: the top half of each image) and a passive file
(the bottom half), with 5 % of the training users aligned, and trained with ``dataset=csv`` for every scaling
variant, method and seed, one run at a time, in this process (in-process engine). For each variant the largest
absolute standardised value over every party's test rows is reported too.

    python benchmarks/bench_csv_scaling.py --work /tmp/csv_scaling --seeds 0 1 2 --rounds 20 \
        --out benchmarks/csv_scaling.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_digits

from flwr_vproto.config import config_from_dict
from flwr_vproto.data import load_vertical_dataset
from flwr_vproto.inprocess import run_inprocess
from flwr_vproto.split_table import split_table

VARIANTS = {"column": {"scaling": "column"}, "global": {"scaling": "global"},
            "column+clip5": {"scaling": "column", "clip": 5.0}}


def write_table(path: Path) -> None:
    digits = load_digits()
    frame = pd.DataFrame(digits.data.astype(int), columns=[f"px{i}" for i in range(64)])
    frame.insert(0, "user_id", [f"u{k:05d}" for k in range(len(frame))])
    frame["label"] = digits.target
    frame.to_csv(path, index=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/csv_scaling")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--aligned", type=float, default=0.05)
    ap.add_argument("--methods", nargs="+", default=["vproto", "local"])
    ap.add_argument("--out", default="benchmarks/csv_scaling.jsonl")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    write_table(work / "digits.csv")
    res = split_table(str(work / "digits.csv"), "user_id", "label", str(work / "parties"), active_share=0.5,
                      aligned=args.aligned, seed=0)
    print(res.counts, flush=True)
    paths = [str(p) for p in res.paths]
    rows = []
    for tag, options in VARIANTS.items():
        base = {"engine": "inprocess", "num_rounds": args.rounds,
                "dataset": {"name": "csv", "csv": {"paths": paths, "id_column": "user_id", "split_seed": 0,
                                                    **options}}}
        ds = load_vertical_dataset(config_from_dict(base))
        max_abs = float(max(np.abs(p.test.x).max() for p in ds.parties))
        for method in args.methods:
            for seed in args.seeds:
                cfg = config_from_dict({**base, "seed": seed, "method": {"name": method}})
                t0 = time.perf_counter()
                out = run_inprocess(cfg)
                row = {"variant": tag, "method": method, "seed": seed, "rounds": args.rounds,
                       "accuracy": out["final"]["accuracy"], "max_abs_test_value": max_abs,
                       "seconds": round(time.perf_counter() - t0, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    table = pd.DataFrame(rows).groupby(["variant", "method"]).agg(
        mean=("accuracy", "mean"), std=("accuracy", "std"), n=("accuracy", "size"),
        max_abs_test_value=("max_abs_test_value", "first"))
    print(table.to_string())


if __name__ == "__main__":
    main()
