"""One exchange of README's "your own ServerApp" (``flwr_vproto/examples/own_server_app.py``: digits, 5 % aligned,
3 rounds in 1 exchange) in Flower's ``run_simulation``, with Flower's default Ray resources (2 CPUs per SuperNode)
or with :func:`flwr_vproto.simulation_backend` (one CPU each, the package's thread policy).

    python benchmarks/bench_own_server_app.py default      # backend_config left out, as Flower's own examples do
    python benchmarks/bench_own_server_app.py package      # backend_config=simulation_backend()

Prints the exchange's seconds (the strategy's record: its two phases' messages and the parties' work) and the wall
time of the whole simulation (Ray's start, set-up and the exchange), one line, with ``uptime``'s load before it.
"""

from __future__ import annotations

import os
import sys
import time

from flwr.simulation import run_simulation

from flwr_vproto import VerticalProtoStrategy, simulation_backend
from flwr_vproto.examples import own_server_app as example


def main(mode: str) -> None:
    records: list[dict[str, float]] = []

    class Timed(VerticalProtoStrategy):
        def exchange_record(self, server_round, exchange):  # type: ignore[no-untyped-def]
            record = super().exchange_record(server_round, exchange)
            records.append(record)
            return record

    example.VerticalProtoStrategy = Timed  # the example's ServerApp builds this strategy
    backend = simulation_backend() if mode == "package" else None
    load = os.getloadavg()[0]
    start = time.perf_counter()
    run_simulation(server_app=example.app, client_app=example.client_app, num_supernodes=2,
                   **({"backend_config": backend} if backend else {}))
    wall = time.perf_counter() - start
    print(f"{mode}: one exchange {records[0]['seconds']:.1f} s, simulation {wall:.1f} s "
          f"(load {load:.2f} before; test accuracy as the example prints above)")


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("default", "package"):
        raise SystemExit("usage: python benchmarks/bench_own_server_app.py default|package")
    main(sys.argv[1])
