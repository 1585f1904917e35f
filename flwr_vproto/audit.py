"""Label-leakage audit: what an honest-but-curious passive party can infer about the labels of the users it shares
with the active party, from what it legitimately receives. No Flower here.

Each round a joint passive receives one gradient row per aligned training user (dLoss/dz of the embedding it sent,
in the shared order) and, when its third loss is on, the second prototypes. The attacks scored here are those of
Li et al., "Label Leakage and Protection in Two-party Split Learning" (ICLR 2022), which need nothing but those
rows:

* **norm** (binary tasks): score each user by the L2 norm of its gradient row. With imbalanced classes the rarer
  class's rows are larger (its examples are the ones the model gets wrong), so the norm ranks users by label.
* **direction** (binary tasks): score each user by the cosine between its row and the largest-norm row. For a
  two-class output the rows of one class point one way and those of the other the opposite way.
* **projection** (binary tasks; added here, stronger than the two above under noise): score each user by its row's
  projection on the top principal direction of all rows. The label signal lives in a few directions while noise
  added isotropically spreads over all of them, so this reads labels through noise that hides them from the
  norm and direction attacks (BENCHMARKS.md §8).
* **cluster** (any number of classes): k-means (k = classes) on the unit-normalised rows, clusters matched to
  classes by the assignment that maximises agreement (Hungarian); reported as accuracy next to the majority share,
  the accuracy of guessing without the rows. For two classes it is the direction attack without a reference row.

The attacker does not know which end of a score is "positive", so AUCs are reported as ``max(AUC, 1 - AUC)``:
0.5 means nothing leaks, 1.0 means every label can be read off. With few aligned users even a leak-free round scores
above 0.5 (and k-means matched to classes above the majority share), so each round also reports the same attacks
against a fixed shuffle of the labels (``auc_chance``, ``cluster_chance``): the level that means "nothing found".

Recording: with ``audit.record=true`` the active party — which knows exactly what it sends, and the true labels —
writes, after every round that releases gradients, one ``round-<r>.npz`` into the audit folder: each passive's
gradient rows (and second prototypes when sent) and the true labels of the aligned training users, for scoring only.
The folder stays with the active party. ``python -m flwr_vproto.audit <run dir>`` scores it (and adds the summary to
``results.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

LABELS = "labels"  # npz entry: true labels of the aligned training users (shared order), for scoring only
_ROUND_FILE = re.compile(r"^round-(\d+)\.npz$")


# ------------------------------------------------------------------------------------------------ attacks
def norm_scores(gradients: np.ndarray) -> np.ndarray:
    """The norm attack's score of each row: its L2 norm."""
    return np.linalg.norm(np.asarray(gradients, dtype=np.float64), axis=1)


def direction_scores(gradients: np.ndarray) -> np.ndarray:
    """The direction attack's score of each row: cosine similarity to the largest-norm row."""
    g = np.asarray(gradients, dtype=np.float64)
    norms = np.linalg.norm(g, axis=1)
    ref = g[int(np.argmax(norms))]
    return g @ ref / np.maximum(norms * np.linalg.norm(ref), 1e-30)


def projection_scores(gradients: np.ndarray) -> np.ndarray:
    """The projection attack's score of each row: its coordinate on the top principal direction of the centred rows."""
    g = np.asarray(gradients, dtype=np.float64)
    centred = g - g.mean(axis=0)
    top = np.linalg.svd(centred, full_matrices=False)[2][0]
    return centred @ top


def leak_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """``max(AUC, 1 - AUC)`` of ``scores`` for the binary ``labels``; NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if np.unique(labels).size != 2:
        return math.nan
    auc = float(roc_auc_score(labels, scores))
    return max(auc, 1.0 - auc)


def cluster_accuracy(gradients: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0) -> float:
    """Accuracy of k-means clusters of the unit-normalised rows, each cluster matched to one class (Hungarian)."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans

    g = np.asarray(gradients, dtype=np.float64)
    unit = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-30)
    k = min(num_classes, len(np.unique(unit, axis=0)))
    if k < 2:
        return majority_share(labels)
    clusters = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(unit)
    agree = np.zeros((k, num_classes))
    np.add.at(agree, (clusters, np.asarray(labels)), 1)
    rows, cols = linear_sum_assignment(-agree)
    return float(agree[rows, cols].sum() / len(labels))


def majority_share(labels: np.ndarray) -> float:
    """Accuracy of always guessing the most frequent class: what a passive knows without any gradient."""
    labels = np.asarray(labels)
    return float(np.bincount(labels).max() / len(labels)) if labels.size else math.nan


def attack(gradients: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Every applicable attack on one passive's gradient rows of one round (users with unknown labels skipped)."""
    labels = np.asarray(labels)
    known = labels >= 0
    g, y = np.asarray(gradients)[known], labels[known]
    shuffled = np.random.default_rng(0).permutation(y)  # the same attacks with nothing to find: their chance level
    out = {"cluster_accuracy": cluster_accuracy(g, y, num_classes), "majority_share": majority_share(y),
           "cluster_chance": cluster_accuracy(g, shuffled, num_classes)}
    if num_classes == 2:
        scores = {"norm": norm_scores(g), "direction": direction_scores(g), "projection": projection_scores(g)}
        out.update({f"{name}_auc": leak_auc(score, y) for name, score in scores.items()})
        out["auc_chance"] = max(leak_auc(score, shuffled) for score in scores.values())
    return out


# ------------------------------------------------------------------------------------------------ recording
def record_round(folder: str | Path, rnd: int, gradients: list[np.ndarray], labels: np.ndarray,
                 prototypes: list[np.ndarray] | None = None) -> Path:
    """Write what every passive receives from round ``rnd`` (passive ``k`` = entry ``k - 1``) and the true labels."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {LABELS: np.asarray(labels, dtype=np.int64)}
    for k, g in enumerate(gradients, start=1):
        arrays[f"passive{k}.gradients"] = np.asarray(g, dtype=np.float32)
    for k, p in enumerate(prototypes or [], start=1):
        arrays[f"passive{k}.prototypes"] = np.asarray(p, dtype=np.float32)
    path = folder / f"round-{rnd}.npz"
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


def recorded_rounds(folder: str | Path) -> list[int]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _ROUND_FILE.match(p.name)))


def audit_folder(folder: str | Path, num_classes: int) -> dict[str, Any]:
    """Score every recorded round: ``{"rounds": [{round, passive, attacks...}], "summary": {...}}``."""
    rounds = recorded_rounds(folder)
    if not rounds:
        raise FileNotFoundError(f"{folder}: no round-<r>.npz files; run with audit.record=true first")
    rows = []
    for rnd in rounds:
        with np.load(Path(folder) / f"round-{rnd}.npz") as data:
            labels = data[LABELS]
            for key in sorted(k for k in data.files if k.endswith(".gradients")):
                rows.append({"round": rnd, "passive": key.split(".")[0],
                             **attack(data[key], labels, num_classes)})
    return {"rounds": rows, "summary": summarise(rows)}


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Worst case over rounds and passives of each attack (what the run's promise must hold against), and the mean."""
    out: dict[str, float] = {}
    for key in ("norm_auc", "direction_auc", "projection_auc", "auc_chance", "cluster_accuracy", "cluster_chance"):
        values = [r[key] for r in rows if key in r and not math.isnan(r[key])]
        if values:
            out[f"max_{key}"] = float(max(values))
            out[f"mean_{key}"] = float(np.mean(values))
    if rows:
        out["majority_share"] = float(rows[0]["majority_share"])
    return out


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    """``python -m flwr_vproto.audit <run dir>``: score ``<run dir>/audit`` and add the result to results.json."""
    parser = argparse.ArgumentParser(prog="python -m flwr_vproto.audit", description=main.__doc__)
    parser.add_argument("run_dir", help="a run's output folder (holds results.json and audit/)")
    parser.add_argument("--audit-dir", help="the recorded folder, if not <run dir>/audit")
    args = parser.parse_args(argv)
    run = Path(args.run_dir)
    results_path = run / "results.json"
    if not results_path.is_file():
        raise SystemExit(f"audit error: {results_path} not found (give a run's output folder)")
    results = json.loads(results_path.read_text())
    folder = Path(args.audit_dir) if args.audit_dir else run / "audit"
    num_classes = _num_classes(results)
    try:
        report = audit_folder(folder, num_classes)
    except FileNotFoundError as err:
        raise SystemExit(f"audit error: {err}") from None
    results["audit"] = report["summary"]
    results_path.write_text(json.dumps(results, indent=2, allow_nan=False, default=float))
    (run / "audit.json").write_text(json.dumps(report, indent=2, default=float))
    print(format_summary(report["summary"]))
    return 0


def _num_classes(results: dict[str, Any]) -> int:
    from flwr_vproto.config import config_from_dict
    from flwr_vproto.data import dataset_classes

    return int(dataset_classes(config_from_dict(results["config"]))[0])


def format_summary(summary: dict[str, float]) -> str:
    parts = [f"{k} {v:.3f}" for k, v in summary.items()]
    return "label-leakage audit (worst round/passive): " + ", ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
