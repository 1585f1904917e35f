"""Bytes on the wire per round, and what lean evaluation and float16 cost in accuracy (BENCHMARKS §3).

Every run goes through the Flower engine's real codecs on an in-process grid (``tests/test_flower_sim.py``'s
``InlineGrid``: the strategy and one ClientApp per party, without Ray), so the payload bytes are those a deployment
sends. Settings: ``eval_test`` (``every``: val and test rows every evaluation round, the old default; ``best``: test
rows only for new-best rounds and the last) x ``wire_dtype`` (``float32`` / ``float16``).

    python benchmarks/bench_wire.py --dataset adult --fraction 0.05 --seeds 0 1 2 --rounds 20
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from statistics import mean, pstdev

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

SETTINGS = [("every", "float32"), ("best", "float32"), ("best", "float16")]


def run(dataset: str, fraction: float, seed: int, rounds: int, eval_test: str, dtype: str) -> dict:
    import torch
    from test_flower_sim import InlineGrid, sim_nodes

    from flwr_vproto.client_app import make_client_app
    from flwr_vproto.config import config_from_dict
    from flwr_vproto.strategy import VerticalProtoStrategy

    torch.set_num_threads(1)
    cfg = config_from_dict({"seed": seed, "num_rounds": rounds, "eval_test": eval_test, "wire_dtype": dtype,
                            "dataset": {"name": dataset, "aligned_fraction": fraction}})
    strategy = VerticalProtoStrategy(cfg, timeout=600, wait_for_nodes=1)
    strategy.start(grid=InlineGrid(make_client_app(cfg), sim_nodes(cfg)))
    per_round = {}
    for key in ("bytes/active/down", "bytes/active/up", "bytes/passive1/down", "bytes/passive1/up"):
        per_round[key] = mean(r.get(key, 0.0) for r in strategy.history)
    return {"final": strategy.results["final"]["accuracy"], **per_round}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="adult")
    p.add_argument("--fraction", type=float, default=0.05)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=20)
    a = p.parse_args()
    print(f"load before: {' / '.join(f'{v:.1f}' for v in os.getloadavg())}")
    rows = {s: [run(a.dataset, a.fraction, seed, a.rounds, *s) for seed in a.seeds] for s in SETTINGS}
    print(f"load after: {' / '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print("| eval_test | wire_dtype | KiB per round: active down / up, passive1 down / up | all parties | "
          f"test accuracy ({len(a.seeds)} seeds) |")
    print("|---|---|---|---|---|")
    for (eval_test, dtype), rs in rows.items():
        kib = {k: mean(r[k] for r in rs) / 1024 for k in rs[0] if k.startswith("bytes/")}
        acc = [r["final"] for r in rs]
        print(f"| {eval_test} | {dtype} | {kib['bytes/active/down']:.0f} / {kib['bytes/active/up']:.0f}, "
              f"{kib['bytes/passive1/down']:.0f} / {kib['bytes/passive1/up']:.0f} | {sum(kib.values()):.0f} | "
              f"{mean(acc):.4f} ± {pstdev(acc):.4f} |")


if __name__ == "__main__":
    main()
