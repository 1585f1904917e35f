"""Per-round metrics, model selection and ``results.json``: shared by both engines so they report identically."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr_vproto.config import Config


def round_record(
    rnd: int,
    active: Mapping[str, float],
    passives: list[Mapping[str, float]],
    val: Mapping[str, float] | None,
    test: Mapping[str, float] | None,
    seconds: float,
    extra: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """One flat record per round: ``active/...``, ``passive<k>/...``, ``val/...``, ``test/...``, ``seconds``."""
    rec: dict[str, float] = {"round": float(rnd)}
    rec.update({f"active/{k}": float(v) for k, v in active.items()})
    for k, pm in enumerate(passives, start=1):
        rec.update({f"passive{k}/{n}": float(v) for n, v in pm.items()})
    for prefix, metrics in (("val", val), ("test", test)):
        if metrics:
            rec.update({f"{prefix}/{k}": float(v) for k, v in metrics.items()})
    if extra:
        rec.update({k: float(v) for k, v in extra.items()})
    rec["seconds"] = float(seconds)
    return rec


def select_final(history: list[Mapping[str, float]]) -> dict[str, float]:
    """Test metrics at the round with the best validation accuracy (ties: the earlier round).

    This is the evaluation protocol of the benchmark: every method is trained for the same rounds and reported at
    its own best validation round, so no method is judged at an arbitrary stopping point.
    """
    evaluated = [h for h in history if "val/accuracy" in h]
    if not evaluated:
        return {}
    best = max(evaluated, key=lambda h: (h["val/accuracy"], -h["round"]))
    final = {k[len("test/"):]: v for k, v in best.items() if k.startswith("test/")}
    final["best_round"] = best["round"]
    final["val_accuracy"] = best["val/accuracy"]
    last = evaluated[-1]
    final["last_round_accuracy"] = last.get("test/accuracy", math.nan)
    return final


def format_elapsed(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``1h02m``: wall time for progress lines."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_round(rec: Mapping[str, float], num_rounds: int, elapsed: float | None = None) -> str:
    """One readable progress line: round k/n, main losses, accuracies, seconds (and wall time since the start)."""
    parts = [f"round {int(rec['round']):>3}/{num_rounds}"]
    for key, label in (("active/sup_loss", "sup"), ("active/local_loss", "local"), ("active/first_loss", "first")):
        if key in rec:
            parts.append(f"{label} {rec[key]:.3f}")
    thirds = [v for k, v in rec.items() if k.endswith("/third_loss")]
    if thirds:
        parts.append(f"third {sum(thirds) / len(thirds):.3f}")
    cov = [v for k, v in rec.items() if k.endswith("/pseudo_coverage") and k.startswith("passive")]
    if cov:
        parts.append(f"cover {sum(cov) / len(cov):.2f}")
    for key, label in (("val/accuracy", "val acc"), ("test/accuracy", "test acc"), ("test/auc", "auc")):
        if key in rec:
            parts.append(f"{label} {rec[key]:.4f}")
    parts.append(f"{rec['seconds']:.1f}s")
    if elapsed is not None:
        parts.append(f"elapsed {format_elapsed(elapsed)}")
    return " | ".join(parts)


def build_results(cfg: Config, history: list[dict[str, float]], extra: Mapping[str, Any] | None = None) -> dict:
    """The content of ``results.json``: resolved config, per-round metrics and the final (selected) metrics."""
    out = {"config": cfg.to_dict(), "rounds": history, "final": select_final(history)}
    if extra:
        out.update(extra)
    return out


def write_results(path: str | Path, results: Mapping[str, Any]) -> Path:
    """Write ``results.json`` (NaN-free JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=float, allow_nan=False))
    return path
