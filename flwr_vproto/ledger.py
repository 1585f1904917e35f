"""The active party's own record of what the server is not told (metrics policy ``progress``, design §2). No Flower.

Under ``progress`` the active party reports only label-free progress to the server; every metric it would have
reported under ``full`` (its losses, validation and test scores, calibration, privacy, and the passives' own
metrics, which reach it sealed) goes, one JSON line per exchange, to ``active_rounds.jsonl`` in its results folder
(node-config ``results-dir`` in a deployment; the run's ``active/`` folder in simulation, where the researcher owns
every node and the runner reads it back to write the same ``results.json`` as ever). After the last exchange the
active party also writes its own ``results.json`` there, with the same rounds, selection and final metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

ROUNDS_FILE = "active_rounds.jsonl"


def rounds_file(folder: str | Path) -> Path:
    return Path(folder) / ROUNDS_FILE


def reset(folder: str | Path) -> None:
    """A fresh run starts an empty record (a resumed one keeps it: later lines supersede)."""
    path = rounds_file(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")


def append(folder: str | Path, rnd: int, metrics: dict[str, float]) -> None:
    """Exchange ``rnd``'s metrics, one line (floats round-trip exactly through ``repr``)."""
    path = rounds_file(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"exchange": int(rnd), "metrics": metrics}) + "\n")


def read(folder: str | Path) -> dict[int, dict[str, float]]:
    """Every exchange's metrics by exchange number (a line written later for the same exchange wins: a retried or
    resumed exchange)."""
    path = rounds_file(folder)
    out: dict[int, dict[str, float]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            out[int(entry["exchange"])] = {k: float(v) for k, v in entry["metrics"].items()}
    return out
