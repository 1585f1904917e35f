"""Where one deployment message's time goes inside the ClientApp process (BENCHMARKS §3).

In a deployment Flower 1.42 starts a fresh ``flwr-clientapp`` process for every message: it imports, restores the
party from ``context.state``, does the party's work, saves the state and encodes the reply. This replays real
round messages of the loopback benchmark's set-up (digits as per-party CSV files, 1 active + 1 passive) in fresh
processes and times each part, for the passive's and the active party's message of one round:

    python benchmarks/bench_clientapp.py --repeats 3

The parent trains three rounds in three exchanges (``exchange.count=3``: the default's one exchange would have no
round-3 message) on an in-process Flower grid and stores each party's ``context.state`` and its round-3 message;
each child is a fresh ``python`` that times its imports and then the handler's parts. The SuperNode's poll (~3 s in
Flower 1.42) and the gRPC hops come on top and are Flower's.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def _records(content) -> dict:
    from flwr.app import ArrayRecord, ConfigRecord

    out = {}
    for name, rec in content.items():
        if isinstance(rec, ArrayRecord):
            out[name] = ("arrays", {k: v.numpy() for k, v in rec.items()})
        elif isinstance(rec, ConfigRecord):
            out[name] = ("config", dict(rec))
        else:
            out[name] = ("metrics", dict(rec))
    return out


def _content(saved: dict):
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    from flwr_vproto.messages import array_record

    content = RecordDict()
    for name, (kind, value) in saved.items():
        content[name] = (array_record(value) if kind == "arrays" else ConfigRecord(value) if kind == "config"
                         else MetricRecord(value))
    return content


def prepare(folder: Path) -> None:
    """Three rounds, one exchange each, on an in-process grid; keep each party's state and its round-3 message."""
    from test_flower_sim import InlineGrid

    from flwr_vproto import messages
    from flwr_vproto.client_app import make_client_app
    from flwr_vproto.deploy import local as deploy
    from flwr_vproto.run_config import config_from_run_config, run_config_from_config
    from flwr_vproto.strategy import VerticalProtoStrategy

    paths = deploy.write_party_csvs(folder / "data", 1)
    run_config = {**run_config_from_config(), "dataset.name": "csv", "num_rounds": 3, "exchange.count": 3}
    cfg, _ = config_from_run_config(run_config)
    nodes = [{"role": "active", "party-index": 0, "data-path": str(paths[0]), "results-dir": str(folder / "results")},
             {"role": "passive", "party-index": 1, "data-path": str(paths[1])}]
    grid = InlineGrid(make_client_app(), nodes, run_config=run_config)
    captured = {}
    push = grid.push_messages

    def capture(outgoing):
        outgoing = list(outgoing)
        for m in outgoing:
            if m.metadata.message_type == messages.TRAIN and messages.round_of(m.content) == 3:
                nid = m.metadata.dst_node_id
                captured[grid.index[nid]] = {"state": _records(grid.contexts[nid].state),
                                             "message": _records(m.content), "node_config": nodes[grid.index[nid]]}
        return push(outgoing)

    grid.push_messages = capture
    VerticalProtoStrategy(cfg, timeout=60, wait_for_nodes=1).start(grid=grid)
    with open(folder / "replay.pkl", "wb") as fh:
        pickle.dump({"run_config": run_config, "parties": captured}, fh)


CHILD = r"""
import time, sys, pickle
t0 = time.perf_counter()
import flwr.app, flwr.clientapp
t_flwr = time.perf_counter()
import torch
t_torch = time.perf_counter()
sys.path.insert(0, {bench!r})
from bench_clientapp import _content
import flwr_vproto.client_app as C
from flwr_vproto import protocol
t_ours = time.perf_counter()
import torch._dynamo  # what torch.optim.Adam imports on first use (Optimizer.add_param_group, Adam.step)
t_dynamo = time.perf_counter()
saved = pickle.load(open({replay!r}, "rb"))
party = saved["parties"][{index}]
from flwr.app import Context, Message
from flwr.supercore.task_identity import TaskIdentity
TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 7, 1, 1
context = Context(run_id=7, node_id=100, node_config=party["node_config"], state=_content(party["state"]),
                  run_config=saved["run_config"])
msg = Message(_content(party["message"]), 100, "train")
msg.metadata.__dict__["_message_id"] = "m"
times = {{}}
def timed(owner, name, key):
    fn = getattr(owner, name)
    def run(*a, **k):
        t = time.perf_counter(); out = fn(*a, **k); times[key] = times.get(key, 0.0) + time.perf_counter() - t
        return out
    setattr(owner, name, run)
timed(C, "party_data", "load data")
timed(C.PartyStore, "load_active", "restore state")
timed(C.PartyStore, "load_passive", "restore state")
timed(C.PartyStore, "save_party", "save state")
timed(protocol, "passive_step", "party's work")
timed(protocol, "active_step", "party's work")
timed(C.messages, "encode_from_passive", "encode reply")
timed(C.messages, "encode_from_active", "encode reply")
t_call = time.perf_counter()
C.app(msg, context)
t_end = time.perf_counter()
times["restore state"] -= times.get("load data", 0.0)
times.update({{"import flwr": t_flwr - t0, "import torch": t_torch - t_flwr, "import flwr_vproto": t_ours - t_torch,
              "import torch._dynamo (Adam)": t_dynamo - t_ours,
              "handler total": t_end - t_call}})
print("TIMES" + __import__("json").dumps(times))
"""


def child(folder: Path, index: int) -> dict[str, float]:
    code = CHILD.format(bench=str(Path(__file__).parent), replay=str(folder / "replay.pkl"), index=index)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    wall = time.perf_counter() - t
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("TIMES"))
    return {**json.loads(line[5:]), "process wall": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(folder)
        print(f"load before: {' / '.join(f'{v:.1f}' for v in os.getloadavg())}")
        rows = {0: [], 1: []}
        for _ in range(a.repeats):
            for index in (1, 0):  # passive first, as in a round
                rows[index].append(child(folder, index))
        print(f"load after: {' / '.join(f'{v:.1f}' for v in os.getloadavg())}")
    keys = ["process wall", "import flwr", "import torch", "import flwr_vproto", "import torch._dynamo (Adam)",
            "handler total", "load data",
            "restore state", "party's work", "save state", "encode reply"]
    print(f"| seconds (median of {a.repeats}) | passive1's message | active's message |")
    print("|---|---|---|")
    for k in keys:
        print(f"| {k} | {median(r.get(k, 0.0) for r in rows[1]):.2f} | {median(r.get(k, 0.0) for r in rows[0]):.2f} |")


if __name__ == "__main__":
    main()
