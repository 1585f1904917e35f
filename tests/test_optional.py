"""The optional dependencies (pyproject extras ``dp`` and ``plots``): what works without them, and the one line a run
gets when it asks for what a missing one does (flwr_vproto/optional.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, small_cfg

from flwr_vproto import optional
from flwr_vproto.config import ConfigError
from flwr_vproto.inprocess import run_inprocess
from flwr_vproto.report import write_report

NEEDS_OPACUS = (r"needs opacus, an optional dependency that is not installed: pip install 'flwr-vproto\[dp\]' "
                r"\(or pip install opacus\)$")


@pytest.fixture
def without(monkeypatch):
    """Make ``import <name>`` fail in this process, as on a machine without the extra (``None`` in sys.modules)."""
    def block(*names: str) -> None:
        for name in names:
            monkeypatch.setitem(sys.modules, name, None)
    return block


def test_installed_sees_a_blocked_module_as_missing(without):
    assert optional.installed("opacus") and optional.installed("matplotlib")
    assert not optional.installed("no_such_module_here")
    without("opacus")
    assert not optional.installed("opacus")


def test_the_default_run_needs_neither_extra(without):
    """Nothing on the default path imports Opacus or matplotlib: a plain ``pip install flwr-vproto`` runs it."""
    without("opacus", "matplotlib")
    assert run_inprocess(small_cfg("vproto", rounds=2))["final"]["accuracy"] > 0


@pytest.mark.parametrize("option, section", [({"privacy": {"noise_multiplier": 1.0}}, "privacy"),
                                             ({"privacy": {"target_epsilon": 4.0}}, "privacy"),
                                             ({"defence": {"target_epsilon": 1.0, "release_rounds": 3}},
                                              "defence")])
def test_a_gaussian_release_without_opacus_fails_in_one_line_naming_the_option(without, option, section):
    shared = {"lambda_passive": 1.0} if section == "privacy" else None  # DP prototypes need prototypes sent
    cfg = small_cfg("vproto", rounds=2, method_extra=shared, **option)
    without("opacus")
    with pytest.raises(ConfigError, match=rf"^{section}\.noise_multiplier=.* / {section}\.target_epsilon=.*"
                                          + NEEDS_OPACUS) as err:
        run_inprocess(cfg)
    assert "\n" not in str(err.value)
    from flwr_vproto.strategy import VerticalProtoStrategy

    with pytest.raises(ConfigError, match=NEEDS_OPACUS):  # the Flower engine's server, before any message
        VerticalProtoStrategy(cfg)


def test_the_command_line_says_it_before_loading_data(tmp_path):
    code = ("import sys; sys.modules['opacus'] = None; sys.argv[0] = 'run_simulation.py'; "
            "from flwr_vproto.cli import run; run()")
    proc = subprocess.run([sys.executable, "-c", code, "engine=inprocess", "defence=gradient_noise",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("config error: defence.noise_multiplier=0 / defence.target_epsilon=0.55 (the Gaussian "
                           "gradient channel, defence=gradient_noise) needs opacus"), proc.stderr[-2000:]
    assert not (tmp_path / "run" / "results.json").exists()


def _results(path: Path, acc: float) -> None:
    path.mkdir(parents=True)
    cfg = {"seed": 0, "engine": "inprocess", "dataset": {"name": "adult", "aligned_fraction": 0.05},
           "method": {"name": "vproto"}}
    rounds = [{"round": 1.0, "test/accuracy": acc, "val/accuracy": acc}]
    (path / "results.json").write_text(json.dumps({"config": cfg, "rounds": rounds, "final": {"accuracy": acc}}))


def test_the_report_without_matplotlib_writes_every_table_and_says_it_drew_no_plots(tmp_path, without, capsys):
    _results(tmp_path / "a", 0.8)
    with_plots = write_report([tmp_path], tmp_path / "with")
    without("matplotlib")
    rep = write_report([tmp_path], tmp_path / "without")
    assert not [p for p in rep["files"] if p.suffix == ".png"]
    assert [p for p in with_plots["files"] if p.suffix == ".png"]
    assert rep["tables"] == with_plots["tables"]
    md = (tmp_path / "without" / "summary.md").read_text()
    assert "no plots: matplotlib" in md and "pip install 'flwr-vproto[plots]'" in md
    assert "report: warning: no plots: matplotlib" in capsys.readouterr().err


def test_the_extras_are_declared_and_dev_installs_them():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    required = " ".join(project["dependencies"])
    assert "opacus" not in required and "matplotlib" not in required
    assert "lightgbm" in required  # the default active-only head on tables (method.head) is LightGBM
    extras = project["optional-dependencies"]
    assert extras["dp"][0].startswith("opacus") and extras["plots"][0].startswith("matplotlib")
    assert optional.EXTRAS == {"opacus": "dp", "matplotlib": "plots"}
    assert "flwr-vproto[dp,plots,sweeps]" in extras["all"]
    assert any(e.startswith("flwr-vproto[all") for e in extras["dev"])
