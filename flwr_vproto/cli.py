"""The command line of flwr_vproto: train one configuration (or a Hydra sweep) and write ``results.json``.

    flwr-vproto                                        # digits, vproto, Flower simulation
    python -m flwr_vproto engine=inprocess method=vanilla
    python run_simulation.py engine=inprocess method=vanilla   # the same, from a checkout
    flwr-vproto -m method=vproto,vanilla dataset.aligned_fraction=0.02,0.05 seed=0,1
    flwr-vproto -m +hpo=vproto engine=inprocess dataset=adult     # Optuna search (docs/usage.md "Sweeps")
    flwr-vproto --cfg job                              # every option with its value
    flwr-vproto deploy --help                          # deployment: certs, app, connect, local, submit

The three spellings are one program (:func:`run`): the same Hydra overrides, the same config (``flwr_vproto/conf``,
shipped inside the package so that an installed wheel needs no checkout) and the same results. ``flwr-vproto deploy
...`` is not Hydra's: :func:`run` hands it to :mod:`flwr_vproto.deploy` before Hydra reads the command line.

``engine=flower`` runs the parties as Flower ClientApps on ``K + 1`` simulated SuperNodes (Ray backend) driven by
:class:`~flwr_vproto.strategy.VerticalProtoStrategy`; ``engine=inprocess`` runs the same parties in this process
(:func:`~flwr_vproto.inprocess.run_inprocess`), the reference and the only engine for ``method=centralized`` and
the LightGBM baselines (``gbdt_*``). Both print one line per round and report the same per-round metrics.

``main`` returns the *validation* score of the selected round (``runner.selection_metric``: accuracy, or AUC for a
binary task), which is what Hydra's sweepers (Optuna) optimise; the test score is only written to results.json.

Before any engine starts, the config and every party's data are checked (:mod:`flwr_vproto.checks`): a bad input
exits non-zero within seconds with one line (``config error: ...``, ``data error: ...``); ``HYDRA_FULL_ERROR=1``
shows the full traceback instead. A run never overwrites ``results.json``, and a run that fails before writing
anything of its own removes the folder Hydra made for it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from flwr_vproto import optional
from flwr_vproto.checks import check_inputs, full_errors, party_error_line, user_error_kind
from flwr_vproto.config import INPROCESS_ONLY, REPLY_TIMEOUT, Config, ConfigError, config_from_dict, moved_line
from flwr_vproto.config_store import register as register_configs
from flwr_vproto.exchanges import count as exchange_count
from flwr_vproto.results import format_elapsed, format_round, format_summary, per_round, write_results
from flwr_vproto.sweeps import (
    SweepError,
    available_cores,
    bound_threads,
    check_selection_metric,
    job_threads,
    optuna_defaults,
    patch_optuna_storage,
    select_by,
    validation_score,
)
from flwr_vproto.threads import apply_default_threads, torch_threads


def _config(cfg: DictConfig) -> tuple[Config, dict[str, Any]]:
    """Hydra's config -> the typed Config (validated) and the runner settings."""
    data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(data, dict)
    runner = dict(data.pop("runner", None) or {})
    try:
        return config_from_dict(data), runner  # type: ignore[arg-type]
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None


def _sweep_size() -> int | None:
    """Number of jobs in this ``-m`` sweep: the product of the lengths of the command line's sweeps (``a,b``,
    ``range(...)``) and of ``hydra.sweeper.params``, as Hydra's basic sweeper expands them (its cartesian product)."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        args = [a for a in sys.argv[1:] if not a.startswith("-")]
        params = HydraConfig.get().sweeper.get("params") or {}
        overrides = OverridesParser.create().parse_overrides([*[f"{k}={v}" for k, v in params.items()], *args])
        total = 1
        for override in overrides:
            if override.is_sweep_override():
                total *= len(list(override.sweep_string_iterator()))
        return total
    except Exception:  # noqa: BLE001 - another sweeper, a glob sweep: show the job number alone
        return None


def _job_label() -> str:
    """``job 3/8`` inside a ``-m`` sweep (Hydra numbers jobs from 0; Optuna: of its n_trials), empty for one run."""
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return ""
    sweeper = hc.sweeper.get("_target_", "")
    total = hc.sweeper.get("n_trials") if "optuna" in str(sweeper).lower() else _sweep_size()
    return f"job {hc.job.num + 1}/{total}" if total else f"job {hc.job.num + 1}"


_SWEEP_START = time.perf_counter()  # a -m sweep runs its jobs in this process, one after the other
_START = _SWEEP_START
_LABEL = ""


def _say(text: str) -> None:
    """Print a progress line; inside a sweep prefixed with ``[job k/n, sweep <elapsed>]``."""
    prefix = f"[{_LABEL}, sweep {format_elapsed(time.perf_counter() - _SWEEP_START)}] " if _LABEL else ""
    print(prefix + text, flush=True)


def _print_round(num_rounds: int) -> Any:
    """Progress: one line per round, with the wall time since this job started (setup included)."""
    return lambda rec: _say(format_round(rec, num_rounds, elapsed=time.perf_counter() - _START))


def run_flower(cfg: Config, runner: dict[str, Any], out: Path) -> dict[str, Any]:
    """Flower simulation: one ClientApp per party on ``K + 1`` SuperNodes; results come back via the strategy."""
    from flwr.simulation import run_simulation

    from flwr_vproto.client_app import make_client_app
    from flwr_vproto.server_app import make_server_app
    from flwr_vproto.strategy import VerticalProtoStrategy

    level = str(runner.get("flwr_log_level", "ERROR")).upper()
    logging.getLogger("flwr").setLevel(level)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning; we ask for no GPU
    own = out / "active"  # the active party's own folder: what its metrics policy keeps from the server
    strategy = VerticalProtoStrategy(cfg, timeout=float(runner.get("timeout", REPLY_TIMEOUT)),
                                     on_round=_print_round(cfg.num_rounds), max_poll_interval=0.01,
                                     active_results=own)
    failed: list[BaseException] = []
    model_dir = str(out / "models") if runner.get("save_models", True) else None
    client_cpus = float(runner.get("client_num_cpus", 1))
    init_args: dict[str, Any] = {"logging_level": str(runner.get("ray_log_level", "ERROR")).upper(),
                                 "log_to_driver": False, "include_dashboard": False}
    threads = runner.get("threads")
    if threads:  # a launched job: this job's Ray cluster gets its share of the cores, each party at most all of it
        init_args["num_cpus"] = int(threads)
        client_cpus = min(client_cpus, float(threads))
    backend = {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": float(runner.get("client_num_gpus", 0.0))},
        "init_args": init_args,
    }
    _say(f"starting the Flower simulation: {cfg.dataset.num_passive + 1} SuperNodes on Ray, then discovery and "
         f"PSI, then {cfg.num_rounds} rounds in {exchange_count(cfg)} message exchange(s)")
    client_app = make_client_app(cfg, model_dir, _active_secret(runner),
                                 server_metrics=str(runner.get("server_metrics", "progress")), results_dir=str(own))
    run_simulation(server_app=make_server_app(strategy, errors=failed), client_app=client_app,
                   num_supernodes=cfg.dataset.num_passive + 1, backend_config=backend,
                   verbose_logging=level == "DEBUG")
    if failed:  # the ServerApp caught the strategy's error: show it as one line (or raise it, HYDRA_FULL_ERROR=1)
        raise failed[0]
    if strategy.results is None:
        raise RuntimeError("the Flower simulation ended without results (see the errors above)")
    return strategy.results


def run_local(cfg: Config, runner: dict[str, Any], out: Path) -> dict[str, Any]:
    """All parties in this process (the reference engine; also ``centralized`` and the tree baselines)."""
    from flwr_vproto.checkpoint import CheckpointError
    from flwr_vproto.inprocess import run_inprocess
    from flwr_vproto.predict import save_party_model

    try:
        results = run_inprocess(cfg, on_round=_print_round(cfg.num_rounds), active_secret=_active_secret(runner))
    except CheckpointError as err:
        raise SystemExit(f"checkpoint error: {err}") from None
    state = results.pop("state", None)
    if state and runner.get("save_models", True):
        (out / "models").mkdir(parents=True, exist_ok=True)
        for party in [state["active"], *state["passives"]]:
            save_party_model(party, out / "models" / f"{party.data.name}.pt")
    return results


def _active_secret(runner: dict[str, Any]) -> bytes | None:
    """``runner.active_secret_file``: the active party's key of its defences' random draws, for a reproducible
    defended run, read from a file only its owner can read (64 hex digits); ``null`` = fresh from the OS.

    A path, never the value: Hydra writes every option and override to ``.hydra/`` in the run folder, so a value
    given on the command line would sit there in clear. The old ``runner.active_secret`` is refused in one line (the
    run folder Hydra made for it, holding only ``.hydra/``, is removed by :func:`main`)."""
    from flwr_vproto.defences import read_secret_file

    if runner.get("active_secret") not in (None, ""):
        raise ConfigError("runner.active_secret is refused: a value given here is written to the run's .hydra/ "
                          "files; put the 64 hex digits in a file only you can read (chmod 600) and give "
                          "runner.active_secret_file=PATH")
    return read_secret_file(runner.get("active_secret_file"), "runner.active_secret_file")


def _bound_job(cfg: Config, runner: dict[str, Any]) -> str:
    """Choose and apply this job's threads (:mod:`flwr_vproto.threads`); return how they were chosen, for
    results.json (``""``: left as they are).

    ``runner.threads=N``, else under a parallel launcher its share of the cores (:func:`flwr_vproto.sweeps.job_threads`,
    so N jobs at once do not oversubscribe the machine): torch, BLAS/OpenMP and the Ray cluster of a Flower job are
    held to it. Else ``engine=inprocess`` gets the measured default (one thread) unless the user set
    ``OMP_NUM_THREADS``; ``engine=flower`` is left to Ray (``runner.client_num_cpus`` per party).
    """
    threads, how = runner.get("threads"), "runner.threads"
    if threads is None:
        launcher = OmegaConf.to_container(HydraConfig.get().launcher, resolve=False)
        threads = job_threads(launcher) if HydraConfig.get().mode == RunMode.MULTIRUN else None  # type: ignore[arg-type]
        how = "launcher"
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise SystemExit(f"config error: runner.threads must be an integer >= 1 or null, got {threads!r}")
        runner["threads"] = threads
        bound_threads(threads)
        return how
    if cfg.engine == "inprocess":
        threads = apply_default_threads()
        if threads is None:
            return "OMP_NUM_THREADS"
        runner["threads"] = threads
        return "default"
    return ""


def _check_config(cfg: Config, runner: dict[str, Any], out: Path) -> str:
    """Config checks that need no data: the selection metric, the engine, the run folder. Returns the metric."""
    try:
        metric = check_selection_metric(runner.get("selection_metric", "accuracy"), cfg.dataset.name,
                                        cfg.dataset.csv.classes)
    except SweepError as err:
        raise SystemExit(f"config error: {err}") from None
    if str(runner.get("server_metrics", "progress")) not in ("progress", "full"):
        raise SystemExit(f"config error: runner.server_metrics={runner.get('server_metrics')!r}: expected progress "
                         f"or full")
    if cfg.engine == "flower" and cfg.method.name in INPROCESS_ONLY:
        raise SystemExit(f"config error: method={cfg.method.name} needs every party's raw data in one place; "
                         "run it with engine=inprocess")
    try:
        optional.check_accounting(cfg)  # privacy.*, defence=gradient_noise: Opacus (the dp extra)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    if (out / "results.json").exists():
        raise SystemExit(f"config error: {out} already holds results.json from an earlier run, which this run would "
                         f"overwrite; give another hydra.run.dir (or move that folder)")
    return metric


def _header(cfg: Config, out: Path, cores: str) -> str:
    """The run's first line: what runs where (csv: the files, since the overlap of IDs decides what is aligned)."""
    d = cfg.dataset
    data = (f"{', '.join(Path(p).name for p in d.csv.paths)}" if d.name == "csv"
            else f"aligned {d.aligned_fraction:g}")
    return (f"{cfg.method.name} on {d.name} ({data}, {d.num_passive} passive, {cfg.num_rounds} rounds, seed "
            f"{cfg.seed}, engine {cfg.engine}{cores}) -> {out}")


def _one_line(err: BaseException) -> SystemExit:
    """A user-facing failure as one line (the full traceback only with HYDRA_FULL_ERROR=1)."""
    kind = user_error_kind(err)
    if kind == "party":
        return SystemExit(party_error_line(err))
    return SystemExit(f"{kind or 'config error'}: {err}")


def _remove_if_unused(out: Path) -> None:
    """After a failed run: remove the folder Hydra made if it holds nothing of this run's own (only ``.hydra``),
    then any parent left empty inside the working directory (``outputs/<date>``); a sweep folder holding only
    ``multirun.yaml`` goes too."""
    try:
        if not out.is_dir() or any(p.name != ".hydra" for p in out.iterdir()):
            return
        import shutil

        shutil.rmtree(out)
        cwd = Path.cwd().resolve()
        parent = out.resolve().parent
        while parent != cwd and cwd in parent.parents:
            left = list(parent.iterdir())
            if left and [p.name for p in left] != ["multirun.yaml"]:
                break
            shutil.rmtree(parent)
            parent = parent.parent
    except OSError:
        pass


CONF_DIR = Path(__file__).resolve().with_name("conf")
"""The Hydra configs, shipped in the package (an absolute path: the same folder whichever entry point runs)."""
register_configs()  # conf/config.yaml's first default: the typed schema (flwr_vproto/config_store.py)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def main(dcfg: DictConfig) -> float:
    """Run one job; return its validation score (accuracy, or AUC with ``runner.selection_metric=auc``) at the
    selected round, the objective of a Hydra sweeper. The test score is recorded in results.json, never returned."""
    global _START, _LABEL
    _START, _LABEL = time.perf_counter(), _job_label()
    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        return _main(dcfg, out)
    except (KeyboardInterrupt, SystemExit, Exception) as err:
        _remove_if_unused(out)
        if isinstance(err, SystemExit | KeyboardInterrupt) or full_errors():
            raise
        if user_error_kind(err) is not None:
            raise _one_line(err) from None
        raise


def _main(dcfg: DictConfig, out: Path) -> float:
    cfg, runner = _config(dcfg)
    metric = _check_config(cfg, runner, out)
    try:
        _active_secret(runner)  # a missing, readable or malformed secret file fails here, before any data or engine
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    threads_by = _bound_job(cfg, runner)
    if cfg.checkpoint.every and cfg.checkpoint.dir is None:  # default: this run's folder
        cfg = dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, dir=str(out / "checkpoints")))
    if cfg.audit.record and cfg.audit.dir is None:  # default: this run's folder
        cfg = dataclasses.replace(cfg, audit=dataclasses.replace(cfg.audit, dir=str(out / "audit")))
    check_inputs(cfg)  # every party's data, before Ray or the trainer starts (DataError: one line)
    if cfg.engine == "flower":
        from flwr_vproto.data import clear_cache

        clear_cache()  # the simulated parties load their own copies
    cores = f", {runner['threads']} of {available_cores()} cores" if runner.get("threads") else ""
    _say(_header(cfg, out, cores))
    if cfg.dataset.name == "csv" and any(o.startswith("dataset.aligned_fraction=")
                                         for o in HydraConfig.get().overrides.task):
        _say(f"warning: dataset.aligned_fraction={cfg.dataset.aligned_fraction:g} is ignored for dataset=csv: the "
             f"aligned users are the IDs every party's file holds (the summary gives their number)")
    results = (run_flower if cfg.engine == "flower" else run_local)(cfg, runner, out)
    try:
        if metric != "accuracy":  # the engines select by validation accuracy (the default); reselect by AUC
            results["final"] = select_by(per_round(results), metric)
        score = validation_score(results, metric)
    except SweepError as err:
        raise SystemExit(f"config error: {err}") from None
    results["selection"] = {"metric": metric, "val_score": score}
    if threads_by:  # what the job was held to (docs/usage.md "Threads", "Sweeps": launchers)
        results["job"] = {"threads": runner.get("threads"), "torch_threads": torch_threads(),
                          "cores": available_cores(), "by": threads_by}
    audit_line = None
    if cfg.audit.record and cfg.audit.dir is not None:  # score what the passives received
        from flwr_vproto.audit import audit_folder
        from flwr_vproto.audit import format_summary as format_audit
        from flwr_vproto.data import dataset_classes

        summary = audit_folder(cfg.audit.dir, dataset_classes(cfg)[0], seed=cfg.seed,
                               normalize=cfg.method.research.normalize)["summary"]
        results["audit"] = summary
        audit_line = format_audit(summary)
    path = write_results(out / "results.json", results, exclusive=True)  # never overwrites: results-2.json beside
    for line in format_summary(results, path, elapsed=time.perf_counter() - _START, metric=metric):
        _say(line)
    if audit_line:
        _say(audit_line)
    return score


_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
                "-cd", "--info", "-i", "--shell-completion", "-sc", "--experimental-rerun"}
"""Hydra's flags that take the next word as their value (that word is no override)."""
_DICT_OPTIONS = ("model.encoder_target", "model.top_target")
"""Options whose value is a mapping of the user's own keys (``model.encoder_target.width=64`` is fine)."""


def unknown_option_line(args: list[str]) -> str | None:
    """One line for the first override that names no option (``dataset.csv.label_colum=x``) with the closest valid
    keys, or ``None``; Hydra would answer it in eight lines and suggest the ``+`` form, which would only add a key
    the run then refuses. Group choices (``dataset=adult``), ``+``/``~`` overrides and ``hydra.*`` are Hydra's."""
    import difflib

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from flwr_vproto.config_store import CliConfig, option_docs

    options = list(option_docs())
    sections = {o.rsplit(".", i)[0] for o in options for i in range(1, o.count(".") + 1)}
    groups = {f.name for f in dataclasses.fields(CliConfig)} | {"hpo"}
    words = [a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] not in _VALUE_FLAGS)]
    try:
        overrides = OverridesParser.create().parse_overrides(words)
    except Exception:  # noqa: BLE001 - a malformed override: Hydra's own message says where
        return None
    for override in overrides:
        key = override.key_or_group
        if (override.is_add() or override.is_delete() or override.is_force_add() or "/" in key or "@" in key
                or key.split(".")[0] == "hydra" or key in options or key in sections or key in groups
                or key.startswith(tuple(f"{d}." for d in _DICT_OPTIONS))):
            continue
        if moved_line(key):
            return f"config error: {moved_line(key)}"
        section, _, leaf = key.rpartition(".")
        siblings = {o.rpartition(".")[2]: o for o in options if o.rpartition(".")[0] == section}
        close = [siblings[m] for m in difflib.get_close_matches(leaf, list(siblings), n=3, cutoff=0.5)]
        close = close or difflib.get_close_matches(key, options + sorted(groups), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else "no option is close"
        return f"config error: unknown option {key!r}: {hint} (every option: --help)"
    return None


def run() -> None:
    """The console script ``flwr-vproto``, ``python -m flwr_vproto`` and ``run_simulation.py``: Hydra's command line
    (overrides, ``-m``, ``--cfg job``, ``--help``) around :func:`main`; ``deploy ...`` goes to
    :mod:`flwr_vproto.deploy` (docs/deployment.md), which Hydra never parses."""
    if sys.argv[1:2] == ["deploy"]:
        from flwr_vproto.deploy.cli import main as deploy

        raise SystemExit(deploy(sys.argv[2:]))
    line = unknown_option_line(sys.argv[1:])
    if line:
        raise SystemExit(line)
    optuna_defaults()  # hydra/sweeper=optuna maximises the returned validation score
    if {"-m", "--multirun"} & set(sys.argv[1:]):
        patch_optuna_storage()  # before the Optuna sweeper opens a SQLite study (flwr_vproto/sweeps.py)
    main()  # Hydra keeps the returned score (a sweeper reads it); the exit status stays 0


if __name__ == "__main__":
    run()
