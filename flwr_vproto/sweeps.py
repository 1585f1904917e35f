"""Hydra sweeps of ``run_simulation.py``: the score a sweeper optimises, and per-job CPU bounds under a launcher.

Three things live here rather than in ``run_simulation.py`` so that tests and benchmarks can call them:

* :func:`validation_score`: the number ``run_simulation.py`` returns to Hydra. It is the *validation* score of the
  selected round, never the test score: a sweeper that maximised test accuracy would report an optimistically
  biased number (the test set would have been used to choose the configuration).
* :func:`job_threads`: how many cores one job may use when a launcher runs several jobs at once on one machine, so
  that ``N`` parallel jobs do not each start ``os.cpu_count()`` torch threads and as many Ray workers.
* :func:`optuna_defaults`: ``hydra/sweeper=optuna`` maximises (the plugin's default is to minimise, which would
  search for the worst configuration) with a seeded TPE sampler and one trial at a time.
* :func:`patch_optuna_storage`: optuna 2.10 (the version Hydra's Optuna sweeper 1.3 requires) cannot create a new
  SQLite/RDB study under SQLAlchemy 2 (flwr's own requirement): it stamps the schema version on a connection that
  is never committed, then asserts on the missing version. The patch commits that stamp; nothing else changes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

SELECTION_METRICS = ("accuracy", "auc")


class SweepError(ValueError):
    """A sweep option with a wrong value; the message names the option."""


def check_selection_metric(metric: Any, dataset: str, classes: Any = None) -> str:
    """``runner.selection_metric`` checked before anything trains (one-line error naming the option).

    ``auc`` is only defined for binary tasks: the built-in image sets have 10 classes, so they fail here; a CSV
    dataset with its class list given is checked too, otherwise after training (:func:`validation_score`).
    """
    if metric not in SELECTION_METRICS:
        raise SweepError(f"runner.selection_metric must be one of {', '.join(SELECTION_METRICS)}, got {metric!r}")
    if metric == "auc":
        if dataset in ("digits", "fashion_mnist"):
            raise SweepError(f"runner.selection_metric=auc needs a binary task; dataset={dataset} has 10 classes")
        if isinstance(classes, list | tuple) and len(classes) != 2:
            raise SweepError(f"runner.selection_metric=auc needs a binary task; dataset.csv.classes has "
                             f"{len(classes)} classes")
    return str(metric)


def select_by(history: Sequence[Mapping[str, float]], metric: str) -> dict[str, float]:
    """Test metrics at the round with the best validation ``metric`` (ties: the earlier round).

    Same protocol as :func:`flwr_vproto.results.select_final` (which is this with ``accuracy`` and stays the
    default, so no recorded number moves); ``final`` also records ``val_<metric>``.
    """
    from flwr_vproto.results import select_final

    if metric == "accuracy":
        final = select_final(history)
    else:
        key = f"val/{metric}"
        evaluated = [h for h in history if key in h]
        if not evaluated:
            raise SweepError(f"runner.selection_metric={metric}: no round reports {key} (a binary task reports "
                             "val/auc)")
        best = max(evaluated, key=lambda h: (h[key], -h["round"]))
        final = {k[len("test/"):]: v for k, v in best.items() if k.startswith("test/")}
        final["best_round"] = best["round"]
        final["val_accuracy"] = best.get("val/accuracy", math.nan)
        final["last_round_accuracy"] = evaluated[-1].get("test/accuracy", math.nan)
        final[f"val_{metric}"] = best[key]
    return final


def validation_score(results: Mapping[str, Any], metric: str = "accuracy") -> float:
    """The validation ``metric`` at the selected round of ``results`` (what ``run_simulation.py`` returns).

    Read from ``final`` (chosen by validation), never from the test metrics next to it.
    """
    final = results.get("final") or {}
    key = f"val_{metric}"
    if key not in final:
        raise SweepError(f"runner.selection_metric={metric}: the results have no {key} (no evaluated round?)")
    return float(final[key])


def available_cores() -> int:
    """Cores this process may run on: the CPU affinity mask (SLURM, taskset, cgroups cpusets), else cpu_count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _as_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def job_threads(launcher: Mapping[str, Any] | None, cores: int | None = None,
                environ: Mapping[str, str] | None = None) -> int | None:
    """Cores one job may use under Hydra's ``launcher`` config; ``None``: leave torch and Ray as they are.

    The rule (README "Sweeps"):

    * ``joblib`` with ``n_jobs = N`` runs N jobs at once on this machine: each gets ``max(1, cores // N)``
      (``N = -1`` means one job per core, as in joblib; ``-2`` one fewer, and so on);
    * ``submitit_*`` runs each job in its own allocation: ``cpus_per_task`` if set, else ``SLURM_CPUS_PER_TASK``;
      ``submitit_local`` starts every job at once, so leave ``cpus_per_task`` unset only for small sweeps;
    * the basic launcher (one job after the other) and a single run: ``None``, torch's and Ray's defaults.
    """
    if not launcher:
        return None
    cores = cores or available_cores()
    target = str(launcher.get("_target_", ""))
    if "joblib" in target.lower():
        n = _as_int(launcher.get("n_jobs")) or -1
        n = n if n > 0 else max(1, cores + 1 + n)
        return max(1, cores // n)
    if "submitit" in target.lower():
        env = os.environ if environ is None else environ
        return _as_int(launcher.get("cpus_per_task")) or _as_int(env.get("SLURM_CPUS_PER_TASK"))
    return None


def bound_threads(threads: int) -> None:
    """Hold this job (torch, BLAS/OpenMP, and the Ray workers it starts, which inherit the environment) to
    ``threads`` cores (:func:`flwr_vproto.threads.bound_threads`)."""
    from flwr_vproto.threads import bound_threads as bound

    bound(threads)


def optuna_defaults(seed: int = 0) -> bool:
    """Re-register the Optuna sweeper's config with this project's defaults: ``direction: maximize``, TPE with
    ``seed``, ``n_jobs: 1`` (trials per batch; raise it with a parallel launcher). Everything stays overridable.

    A ``flwr_vproto/conf/hydra/sweeper/optuna.yaml`` cannot do this: a file with the plugin's name is matched
    against its schema, which Hydra 1.3 refuses. Returns whether the plugin is installed.
    """
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # imports the plugins, which store their own configs: ours must come after
    try:
        from hydra_plugins.hydra_optuna_sweeper.config import Direction, OptunaSweeperConf, TPESamplerConfig
    except ImportError:
        return False
    store = ConfigStore.instance()
    store.store(group="hydra/sweeper", name="optuna", provider="optuna_sweeper",
                node=OptunaSweeperConf(direction=Direction.maximize, n_jobs=1))
    store.store(group="hydra/sweeper/sampler", name="tpe", provider="optuna_sweeper", node=TPESamplerConfig(seed=seed))
    return True


_PATCHED = False


def patch_optuna_storage() -> bool:
    """Make optuna 2.x's RDB storage (``hydra.sweeper.storage=sqlite:///...``) work under SQLAlchemy 2.

    Returns whether the patch was applied (optuna < 3 and SQLAlchemy >= 2); a no-op without optuna.
    """
    global _PATCHED
    if _PATCHED:
        return True
    try:
        import optuna
        import sqlalchemy
    except ImportError:
        return False
    if int(optuna.__version__.split(".")[0]) >= 3 or int(sqlalchemy.__version__.split(".")[0]) < 2:
        return False
    import alembic.migration
    from optuna.storages._rdb import storage as rdb

    def _set_alembic_revision(self: Any, revision: str) -> None:  # optuna 2.10's, with a committed transaction
        with self.engine.begin() as conn:
            alembic.migration.MigrationContext.configure(conn).stamp(self._create_alembic_script(), revision)

    rdb._VersionManager._set_alembic_revision = _set_alembic_revision  # type: ignore[method-assign]  # the patch
    _PATCHED = True
    return True
