"""Benchmark runs in worker processes, each result appended to a JSON-lines file as it finishes.

Shared by the ``bench_*.py`` sweeps: an interrupted sweep resumes, because runs whose key is already in the file
are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

KEY_FIELDS = ("tag", "dataset", "fraction", "seed")


def run_key(job: dict, fields: tuple[str, ...] = KEY_FIELDS) -> str:
    """What identifies a run in the file: its tag, cell and seed."""
    return json.dumps({k: job[k] for k in fields}, sort_keys=True)


def run_pending(out: Path, jobs: list[dict], run_one: Callable[[dict], dict], workers: int,
                fields: tuple[str, ...] = KEY_FIELDS) -> list[dict]:
    """Run the ``jobs`` not yet in ``out`` with ``workers`` processes, append each result; return every record."""
    done = {run_key(json.loads(line), fields) for line in out.read_text().splitlines()} if out.exists() else set()
    todo = [j for j in jobs if run_key(j, fields) not in done]
    print(f"{len(todo)} runs to do ({len(done)} already in {out})", flush=True)
    with ProcessPoolExecutor(workers) as pool, out.open("a") as fh:
        for r in pool.map(run_one, todo):
            fh.write(json.dumps(r) + "\n")
            fh.flush()
            print(f"{r['tag']:>12} {r['dataset']:>13} {r['fraction']:.2f} seed {r['seed']}: "
                  f"acc {r['final']['accuracy']:.4f} ({r['seconds']}s)", flush=True)
    return [json.loads(line) for line in out.read_text().splitlines()]
