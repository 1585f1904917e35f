"""Issue 22, item 6: the split helper's ``flwr run`` form works for the user's own CSV files, and a failed
``flwr run`` says so (exit status 1 through ``scripts/flwr_run.py``, its one-line error the log's last line).

The fast tests parse what ``python -m flwr_vproto.split_table`` prints exactly as Flower parses it and load every
party's data from it as a deployed ClientApp does; the slow test runs it on a loopback deployment.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import import_script
from flwr.common.config import get_fused_config_from_dir, parse_config_args
from hydra.core.override_parser.overrides_parser import OverridesParser

from flwr_vproto.data import load_party
from flwr_vproto.run_config import config_from_run_config
from flwr_vproto.split_table import main

REPO = Path(__file__).resolve().parents[1]
flwr_run = import_script("scripts/flwr_run")
deploy = import_script("scripts/local_deployment")


def write_table(path: Path, n: int = 500, seed: int = 0) -> pd.DataFrame:
    """A user's own table: an ID column that is not ``id`` (with a space), a label column that is not ``label``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    frame = pd.DataFrame({"customer no": [f"c{k:05d}" for k in rng.permutation(n)],
                          **{f"f{j}": (y * (j % 3) + rng.normal(0, 1, n)).round(3) for j in range(6)},
                          "defaulted": np.array(["no", "yes"])[y]})
    frame.to_csv(path, index=False)
    return frame


def printed_forms(out: str) -> tuple[list[str], list[str], list[str]]:
    """From the split helper's output: each SuperNode's ``--node-config`` value, the ``flwr run`` command and the
    Hydra command, each as its shell words."""
    lines = [ln.strip() for ln in out.strip().splitlines()]
    nodes = [shlex.split(ln, comments=True)[1] for ln in lines if ln.startswith("--node-config ")]
    flwr = next(shlex.split(ln) for ln in lines if ln.startswith("flwr run "))
    return nodes, flwr, shlex.split(lines[-1])


def split(tmp_path: Path, capsys, **extra: str) -> tuple[list[str], list[str], list[str]]:
    write_table(tmp_path / "own.csv")
    args = [str(tmp_path / "own.csv"), "--id", "customer no", "--label", "defaulted", "--active-share", "0.5",
            "--aligned", "0.1", "--seed", "3", "--out", str(tmp_path / "parties")]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    assert main(args) == 0
    return printed_forms(capsys.readouterr().out)


def test_the_printed_flwr_run_form_names_every_csv_option_and_loads_each_party(tmp_path, capsys):
    """The run-config names every option the Hydra command sets (the paths aside: each node-config's data-path),
    with the same values, parsed by Flower's own parser; each party's data then loads from its node-config alone."""
    nodes, flwr, hydra = split(tmp_path, capsys, val_fraction="0.15", passives="2")
    assert flwr[:2] == ["flwr", "run"] and Path(flwr[2]) == REPO and "--stream" in flwr
    assert hydra[:3] == ["python", "-m", "flwr_vproto"]  # what run_simulation.py does, from any directory
    overrides = parse_config_args([flwr[flwr.index("--run-config") + 1]])
    hydra_set = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(hydra[3:])}
    assert hydra_set.pop("dataset") == overrides.pop("dataset.name") == "csv"
    paths = hydra_set.pop("dataset.csv.paths")
    assert overrides == hydra_set, (overrides, hydra_set)  # every CSV option, same values
    assert {"dataset.csv.id_column", "dataset.csv.label_column", "dataset.csv.split_seed"} <= set(overrides)

    fused = get_fused_config_from_dir(REPO, overrides)  # what the ServerApp and every ClientApp read
    base, _ = config_from_run_config(fused)
    assert (base.dataset.csv.id_column, base.dataset.csv.label_column) == ("customer no", "defaulted")
    val_users = []
    for k, node in enumerate(nodes):
        nc = parse_config_args([node])
        assert nc["party-index"] == k and nc["role"] == ("active" if k == 0 else "passive")
        assert nc["data-path"] == paths[k] and Path(nc["data-path"]).is_absolute()
        cfg, _ = config_from_run_config(fused, party_index=k, data_path=nc["data-path"])
        val_users.append(set(load_party(cfg, k).val.ids.tolist()))
    assert len(nodes) == 3 and val_users[0] == val_users[1] == val_users[2] and val_users[0]


def test_a_value_flower_cannot_carry_is_refused_before_any_file_is_written(tmp_path, capsys):
    table = write_table(tmp_path / "own.csv").rename(columns={"customer no": "it's \"odd\""})
    table.to_csv(tmp_path / "own.csv", index=False)
    rc = main([str(tmp_path / "own.csv"), "--id", "it's \"odd\"", "--label", "defaulted", "--active-share", "0.5",
               "--out", str(tmp_path / "parties")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("split_table: --id: ") and len(err.splitlines()) == 1, err
    assert not list((tmp_path / "parties").glob("*.csv"))


def test_flwr_run_wrapper_finds_the_superlink_among_flwr_runs_arguments():
    assert flwr_run.superlink_of([".", "bank", "--run-config", "a=1 b='x'"]) == ["bank"]
    assert flwr_run.superlink_of([".", "--run-config", "a=1", "bank", "--stream"]) == ["bank"]
    assert flwr_run.superlink_of([".", "--stream", "--run-config=a=1"]) == []


def test_the_serverapp_keeps_flowers_report_of_its_failure_out_of_the_log():
    """After the one line, Flower's traceback of that very exception and its exit message are dropped; any other
    record, and everything before a failure, passes."""
    import logging

    from flwr_vproto.config import ConfigError
    from flwr_vproto.server_app import OneLineFailure

    def record(msg: str, exc: BaseException | None = None, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("flwr", level, __file__, 1, msg, (), (type(exc), exc, None) if exc else None)

    f = OneLineFailure()
    exit_msg = record("Exit Code: 201\nAn unhandled exception occurred in the ServerApp.")
    assert f.filter(exit_msg)  # no failure reported yet: Flower's own exits are kept
    err = f.fail("config error: invalid method.name='nope'", ConfigError)
    assert isinstance(err, ConfigError) and str(err) == "config error: invalid method.name='nope'"
    assert not f.filter(record("ServerApp raised an exception", err)) and not f.filter(exit_msg)
    assert f.filter(record("ServerApp raised an exception", ValueError("other")))
    assert f.filter(record("Failed to push task output: timeout"))


def test_local_deployment_reports_a_failed_run_by_its_last_log_line():
    log = ("\x1b[92mINFO \x1b[0m:      Start `flwr-serverapp` process\n\x1b[91mERROR \x1b[0m:     data error: active "
           "(node 7) during discovery: /d/a.csv: no label column 'nope'\n\n")
    err = deploy.RunFailed(7, "finished:failed", log)
    assert err.line == "data error: active (node 7) during discovery: /d/a.csv: no label column 'nope'"
    assert str(err).splitlines()[0] == f"run 7 ended (finished:failed) without results: {err.line}"


# ------------------------------------------------------------------------------------------- loopback (slow)
def _last_line(text: str) -> str:
    """The last line that says something: ANSI colours removed (Flower colours its level names), and Flower's empty
    ``INFO :`` line after a completed run skipped."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()
    return [ln.strip() for ln in lines if re.sub(r"^\s*[A-Z]+\s*:", "", ln).strip()][-1]


@pytest.mark.slow
@pytest.mark.skipif(__import__("shutil").which("flower-superlink") is None
                    and not (Path(sys.executable).parent / "flower-superlink").exists(),
                    reason="Flower's deployment executables are not installed")
def test_printed_flwr_run_form_trains_and_a_failed_run_exits_1_with_its_error_last(tmp_path, capsys):
    """On loopback: SuperNodes started with the printed node-configs, the printed run-config (one round) trains
    through ``scripts/flwr_run.py`` (exit 0); a data error and a config error exit 1 with their one line last,
    while Flower 1.42's own ``flwr run --stream`` exits 0 for the same failed run (why the wrapper exists)."""
    nodes, flwr, _ = split(tmp_path, capsys)
    run_config = flwr[flwr.index("--run-config") + 1]
    dep = deploy.LocalDeployment(tmp_path / "flwr", nodes, env={"OMP_NUM_THREADS": "1"})
    env = None
    try:
        dep.start()
        env = dep._env("cli")

        def wrapped(config: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, str(REPO / "scripts" / "flwr_run.py"), flwr[2], "loopback",
                                   "--run-config", config], env=env, capture_output=True, text=True, timeout=300,
                                  cwd=tmp_path)

        ok = wrapped(f"{run_config} num_rounds=1 method.batch_size=64 app.output-dir=\"{tmp_path / 'results'}\"")
        assert ok.returncode == 0 and (tmp_path / "results" / "results.json").exists(), ok.stdout[-3000:]
        assert "aligned training users" in _last_line(ok.stdout), ok.stdout[-2000:]

        bad = run_config.replace('label_column="defaulted"', 'label_column="nope"')
        assert bad != run_config
        data = wrapped(bad)
        assert data.returncode == 1, data.stdout[-3000:]
        assert re.match(r"ERROR\s*:\s+data error: active \(node \d+\) during discovery: \S+active\.csv: the active "
                        r"party's file has no label column 'nope'", _last_line(data.stdout)), data.stdout[-3000:]
        config = wrapped(f"{run_config} method.name=\"nope\"")
        assert config.returncode == 1, config.stdout[-3000:]
        assert re.match(r"ERROR\s*:\s+config error: invalid method.name='nope'", _last_line(config.stdout)), \
            config.stdout[-3000:]
        plain = subprocess.run(["flwr", "run", flwr[2], "loopback", "--stream", "--run-config", bad],
                               env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert plain.returncode == 0 and "data error: active" in _last_line(plain.stdout), plain.stdout[-3000:]
    finally:
        dep.stop()
