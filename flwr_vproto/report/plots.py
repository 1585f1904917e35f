"""The report's PNG plots: accuracy per round, accuracy against the overlap, the passives' pseudo-labels and a
sweep's validation score by trial. Matplotlib is imported only when a plot is drawn (Agg backend)."""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flwr_vproto import optional
from flwr_vproto.config import INPROCESS_ONLY

from .load import Run, Trial
from .tables import _mean_std, ordered_tags, split_engines

NO_PLOTS = (f"no plots: matplotlib, an optional dependency, is not installed ({optional.install_hint('matplotlib')});"
            " the tables are complete")


def can_plot() -> bool:
    """Whether the report can draw its PNGs. Without matplotlib (the ``plots`` extra) it writes every table and says
    so on stderr and in the markdown, rather than failing after the tables."""
    if optional.installed("matplotlib"):
        return True
    print(f"report: warning: {NO_PLOTS}", file=sys.stderr)
    return False


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def _per_round(runs: list[Run], pick: Any) -> tuple[list[int], list[float], list[float]]:
    """Mean and std over runs of ``pick(record)`` at each round where at least one run has it."""
    at: dict[int, list[float]] = {}
    for r in runs:
        for rec in r.history:
            v = pick(rec)
            if v is not None and math.isfinite(v):
                at.setdefault(int(rec["round"]), []).append(v)
    xs = sorted(at)
    stats = [_mean_std(at[x]) for x in xs]
    return xs, [m for m, _ in stats], [s for _, s in stats]


def _passive_mean(suffix: str) -> Any:
    def pick(rec: Mapping[str, float]) -> float | None:
        vals = [v for k, v in rec.items() if k.startswith("passive") and k.endswith(suffix)]
        return sum(vals) / len(vals) if vals else None

    return pick


def _save(plt: Any, fig: Any, path: Path) -> None:
    """Write one figure and free it (a sweep draws many)."""
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cells(runs: Iterable[Run]) -> list[tuple[float, str]]:
    """The overlaps (axis position, label) the runs cover, in axis order."""
    return sorted({(r.axis, r.overlap_label) for r in runs})


def _lines(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """One plotted line per method tag, and per engine when engines are mixed (centralized: its own line)."""
    split = split_engines(runs)
    out = []
    for tag in ordered_tags(runs):
        mine = [r for r in runs if r.tag == tag]
        engines = sorted({r.engine for r in mine}) if split and mine[0].method not in INPROCESS_ONLY else [""]
        for engine in engines:
            out.append((f"{tag} ({engine or '?'})" if engine else tag,
                        [r for r in mine if not engine or r.engine == engine]))
    return out


def plot_accuracy_per_round(runs: list[Run], out: Path) -> list[Path]:
    """Per dataset, one panel per overlap: mean test accuracy per round of each method (band: ± std).

    A star marks where the table's number comes from: at the mean best-validation round (``final.best_round``),
    the mean final test accuracy. With one seed it sits on the curve; under ``eval_test=best`` (the default) the test
    accuracy is only measured at rounds that were a new best on validation and at the last round, so the curve
    joins those points and its last point after the star is the last round's.
    """
    plt = _pyplot()
    written = []
    for ds in sorted({r.dataset for r in runs}):
        mine = [r for r in runs if r.dataset == ds and any("test/accuracy" in h for h in r.history)]
        if not mine:
            continue
        cells = _cells(mine)
        fig, axes = plt.subplots(1, len(cells), figsize=(3.6 * len(cells), 3.2), squeeze=False, sharey=True)
        starred = False
        for ax, (axis, label) in zip(axes[0], cells, strict=True):
            here = [r for r in mine if (r.axis, r.overlap_label) == (axis, label)]
            for name, sel in _lines(here):
                xs, m, s = _per_round(sel, lambda rec: rec.get("test/accuracy"))
                if not xs:
                    continue
                line, = ax.plot(xs, m, marker="." if len(xs) < 40 else None, label=name)
                ax.fill_between(xs, [a - b for a, b in zip(m, s, strict=True)],
                                [a + b for a, b in zip(m, s, strict=True)], color=line.get_color(), alpha=0.15)
                best = [r.final["best_round"] for r in sel if "best_round" in r.final]
                if best:
                    ax.plot([statistics.mean(best)], [statistics.mean(r.final["accuracy"] for r in sel)], marker="*",
                            markersize=13, color=line.get_color(), markeredgecolor="black", linestyle="none")
                    starred = True
            ax.set_title(f"{ds}, {label}" + (" aligned" if label.endswith("%") else ""))
            ax.set_xlabel("round")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("test accuracy")
        if starred:  # one legend entry for the stars, in no method's colour
            axes[0][-1].plot([], [], marker="*", markersize=11, color="white", markeredgecolor="black",
                             linestyle="none", label="best val round (table)")
        _legend(axes[0][-1])
        fig.tight_layout()
        path = out / f"accuracy_per_round_{ds}.png"
        _save(plt, fig, path)
        written.append(path)
    return written


def plot_accuracy_vs_aligned(runs: list[Run], out: Path) -> Path:
    """One panel per dataset: final test accuracy against the overlap (the aligned fraction, or for csv the measured
    aligned users), error bars = std over seeds."""
    plt = _pyplot()
    datasets = sorted({r.dataset for r in runs})
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.4), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        mine = [r for r in runs if r.dataset == ds]
        counts = all(r.overlap for r in mine)
        scale = 1.0 if counts else 100.0
        for name, sel in _lines(mine):
            cells = _cells(sel)
            stats = [_mean_std([r.final["accuracy"] for r in sel if (r.axis, r.overlap_label) == c]) for c in cells]
            ax.errorbar([c[0] * scale for c in cells], [m for m, _ in stats], yerr=[s for _, s in stats],
                        marker="o", capsize=3, label=name)
        ticks = _cells(mine)
        if len(ticks) > 1 and all(a > 0 for a, _ in ticks):
            ax.set_xscale("log")
        ax.set_xticks([a * scale for a, _ in ticks], [lab for _, lab in ticks])
        ax.minorticks_off()
        ax.set_title(ds)
        ax.set_xlabel("aligned training users (measured)" if counts else "aligned users (% of training users)")
        ax.set_ylabel("test accuracy (best val round)")
        ax.grid(alpha=0.3)
        _legend(ax)
    fig.tight_layout()
    path = out / "accuracy_vs_aligned.png"
    _save(plt, fig, path)
    return path


def plot_pseudo_labels(runs: list[Run], out: Path) -> list[Path]:
    """Per dataset: passive parties' pseudo-label coverage and accuracy per round, one line per method and fraction."""
    plt = _pyplot()
    written = []
    for ds in sorted({r.dataset for r in runs}):
        mine = [r for r in runs if r.dataset == ds
                and any(k.endswith("/pseudo_coverage") and k.startswith("passive") for h in r.history for k in h)]
        if not mine:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        for name, of_line in _lines(mine):
            for cell in _cells(of_line):
                sel = [r for r in of_line if (r.axis, r.overlap_label) == cell]
                for ax, suffix in zip(axes, ("/pseudo_coverage", "/pseudo_accuracy"), strict=True):
                    xs, m, _ = _per_round(sel, _passive_mean(suffix))
                    if xs:
                        ax.plot(xs, m, label=f"{name}, {cell[1]}")
        for ax, name in zip(axes, ("coverage (share kept)", "accuracy of kept labels"), strict=True):
            ax.set_title(f"{ds}: passive pseudo-label {name.split(' ')[0]}")
            ax.set_xlabel("round")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
        _legend(axes[1])
        fig.tight_layout()
        path = out / f"pseudo_labels_{ds}.png"
        _save(plt, fig, path)
        written.append(path)
    return written



def plot_trials(trials: list[Trial], out: Path) -> Path:
    """Validation score by trial (dots) and the best so far (line), one colour per sweep."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    sweeps = sorted({t.sweep for t in trials})
    for sweep in sweeps:
        mine = sorted((t for t in trials if t.sweep == sweep), key=lambda t: t.number)
        xs = [t.number for t in mine]
        ys = [t.val_score for t in mine]
        best, running = -math.inf, []
        for y in ys:
            best = max(best, y) if math.isfinite(y) else best
            running.append(best if math.isfinite(best) else math.nan)
        label = Path(sweep).name if len(sweeps) > 1 else None
        dots = ax.scatter(xs, ys, s=18, label=label)
        ax.step(xs, running, where="post", color=dots.get_facecolor()[0], alpha=0.7)
    ax.set_xlabel("trial (Hydra job number)")
    ax.set_ylabel(f"validation {trials[0].metric} (line: best so far)")
    ax.set_title("sweep: validation score by trial")
    ax.grid(alpha=0.3)
    _legend(ax)
    fig.tight_layout()
    path = out / "val_score_by_trial.png"
    _save(plt, fig, path)
    return path
