"""Few exchanges (``exchange.*``, README "Few exchanges"): accuracy against the number of message exchanges, and a
loopback deployment of the default next to one exchange per round.

Accuracy (in-process engine; the Flower engine gives the same numbers, tests/test_exchanges.py). Per dataset,
aligned fraction and seed:

* ``default``: vproto as shipped (``defence=no_gradients``: no passive ever receives anything, so
  ``exchange.count=null`` runs it in one exchange, with exactly the numbers of one per round);
* ``vanilla`` (classic split learning, gradient rows every round, ``defence=none``) and ``local`` (the active party
  alone);
* ``x<E>``: vproto releasing gradient rows (``defence=none``) in ``E`` exchanges with the few-shot preset's local
  work (``method=vproto_fewshot``: ``--passes`` proximal passes per gradient message, ``--schedule``); ``x<R>``
  (``R = num_rounds``) is one exchange per round, the method as designed.

    python benchmarks/bench_exchanges.py accuracy --datasets adult digits fashion_mnist --fractions 0.01 0.05 \
        --seeds 0 1 2 --exchanges 2 3 5 10 --out benchmarks/exchanges.jsonl

Deployment (``flwr_vproto/deploy/local.py``: a SuperLink and one SuperNode per party on loopback, ``flwr run``),
digits and adult as per-party CSV files, the same config in one exchange (today's default) and one exchange per
round (the default before it), one after the other in one benchmark run: wall time from ``flwr run`` to
``results.json``, messages and bytes.

    python benchmarks/bench_exchanges.py deploy --datasets digits adult --rounds 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics as st
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from jsonl_runs import run_pending

REPO = Path(__file__).resolve().parents[1]
ROUNDS = {"adult": 20, "fashion_mnist": 20, "digits": 40}  # each dataset's num_rounds (conf/dataset/*.yaml)
NONE = {"defence": {"release_rounds": None}}  # defence=none: gradient rows every exchange


def run_one(job: dict) -> dict:
    """One training run in a worker process (one torch thread: the workers share the cores)."""
    import torch

    torch.set_num_threads(1)
    from flwr_vproto import exchanges
    from flwr_vproto.config import config_from_dict
    from flwr_vproto.inprocess import run_inprocess

    cfg = config_from_dict({"engine": "inprocess", "seed": job["seed"], "num_rounds": job["rounds"],
                            "dataset": {"name": job["dataset"], "aligned_fraction": job["fraction"]},
                            **job["config"]})
    t0 = time.perf_counter()
    res = run_inprocess(cfg)
    return {**job, "final": res["final"], "seconds": round(time.perf_counter() - t0, 1),
            "exchanges": exchanges.count(cfg), "records": len(res["rounds"])}


def variants(rounds: int, counts: list[int], passes: int, schedule: str, baselines: bool = True,
             suffix: str = "", reach: float | None = None) -> dict[str, dict]:
    """Tag -> config overrides of one (dataset, fraction, seed) cell (``suffix``: of the ``x<E>`` tags, to compare
    local-work settings in one file)."""
    out: dict[str, dict] = {
        "default": {},
        "vanilla": {"method": {"name": "vanilla"}, **NONE},
        "local": {"method": {"name": "local"}},
    } if baselines else {}
    for e in [*counts, *([rounds] if baselines else [])]:
        local_work = {"passive_passes": passes, "schedule": schedule,
                      **({} if reach is None else {"passive_reach": reach})} if e < rounds else {}
        out[f"x{e}{suffix}"] = {"exchange": {"count": e, **local_work}, **NONE}
    return out


def accuracy(args: argparse.Namespace) -> None:
    jobs = []
    for ds in args.datasets:
        rounds = ROUNDS[ds]
        for frac in args.fractions:
            for seed in args.seeds:
                tagged = variants(rounds, sorted(set(args.exchanges)), args.passes, args.schedule,
                                  not args.no_baselines, args.suffix, args.reach)
                tagged.update({t: json.loads(js) for t, _, js in (v.partition("=") for v in args.variant)})
                for tag, conf in tagged.items():
                    jobs.append({"tag": tag, "dataset": ds, "fraction": frac, "seed": seed, "rounds": rounds,
                                 "config": conf})
    rows = run_pending(Path(args.out), jobs, run_one, args.workers)
    print(table(rows))
    if args.plots:
        print("\n".join(str(p) for p in plot(rows, Path(args.plots))))


def table(rows: list[dict]) -> str:
    """Markdown: one row per (dataset, fraction), mean test accuracy (x 100) and std over seeds per tag."""
    acc: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    tags: list[str] = []
    for r in rows:
        acc[(r["dataset"], r["fraction"])][r["tag"]].append(100 * r["final"]["accuracy"])
        if r["tag"] not in tags:
            tags.append(r["tag"])
    xs = sorted((t for t in tags if t.startswith("x")), key=lambda t: (int(t[1:].split("-")[0]), t))
    order = [t for t in ("default", "vanilla", "local") if t in tags] + xs + [t for t in tags if t not in xs and t
                                                                              not in ("default", "vanilla", "local")]
    lines = ["| dataset | aligned | " + " | ".join(order) + " |", "|---|---|" + "---|" * len(order)]
    for (ds, frac), by in sorted(acc.items()):
        cells = []
        for t in order:
            v = by.get(t, [])
            cells.append("" if not v else f"{st.mean(v):.1f} ± {st.pstdev(v):.1f}" if len(v) > 1 else f"{v[0]:.1f}")
        lines.append(f"| {ds} | {frac:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], folder: Path) -> list[Path]:
    """Per dataset: mean test accuracy against the number of exchanges (``default`` is one exchange), one line per
    aligned fraction with its std over seeds, vanilla and local dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        acc[(r["dataset"], r["fraction"])][r["tag"]].append(100 * r["final"]["accuracy"])
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for ds in sorted({d for d, _ in acc}):
        fig, ax = plt.subplots(figsize=(6, 4))
        for (d, frac), by in sorted(acc.items()):
            if d != ds:
                continue
            pts = sorted([(1, by["default"])] + [(int(t[1:]), v) for t, v in by.items()
                                                  if t[:1] == "x" and t[1:].isdigit()])
            line = ax.errorbar([e for e, _ in pts], [st.mean(v) for _, v in pts],
                               yerr=[st.pstdev(v) for _, v in pts], marker="o", capsize=3,
                               label=f"vproto, {frac:g} aligned")
            for tag, style in (("vanilla", "--"), ("local", ":")):
                if by.get(tag):
                    ax.axhline(st.mean(by[tag]), linestyle=style, color=line[0].get_color(), alpha=0.6,
                               label=f"{tag}, {frac:g}")
        ax.set_xscale("log")
        ticks = sorted({1, *(int(t[1:]) for (d, _), by in acc.items() if d == ds for t in by
                             if t[:1] == "x" and t[1:].isdigit())})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("message exchanges after PSI (1: the default; last: one per round)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{ds}: accuracy against exchanges (rows released when > 1)", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = folder / f"exchanges_{ds}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out


# ------------------------------------------------------------------------------------------------ deployment
def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def deploy(args: argparse.Namespace) -> None:
    from flwr_vproto.deploy import local as dep

    rows = []
    for ds in args.datasets:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            paths = dep.write_party_csvs(work / "data", 1, dataset=ds)
            with dep.LocalDeployment(work / "flwr", dep.node_configs(paths)) as d:
                for tag, count in (("one exchange per round", args.rounds), ("default (one exchange)", None)):
                    before = _load()
                    t0 = time.perf_counter()
                    res = d.run_app({"dataset.name": "csv", "num_rounds": args.rounds,
                                     "exchange.count": "null" if count is None else count},
                                    work / f"out-{count}", timeout=args.timeout)
                    wall = time.perf_counter() - t0
                    recs = res["rounds"]
                    rows.append({"dataset": ds, "tag": tag, "wall": round(wall, 1), "exchanges": len(recs),
                                 "setup": round(res["flower"]["setup_seconds"], 1),
                                 "messages": int(sum(r["messages"] for r in recs) + res["flower"]["setup_messages"]),
                                 "bytes": sum(v for r in recs for k, v in r.items() if k.startswith("bytes/"))
                                 + sum(res["flower"]["setup_bytes"].values()),
                                 "accuracy": res["final"]["accuracy"], "load": f"{before} -> {_load()}"})
                    print(json.dumps(rows[-1]), flush=True)
    lines = ["| dataset | run | exchanges | `flwr run` to results | setup | messages | bytes | test accuracy | load |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['tag']} | {r['exchanges']} | {r['wall']:.1f} s | {r['setup']:.1f} s | "
                     f"{r['messages']} | {r['bytes'] / 2**20:.2f} MiB | {r['accuracy']:.4f} | {r['load']} |")
    print("\n".join(lines))
    if args.out:
        with open(args.out, "a") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--datasets", nargs="+", default=["adult", "digits", "fashion_mnist"])
    a.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.05])
    a.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    a.add_argument("--exchanges", nargs="*", type=int, default=[2, 3, 5, 10],
                   help="E < num_rounds of the x<E> runs (1 is the default run: the same numbers, tested)")
    a.add_argument("--passes", type=int, default=3, help="exchange.passive_passes of the x<E> runs")
    a.add_argument("--schedule", default="even", help="exchange.schedule of the x<E> runs")
    a.add_argument("--reach", type=float, default=None, help="exchange.passive_reach of the x<E> runs")
    a.add_argument("--no-baselines", action="store_true", help="only the x<E> runs with E < num_rounds")
    a.add_argument("--suffix", default="", help="appended to the x<E> tags (e.g. -p3-even)")
    a.add_argument("--variant", action="append", default=[], help="TAG=JSON: one more run of nested config overrides")
    a.add_argument("--plots", default=None, help="folder for one accuracy-against-exchanges plot per dataset")
    a.add_argument("--workers", type=int, default=2)
    a.add_argument("--out", default="benchmarks/exchanges.jsonl")
    d = sub.add_parser("deploy")
    d.add_argument("--datasets", nargs="+", default=["digits", "adult"])
    d.add_argument("--rounds", type=int, default=20)
    d.add_argument("--timeout", type=float, default=1200.0)
    d.add_argument("--out", default="benchmarks/exchanges_deploy.jsonl")
    args = ap.parse_args()
    accuracy(args) if args.what == "accuracy" else deploy(args)


if __name__ == "__main__":
    main()
