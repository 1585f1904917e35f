"""What sealing costs (BENCHMARKS "Sealed payloads"): bytes per exchange and seconds, sealed vs plain.

The Flower engine's real strategy and ClientApp on an in-process grid (``tests/conftest.py``'s ``InlineGrid``,
no Ray), so the payload bytes are those a deployment sends and the seconds are the protocol's own (codecs,
sealing, training), without Ray's or a SuperLink's overhead. The plain baseline is the same script run against a
checkout without sealing (``/work/main`` before this change), on the same machine right after:

    PYTHONPATH=$PWD python benchmarks/bench_sealing.py --tag sealed
    PYTHONPATH=/work/main python benchmarks/bench_sealing.py --tag plain    # a checkout before sealing

Each run prints one JSON line per setting: exchanges, payload bytes per exchange (every party, both directions),
seconds per exchange (the strategy's own timing: send, the parties' work, receive), the run's wall seconds, and the
final test accuracy (identical sealed or plain: sealing changes no number). ``--crypto`` adds the cost of sealing
and opening one embedding-sized payload alone.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

SETTINGS = {
    "digits-config-defaults": {"dataset": {"name": "digits"}},  # 20 rounds, 5 %, no rows: 1 exchange
    "digits-none-20": {"dataset": {"name": "digits"}, "defence": {"release_rounds": None}, "exchange": {"count": 20}},
    "digits-none-20-every": {"dataset": {"name": "digits"}, "defence": {"release_rounds": None},
                             "exchange": {"count": 20}, "eval_test": "every"},  # no padding: test rows every round
    "adult5-none-20": {"dataset": {"name": "adult", "aligned_fraction": 0.05}, "defence": {"release_rounds": None},
                       "exchange": {"count": 20}},
}


def run(setting: str, seed: int) -> dict:
    import torch
    from conftest import InlineGrid, sim_nodes

    import flwr_vproto
    from flwr_vproto.client_app import make_client_app
    from flwr_vproto.config import config_from_dict
    from flwr_vproto.strategy import VerticalProtoStrategy

    torch.set_num_threads(1)
    cfg = config_from_dict({"seed": seed, **SETTINGS[setting]})
    kwargs, app_kwargs = {}, {}
    if "active_results" in inspect.signature(VerticalProtoStrategy).parameters:  # sealed: read the record back
        own = tempfile.mkdtemp(prefix="bench-sealing-")
        kwargs["active_results"], app_kwargs["results_dir"] = own, own
    strategy = VerticalProtoStrategy(cfg, timeout=3600, wait_for_nodes=1, **kwargs)
    start = time.perf_counter()
    strategy.start(grid=InlineGrid(make_client_app(cfg, **app_kwargs), sim_nodes(cfg)))
    wall = time.perf_counter() - start
    hist = strategy.history
    per_exchange = [sum(v for k, v in r.items() if k.startswith("bytes/")) for r in hist]
    return {"setting": setting, "seed": seed, "code": str(Path(flwr_vproto.__file__).parent.parent),
            "exchanges": len(hist), "bytes_per_exchange": mean(per_exchange),
            "passive_up_per_exchange": mean(r.get("bytes/passive1/up", 0.0) for r in hist),
            "seconds_per_exchange": mean(r["seconds"] for r in hist), "wall_seconds": wall,
            "setup_bytes": sum(strategy.results["flower"]["setup_bytes"].values()),
            "final_accuracy": strategy.results["final"].get("accuracy"),
            "best_round": strategy.results["final"].get("best_round")}


def crypto(rows: int, dim: int, repeats: int = 50) -> dict:
    """Seal and open one float32 embedding matrix of ``rows`` x ``dim`` (the AEAD alone)."""
    import numpy as np

    from flwr_vproto import sealing

    key, aad = os.urandom(32), b"bench"
    plain = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32).tobytes()
    t = time.perf_counter()
    for _ in range(repeats):
        blob = sealing.seal(key, plain, aad)
    sealed = (time.perf_counter() - t) / repeats
    t = time.perf_counter()
    for _ in range(repeats):
        sealing.open_sealed(key, blob, aad, receiver="r", sender="s", phase="p", rnd=0)
    opened = (time.perf_counter() - t) / repeats
    return {"crypto_rows": rows, "bytes": len(plain), "seal_ms": 1e3 * sealed, "open_ms": 1e3 * opened,
            "overhead_bytes": len(blob) - len(plain)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tag", default="sealed")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crypto", action="store_true")
    a = p.parse_args()
    print(json.dumps({"tag": a.tag, "load_before": os.getloadavg()}))
    for setting in a.settings:
        print(json.dumps({"tag": a.tag, **run(setting, a.seed), "load_after": os.getloadavg()}), flush=True)
    if a.crypto:
        for rows in (1464, 14643):
            print(json.dumps({"tag": a.tag, **crypto(rows, 64)}), flush=True)


if __name__ == "__main__":
    main()
