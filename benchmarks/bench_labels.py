"""The price of protecting the labels: attack strength against test accuracy, per defence setting (BENCHMARKS §8).

For every cell (dataset x aligned fraction x seed) and defence setting, ``vproto`` and ``vanilla`` run under that
defence with ``audit.record`` on, next to ``local`` (which sends nothing); each run's recorded gradient rows are
scored by every attack of :mod:`flwr_vproto.audit` against the true labels. Results go to a JSON-lines file (runs
already there are skipped); ``python -m flwr_vproto.report <file>`` draws the trade-off (attack AUC against
accuracy) and prints the table.

    python benchmarks/bench_labels.py --datasets adult digits --fractions 0.01 0.05 0.1 --seeds 0 1 2 \
        --out benchmarks/labels.jsonl --workers 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from jsonl_runs import run_pending

SETTINGS = {  # tag -> defence block
    "off": {},
    "noise4": {"grad_clip": 1.0, "grad_noise": 4.0},
    "noise16": {"grad_clip": 1.0, "grad_noise": 16.0},
    "noise32": {"grad_clip": 1.0, "grad_noise": 32.0},
    "noise64": {"grad_clip": 1.0, "grad_noise": 64.0},
    "eps2": {"label_epsilon": 2.0},
    "eps1": {"label_epsilon": 1.0},
    "eps0.4": {"label_epsilon": 0.4},
}
FIELDS = ("tag", "method", "dataset", "fraction", "seed")


def run_one(job: dict) -> dict:
    """One run in a worker process (one torch thread), audited when it sends anything."""
    import torch

    torch.set_num_threads(1)
    from flwr_vproto.audit import audit_folder
    from flwr_vproto.config import config_from_dict
    from flwr_vproto.inprocess import run_inprocess

    joint = job["method"] != "local"
    with tempfile.TemporaryDirectory() as folder:
        cfg = config_from_dict({
            "engine": "inprocess", "seed": job["seed"], "num_rounds": job["rounds"],
            "dataset": {"name": job["dataset"], "aligned_fraction": job["fraction"]},
            "method": {"name": job["method"]},
            **({"defence": SETTINGS[job["tag"]], "audit": {"record": True, "dir": folder}} if joint else {}),
        })
        t0 = time.perf_counter()
        res = run_inprocess(cfg)
        seconds = round(time.perf_counter() - t0, 1)
        leak = audit_folder(folder, _classes(cfg))["summary"] if joint else {}
    return {**job, "final": res["final"], "audit": leak, "seconds": seconds}


def _classes(cfg) -> int:
    from flwr_vproto.data import dataset_classes

    return int(dataset_classes(cfg)[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["adult", "digits"])
    p.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.05, 0.1])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/labels.jsonl"))
    a = p.parse_args()
    jobs = []
    for ds in a.datasets:
        for frac in a.fractions:
            for seed in a.seeds:
                cell = {"dataset": ds, "fraction": frac, "seed": seed, "rounds": a.rounds}
                jobs.append({"tag": "none", "method": "local", **cell})
                jobs += [{"tag": tag, "method": m, **cell} for tag in a.settings for m in ("vproto", "vanilla")]
    records = run_pending(a.out, jobs, run_one, a.workers, FIELDS)
    print(json.dumps({"runs": len(records)}))


if __name__ == "__main__":
    main()
