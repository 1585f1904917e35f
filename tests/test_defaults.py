"""One set of defaults: ``flwr run .`` (pyproject's ``[tool.flwr.app.config]``) and ``python run_simulation.py``
resolve to the same config, per-dataset defaults included; timeouts are defined once; a misspelt option is answered
in one line with the closest valid keys; ``--help`` names the command the user ran."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest
from conftest import import_script
from flwr.common.config import flatten_dict

from flwr_vproto import run_config as RC
from flwr_vproto.config import DATASET_ROUNDS, DEFAULT_ROUNDS, REPLY_TIMEOUT, WAIT_FOR_NODES, RunnerConfig
from flwr_vproto.config_store import program_name

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "flwr_vproto" / "conf"


def _pyproject_run_config() -> dict:
    return flatten_dict(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])


@pytest.mark.parametrize("dataset", ["digits", "adult"])
def test_flwr_run_and_run_simulation_train_the_same_config(dataset):
    """`flwr run . [--run-config "dataset.name='adult'"]` and `python run_simulation.py [dataset=adult]`."""
    from hydra import compose, initialize_config_dir

    _config = import_script("run_simulation")._config
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        hydra_cfg, runner = _config(compose("config", [] if dataset == "digits" else [f"dataset={dataset}"]))
    flwr_cfg, settings = RC.config_from_run_config({**_pyproject_run_config(), "dataset.name": dataset})
    assert flwr_cfg == hydra_cfg
    assert hydra_cfg.num_rounds == DATASET_ROUNDS.get(dataset, DEFAULT_ROUNDS) == (40 if dataset == "digits" else 20)
    assert runner["timeout"] == settings.timeout == REPLY_TIMEOUT  # one reply deadline for both entry points
    assert settings.wait_for_nodes == WAIT_FOR_NODES and RunnerConfig().timeout == REPLY_TIMEOUT


def test_the_number_of_rounds_the_user_sets_wins_over_the_datasets_default():
    rc = _pyproject_run_config()
    assert RC.config_from_run_config({**rc, "num_rounds": 5})[0].num_rounds == 5
    from flwr_vproto.config import config_from_dict

    assert config_from_dict({"dataset": {"name": "fashion_mnist"}}).num_rounds == DEFAULT_ROUNDS
    assert config_from_dict({"num_rounds": 7}).num_rounds == 7


@pytest.mark.parametrize(("arg", "want"), [
    ("dataset.csv.label_colum=defaulted", "did you mean dataset.csv.label_column"),
    ("method.lamda=1", "did you mean method.lambda_active"),
    ("num_round=3", "did you mean num_rounds?"),
    ("runner.timout=5", "did you mean runner.timeout?"),
])
def test_a_misspelt_option_is_one_line_with_the_closest_valid_keys(arg, want, monkeypatch, capsys):
    cli = import_script("run_simulation")
    monkeypatch.setattr(sys, "argv", ["run_simulation.py", "engine=inprocess", arg])
    with pytest.raises(SystemExit) as err:
        cli.run()
    line = str(err.value.code)
    assert line.startswith(f"config error: unknown option '{arg.split('=')[0]}'") and want in line, line
    assert "\n" not in line and "+" not in line  # no `+key=value` suggestion: that key would only be refused later


@pytest.mark.parametrize("args", [
    ["dataset=adult", "method=vanilla", "defence=none", "model.hidden=[32]", "dataset.csv.label_column=y"],
    ["-m", "+hpo=vproto", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "seed=0,1"],
    ["--cfg", "job", "model.encoder_target={_target_: a.B, width: 3}", "runner.threads=2"],
])
def test_valid_overrides_are_left_to_hydra(args):
    from flwr_vproto.cli import unknown_option_line

    assert unknown_option_line(args) is None


def test_help_names_the_command_the_user_ran():
    assert program_name("/home/me/.venv/bin/flwr-vproto") == "flwr-vproto"
    assert program_name("/repo/run_simulation.py") == "python run_simulation.py"
    assert program_name("/site-packages/flwr_vproto/__main__.py") == "python -m flwr_vproto"
