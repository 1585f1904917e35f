"""Sweeps measured: an Optuna search against the shipped default, and a parallel launcher against one-by-one jobs.

1. **search** (``--part search``): a ``--trials``-trial Optuna search (``+hpo=vproto``, the shipped search space)
   on adult at 5 % aligned, 20 rounds, in-process, seed 0, maximising validation accuracy; then ``--seeds`` fresh
   seeds (not the search seed) of the best trial's configuration and of the shipped default. Reported: the best
   validation score and its test score, the default's on the search seed, and test accuracy mean ± sd over the
   fresh seeds for both.
2. **launchers** (``--part launchers``): one 4-job sweep (digits, in-process, 10 rounds, seeds 0-3) run by Hydra's
   basic launcher (one job after the other; also with ``runner.threads=1``) and by ``hydra/launcher=joblib`` with
   ``n_jobs=2`` and ``n_jobs=4``, taking turns in the same run, ``--repeats`` times. Reported: wall time of each
   whole sweep process.

    python benchmarks/bench_sweeps.py --out benchmarks/sweeps_results.md

The machine may be shared: ``uptime`` is recorded before and after each command, and every command is written out.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONPATH": str(REPO)}
SEARCH = ["engine=inprocess", "dataset=adult", "dataset.aligned_fraction=0.05", "num_rounds=20",
          "runner.save_models=false"]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def sweep(overrides: list[str], sweep_dir: Path, log: list[str], env: dict[str, str] | None = None) -> float:
    """One ``run_simulation.py -m`` process; returns its wall time and logs command and load before/after."""
    cmd = [sys.executable, "run_simulation.py", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    extra = env or {}
    shown = " ".join(f"{k}={v}" for k, v in extra.items()) + (" " if extra else "")
    log.append(f"- `{shown}python run_simulation.py -m {' '.join(shlex.quote(o) for o in overrides)} "
               f"hydra.sweep.dir=...`")
    log.append(f"  - before: `{uptime()}`")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, **QUIET_ENV, **extra})
    wall = time.perf_counter() - t0
    log.append(f"  - after ({wall:.1f} s): `{uptime()}`")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall


def finals(sweep_dir: Path) -> list[dict[str, Any]]:
    """``final`` and ``selection`` of every job of a sweep, by job number."""
    out = []
    for f in sorted(sweep_dir.glob("*/results.json"), key=lambda p: int(p.parent.name)):
        r = json.loads(f.read_text())
        out.append({"job": int(f.parent.name), "seed": r["config"]["seed"], **r["final"],
                    "val_score": r["selection"]["val_score"]})
    return out


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def part_search(work: Path, trials: int, seeds: list[int], log: list[str]) -> list[str]:
    env = {"OMP_NUM_THREADS": "1"}  # one core: the other is left to whoever shares the machine
    study = work / "optuna"
    work.mkdir(parents=True, exist_ok=True)  # the SQLite file's folder
    sweep(["+hpo=vproto", *SEARCH, "seed=0", f"hydra.sweeper.n_trials={trials}",
           f"hydra.sweeper.storage=sqlite:///{work / 'optuna.db'}", "hydra.sweeper.study_name=adult5"],
          study, log, env)
    res = yaml.safe_load((study / "optimization_results.yaml").read_text())
    best_params = {k: v for k, v in res["best_params"].items()}
    trials_found = finals(study)
    best = max(trials_found, key=lambda t: (t["val_score"], -t["job"]))
    assert abs(best["val_score"] - float(res["best_value"])) < 1e-9, (best, res)
    best_overrides = [f"{k}={v}" for k, v in best_params.items()]
    seed_list = ",".join(map(str, seeds))
    sweep([*SEARCH, f"seed=0,{seed_list}"], work / "default", log, env)
    sweep([*SEARCH, *best_overrides, f"seed={seed_list}"], work / "best", log, env)
    default = finals(work / "default")
    tuned = finals(work / "best")
    d0 = [d for d in default if d["seed"] == 0][0]
    d_fresh = [d for d in default if d["seed"] in seeds]
    nan = float("nan")
    lines = [
        f"Search: {trials} trials, best validation accuracy {best['val_score']:.4f} (trial {best['job']}), its test "
        f"accuracy {best['accuracy']:.4f}; the default on the same seed: validation {d0['val_score']:.4f}, test "
        f"{d0['accuracy']:.4f}.",
        f"Best configuration: `{' '.join(best_overrides)}`",
        "",
        "| configuration | seeds | validation accuracy | test accuracy | test AUC |",
        "|---|---|---|---|---|",
        f"| shipped default | {seed_list} | {mean_sd([d['val_score'] for d in d_fresh])} | "
        f"{mean_sd([d['accuracy'] for d in d_fresh])} | {mean_sd([d.get('auc', nan) for d in d_fresh])} |",
        f"| best of the search | {seed_list} | {mean_sd([d['val_score'] for d in tuned])} | "
        f"{mean_sd([d['accuracy'] for d in tuned])} | {mean_sd([d.get('auc', nan) for d in tuned])} |",
        "",
        "Trials (validation accuracy, test accuracy): "
        + ", ".join(f"{t['job']}: {t['val_score']:.4f}/{t['accuracy']:.4f}" for t in trials_found),
        "Per seed, test accuracy: default " + ", ".join(f"{d['seed']}: {d['accuracy']:.4f}" for d in d_fresh)
        + "; best " + ", ".join(f"{d['seed']}: {d['accuracy']:.4f}" for d in tuned),
    ]
    return lines


def part_launchers(work: Path, repeats: int, log: list[str]) -> list[str]:
    base = ["engine=inprocess", "num_rounds=10", "seed=0,1,2,3", "runner.save_models=false"]
    variants = (("basic (one job after the other)", []),
                ("basic, runner.threads=1", ["runner.threads=1"]),
                ("joblib, n_jobs=2", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]),
                ("joblib, n_jobs=4", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=4"]))
    walls: dict[str, list[float]] = {name: [] for name, _ in variants}
    info: dict[str, tuple[int, str, str]] = {}
    for rep in range(repeats):  # the variants take turns, so a change in load hits all of them
        for k, (name, extra) in enumerate(variants):
            out = work / f"launch-{rep}-{k}"
            walls[name].append(sweep([*base, *extra], out, log))
            jobs = [json.loads(f.read_text()) for f in sorted(out.glob("*/results.json"))]
            threads = sorted({j.get("job", {}).get("threads", "default") for j in jobs}, key=str)
            info[name] = (len(jobs), ", ".join(map(str, threads)), mean_sd([j["final"]["accuracy"] for j in jobs]))
    rows = [f"| {name} | {' / '.join(f'{w:.1f}' for w in walls[name])} | {info[name][0]} | {info[name][1]} | "
            f"{info[name][2]} |" for name, _ in variants]
    return ["| launcher | sweep wall s (each repeat) | jobs | torch threads per job | test accuracy (mean ± sd) |",
            "|---|---|---|---|---|", *rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["search", "launchers", "all"], default="all")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--repeats", type=int, default=2, help="launchers: runs of each variant, taking turns")
    ap.add_argument("--work", type=Path, default=Path("outputs") / "bench_sweeps")
    ap.add_argument("--out", type=Path, default=None, help="append the markdown here (default: print only)")
    args = ap.parse_args()
    work = args.work.resolve() / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True)
    md = [f"### bench_sweeps.py --part {args.part} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} cores)", ""]
    log: list[str] = []
    if args.part in ("search", "all"):
        md += part_search(work / "search", args.trials, args.seeds, log) + [""]
    if args.part in ("launchers", "all"):
        md += part_launchers(work / "launchers", args.repeats, log) + [""]
    md += ["Commands, with `uptime` before and after each:", "", *log, ""]
    text = "\n".join(md)
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
