"""Passive pre-training (``method.research.passive_pretrain``) when the passives get few or no embedding gradients.

Label protection may send a passive party gradient rows only in the first rounds, or never; then its encoder is
(mostly) what it learned on its own rows before round 1. This sweep measures test accuracy (at the best validation
round, in-process engine, one torch thread) for each pre-training and each gradient regime:

* ``all``: the protocol as it is (gradients every round);
* ``first3``: the passives apply the gradients of rounds 1..3 only (delivered in rounds 2..4);
* ``none``: the passives never apply a gradient.

The regimes leave the protocol code alone: the run patches :meth:`flwr_vproto.protocol.InTransit.to_passive`, the
one place a passive's message of a round is built, so that from round ``R + 2`` on the message carries no
``gradients`` (``None``, as in round 1). A passive without gradients takes no optimiser step that round (the third
loss is off by default), so its encoder stays exactly where pre-training and the delivered rounds left it. The
active party still trains and computes gradients as usual: only their delivery is cut.

Contrastive settings (``--temperature``, ``--corruption``) patch the keyword defaults of
:func:`flwr_vproto.method.pretrain.contrastive` inside the worker process; they are part of the run's tag.

    python benchmarks/bench_pretrain.py --datasets digits adult --seeds 0 1 2 --pretrain dae contrastive \
        --regimes all first3 none --out benchmarks/pretrain.jsonl

Results are appended as JSON lines (runs already in ``--out`` are skipped) and summarised as a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

from jsonl_runs import run_pending

REGIMES = {"all": None, "first3": 3, "none": 0}
ROUNDS = {"digits": 40, "adult": 20, "fashion_mnist": 20}


def _limit_gradients(last_round: int | None) -> None:
    """Passives apply the gradients of active rounds ``1..last_round`` only (``None``: every round).

    A worker process runs many jobs: the method is restored first, so one job's regime never leaks into the next.
    """
    from flwr_vproto import protocol

    original = protocol.InTransit.__dict__.get("_bench_original", protocol.InTransit.to_passive)
    protocol.InTransit._bench_original = original  # type: ignore[attr-defined]
    protocol.InTransit.to_passive = original  # type: ignore[method-assign]
    if last_round is None:
        return

    def to_passive(self, k, rnd, cfg, setup=None):  # noqa: ANN001, ANN202 - same signature as the method
        msg = original(self, k, rnd, cfg, setup)
        # round rnd carries the gradients of round rnd - 1
        return dataclasses.replace(msg, gradients=None) if rnd - 1 > last_round else msg

    protocol.InTransit.to_passive = to_passive  # type: ignore[method-assign]


def run_one(job: dict) -> dict:
    """One run in a worker process (one torch thread)."""
    import torch

    torch.set_num_threads(1)
    from flwr_vproto.config import config_from_dict
    from flwr_vproto.inprocess import run_inprocess
    from flwr_vproto.method import pretrain

    _limit_gradients(REGIMES[job["regime"]])
    defaults = list(pretrain.contrastive.__defaults__)  # (input_shape, temperature, corruption)
    defaults[1], defaults[2] = job["temperature"], job["corruption"]
    pretrain.contrastive.__defaults__ = tuple(defaults)
    method = {"name": "vproto", "passive_pretrain_epochs": job["epochs"],
              "research": {"passive_pretrain": job["pretrain"]}}
    cfg = config_from_dict({"engine": "inprocess", "seed": job["seed"], "num_rounds": job["rounds"],
                            "dataset": {"name": job["dataset"], "aligned_fraction": job["fraction"]},
                            "method": method})
    t0 = time.perf_counter()
    res = run_inprocess(cfg)
    first = res["rounds"][0] if res.get("rounds") else {}
    return {**job, "final": res["final"], "seconds": round(time.perf_counter() - t0, 1),
            "pretrain_loss": first.get("passive1/pretrain_loss")}


def summarise(rows: list[dict]) -> str:
    """Markdown: one row per (dataset, pretraining tag), test accuracy mean ± sd per gradient regime."""
    cells: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in rows:
        key = (r["dataset"], r["tag"].rsplit("/", 1)[0])
        cells.setdefault(key, {}).setdefault(r["regime"], []).append(r["final"]["accuracy"])
    lines = ["| dataset | pre-training | " + " | ".join(REGIMES) + " |", "|---|---|" + "---|" * len(REGIMES)]
    for (ds, tag), by in sorted(cells.items()):
        out = []
        for reg in REGIMES:
            v = by.get(reg, [])
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            out.append(f"{statistics.mean(v):.4f} ± {sd:.4f} (n={len(v)})" if v else "")
        lines.append(f"| {ds} | {tag} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["digits", "adult"])
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--pretrain", nargs="+", default=["dae", "contrastive"])
    ap.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--temperature", type=float, default=None, help="default: pretrain.TEMPERATURE")
    ap.add_argument("--corruption", type=float, default=None, help="default: pretrain.CORRUPTION")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/pretrain.jsonl"))
    ap.add_argument("--summary-only", action="store_true")
    a = ap.parse_args()
    from flwr_vproto.method import pretrain

    temp = pretrain.TEMPERATURE if a.temperature is None else a.temperature
    corr = pretrain.CORRUPTION if a.corruption is None else a.corruption
    jobs = []
    for ds in a.datasets:
        for p in a.pretrain:
            for reg in a.regimes:
                for seed in a.seeds:
                    extra = f" t{temp:g} c{corr:g}" if "contrastive" in p else ""
                    tag = f"{p} e{a.epochs}{extra}/{reg}"
                    jobs.append({"tag": tag, "pretrain": p, "regime": reg, "epochs": a.epochs, "temperature": temp,
                                 "corruption": corr, "dataset": ds, "fraction": a.fraction, "seed": seed,
                                 "rounds": ROUNDS[ds]})
    if a.summary_only:
        rows = [json.loads(line) for line in a.out.read_text().splitlines()]
    else:
        rows = run_pending(a.out, jobs, run_one, workers=1)
    print(summarise(rows))


if __name__ == "__main__":
    main()
