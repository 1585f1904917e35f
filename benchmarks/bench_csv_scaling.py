"""Scaling of pixel-like CSV columns (``dataset.csv.scaling``, ``dataset.csv.clip``): accuracy and outliers.

scikit-learn's digits (1,797 users, 64 pixel columns of 0..16) are written as one table, split by the split helper
into an active file (the first 32 pixel columns in row-major order: the top half of each image) and a passive file
(the bottom half), with 5 % of the training users aligned, and trained with ``dataset=csv`` for every scaling
variant, method and seed, one run at a time, in this process (in-process engine). For each variant the largest
absolute standardised value over every party's test rows is reported too.

    python benchmarks/bench_csv_scaling.py --work /tmp/csv_scaling --seeds 0 1 2 --rounds 20 \
        --out benchmarks/csv_scaling.jsonl

``--method-overrides JSON`` sets method options for every run (recorded), e.g. ``'{"head": "nn"}'``.

``--source fashion_mnist --rows 5000`` writes a seeded subsample of the Fashion-MNIST training images (Debian package
``dataset-fashion-mnist``) instead, 784 pixel columns of 0..255, and gives the active party the left half of each
image (columns 0-13 of every pixel row), as the built-in ``fashion_mnist`` dataset does.
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


def write_table(path: Path, source: str, rows: int) -> list[str] | None:
    """Write the image table; return the active party's columns (None: the first half of the columns)."""
    if source == "digits":
        digits = load_digits()
        pixels, labels, active = digits.data.astype(int), digits.target, None
    else:
        from flwr_vproto.data.fashion_mnist import DEFAULT_ROOT, _load

        arrays = _load(DEFAULT_ROOT)
        pick = np.sort(np.random.default_rng(0).choice(len(arrays["train_labels"]), rows, replace=False))
        pixels = arrays["train_images"][pick].reshape(rows, -1).astype(int)
        labels = arrays["train_labels"][pick]
        active = [f"px{r * 28 + c}" for r in range(28) for c in range(14)]
    frame = pd.DataFrame(pixels, columns=[f"px{i}" for i in range(pixels.shape[1])])
    frame.insert(0, "user_id", [f"u{k:05d}" for k in range(len(frame))])
    frame["label"] = labels
    frame.to_csv(path, index=False)
    return active


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/csv_scaling")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--aligned", type=float, default=0.05)
    ap.add_argument("--methods", nargs="+", default=["vproto", "local"])
    ap.add_argument("--source", choices=["digits", "fashion_mnist"], default="digits")
    ap.add_argument("--rows", type=int, default=5000, help="fashion_mnist: users drawn from the training images")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--method-overrides", type=json.loads, default={},
                    help='JSON merged into every run\'s method section, kept in each record (e.g. \'{"research": '
                         '{"joint_trees": false}}\')')
    ap.add_argument("--out", default="benchmarks/csv_scaling.jsonl")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    table = work / f"{args.source}.csv"
    active = write_table(table, args.source, args.rows)
    res = split_table(str(table), "user_id", "label", str(work / "parties"), active_share=None if active else 0.5,
                      active_columns=active, aligned=args.aligned, seed=0)
    print(res.counts, flush=True)
    paths = [str(p) for p in res.paths]
    rows = []
    for tag in args.variants:
        options = VARIANTS[tag]
        base = {"engine": "inprocess", "num_rounds": args.rounds,
                "dataset": {"name": "csv", "csv": {"paths": paths, "id_column": "user_id", "split_seed": 0,
                                                    **options}}}
        ds = load_vertical_dataset(config_from_dict(base))
        max_abs = float(max(np.abs(p.test.x).max() for p in ds.parties))
        for method in args.methods:
            for seed in args.seeds:
                cfg = config_from_dict({**base, "seed": seed, "method": {**args.method_overrides, "name": method}})
                t0 = time.perf_counter()
                out = run_inprocess(cfg)
                row = {"source": args.source, "variant": tag, "method": method, "seed": seed, "rounds": args.rounds,
                       "accuracy": out["final"]["accuracy"], "max_abs_test_value": max_abs,
                       **({"method_overrides": args.method_overrides} if args.method_overrides else {}),
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
