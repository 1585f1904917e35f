"""The floor of a Flower simulation on this machine: the wall time of engine=flower's message pattern with no work.

2 simulated SuperNodes (Ray backend, one CPU each, as run_simulation.py configures them), 20 rounds of two
sequential one-message hops (a passive party, then the active party), each ClientApp importing PyTorch and replying
at once. Compare its total with the in-process engine's whole run (BENCHMARKS.md §3) to see how much of
engine=flower's overhead is Flower's own.

    python benchmarks/bench_flower_floor.py
"""

import time

T0 = time.perf_counter()  # imports count: engine=flower pays for them too

import logging  # noqa: E402
import os  # noqa: E402

import torch  # noqa: E402, F401  (the parties import PyTorch too)
from flwr.app import ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

ROUNDS = 20
client = ClientApp()
server = ServerApp()
marks: dict[str, float] = {}


@client.query("ping")
def ping(msg: Message, context: Context) -> Message:

    return Message(RecordDict({"c": ConfigRecord({"ok": 1})}), reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    marks["start"] = time.perf_counter()
    while len(list(grid.get_node_ids())) < 2:
        time.sleep(0.1)
    nodes = sorted(grid.get_node_ids())
    marks["nodes"] = time.perf_counter()
    for r in range(ROUNDS):
        for n in nodes:  # one hop to each party in turn, as a vproto round does
            list(grid.send_and_receive([Message(RecordDict({"c": ConfigRecord({"r": r})}), n, "query.ping")]))
    marks["end"] = time.perf_counter()


if __name__ == "__main__":
    logging.getLogger("flwr").setLevel("ERROR")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    run_simulation(server_app=server, client_app=client, num_supernodes=2,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"logging_level": "ERROR", "log_to_driver": False,
                                                 "include_dashboard": False}})
    t1 = time.perf_counter()
    hops = marks["end"] - marks["nodes"]
    print(f"imports+start {marks['start'] - T0:.1f}s, nodes {marks['nodes'] - marks['start']:.1f}s, "
          f"{2 * ROUNDS} hops {hops:.1f}s ({hops / ROUNDS:.2f}s/round), shutdown {t1 - marks['end']:.1f}s, "
          f"total {t1 - T0:.1f}s")
