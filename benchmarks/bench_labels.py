"""The price of protecting the labels: the strongest passive's attacks against test accuracy, per defence setting
and release schedule (BENCHMARKS §9).

For every cell (dataset x aligned fraction x seed) and setting, ``vproto`` and ``vanilla`` run under that setting
with ``audit.record`` on, next to ``local`` (which sends nothing). Each run is audited as the strongest passive we
know plays it (:mod:`flwr_vproto.audit`): every round alone, rows averaged and stacked over every round it kept, a
passive that knows 20/50/100 labels and its own features (its advantage over its features alone), and a replay of
every generator the run config determines. Results go to a JSON-lines file (runs already there are skipped);
``python -m flwr_vproto.report <file>`` draws the trade-off and prints the tables.

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

SETTINGS = {  # tag -> defence block (the library default is no_gradients)
    "none": {"release_rounds": None},
    "no_gradients": {"release_rounds": 0},
    "first3": {"release_rounds": 3},
    "every5": {"release_rounds": None, "release_every": 5},
    "gauss_e8": {"target_epsilon": 8.0, "release_rounds": None},
    "gauss_e4_first5": {"target_epsilon": 4.0, "release_rounds": 5},
    "gauss_e1_first3": {"target_epsilon": 1.0, "release_rounds": 3},
    "eps1": {"label_epsilon": 1.0, "release_rounds": None},
}
FIELDS = ("tag", "method", "dataset", "fraction", "seed")


def run_one(job: dict) -> dict:
    """One run in a worker process (one torch thread), audited as the strongest passive when it sends anything."""
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
            "defence": SETTINGS[job["tag"]] if joint else {"release_rounds": None},
            **({"audit": {"record": True, "dir": folder}} if joint else {}),
        })
        t0 = time.perf_counter()
        res = run_inprocess(cfg)
        seconds = round(time.perf_counter() - t0, 1)
        leak: dict = {}
        if joint:  # rows_rounds 0: no row ever received, nothing to attack beyond the passive's own features
            leak = audit_folder(folder, _classes(cfg), seed=cfg.seed)["summary"]
    defence = res.get("defence") or {}
    if "release_epsilon_given_model" in defence:  # one round's rows, given that round's model (not the run's)
        leak["gradient_release_epsilon"] = float(defence["release_epsilon_given_model"])
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
    p.add_argument("--methods", nargs="+", default=["vproto", "vanilla"], choices=["vproto", "vanilla"])
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
                jobs += [{"tag": tag, "method": m, **cell} for tag in a.settings for m in a.methods]
    records = run_pending(a.out, jobs, run_one, a.workers, FIELDS)
    print(json.dumps({"runs": len(records)}))


if __name__ == "__main__":
    main()
