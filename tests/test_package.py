"""The package as a user gets it: the public names, the entry points, the wheel, and the README's own ServerApp."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import flwr_vproto

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "flwr", "sklearn", "pandas", "ray")


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _python(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _imported(importtime_stderr: str) -> set[str]:
    """Top-level package names that ``-X importtime`` saw imported."""
    return {m.group(1).split(".")[0] for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$",
                                                           importtime_stderr, re.M)}


# ---------------------------------------------------------------------------------------------------- public API
def test_public_names_resolve_to_their_modules():
    assert sorted(flwr_vproto.__all__) == sorted(flwr_vproto._EXPORTS)
    for name, module in flwr_vproto._EXPORTS.items():
        obj = getattr(flwr_vproto, name)
        assert obj.__module__ == module and obj is getattr(sys.modules[module], name), name
        assert name in dir(flwr_vproto)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        flwr_vproto.nope  # noqa: B018
    from flwr_vproto import Config, VerticalProtoStrategy, config_from_dict  # the README's imports

    assert isinstance(config_from_dict({}), Config) and VerticalProtoStrategy.__name__ == "VerticalProtoStrategy"


def test_import_flwr_vproto_loads_neither_torch_nor_flower(tmp_path):
    proc = _python(["-X", "importtime", "-c", "import flwr_vproto; print(flwr_vproto.__version__)"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == flwr_vproto.__version__
    assert not _imported(proc.stderr) & {*HEAVY, "numpy", "hydra"}, sorted(_imported(proc.stderr))


# ---------------------------------------------------------------------------------------------------- entry points
def test_missing_csv_is_reported_before_the_heavy_imports(tmp_path):
    """A mistyped path fails in about a second: before pandas, scikit-learn, torch or Flower load."""
    missing = tmp_path / "bank.csv"
    proc = _python(["-X", "importtime", str(REPO / "run_simulation.py"), "dataset=csv",
                    f"dataset.csv.paths=[{missing},{tmp_path / 'shop.csv'}]", f"hydra.run.dir={tmp_path / 'run'}"],
                   tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"data error: CSV file not found: {missing}"
    assert not _imported(proc.stderr) & set(HEAVY), sorted(_imported(proc.stderr) & set(HEAVY))
    assert not (tmp_path / "run").exists()  # the failed run's folder is removed, as before


def test_entry_points_compose_the_same_config(tmp_path):
    """``python -m flwr_vproto`` (the console script's code) and ``run_simulation.py`` read the same shipped
    configs with the same overrides."""
    overrides = ["--cfg", "job", "dataset=adult", "seed=3", "method.tau=0.2"]
    module = _python(["-m", "flwr_vproto", *overrides], tmp_path)
    script = _python([str(REPO / "run_simulation.py"), *overrides], tmp_path)
    assert module.returncode == script.returncode == 0, module.stderr[-2000:] + script.stderr[-2000:]
    assert module.stdout == script.stdout and "name: adult" in module.stdout and "tau: 0.2" in module.stdout


# ---------------------------------------------------------------------------------------------------- the wheel
def _see_these_dependencies(venv: Path) -> None:
    """Let a throwaway venv import this interpreter's installed dependencies (no network to install them), whether
    the tests run in a venv (as README's test command does) or not.

    ``python -m venv --system-site-packages`` would not do inside a venv: the new venv is based on the *base*
    interpreter and sees its site-packages, not the outer venv's (hydra, flwr and torch missing there). A ``.pth``
    file listing this interpreter's site-packages folders puts them after the venv's own, where the wheel goes; the
    ``.pth`` files inside them (this checkout's editable install among them) are not run, so ``flwr_vproto`` comes
    from the wheel."""
    site_dirs = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    (own,) = (venv / "lib").glob("python3*/site-packages")
    (own / "_outer_dependencies.pth").write_text("".join(f"{d}\n" for d in site_dirs))


@pytest.mark.slow
def test_wheel_ships_configs_licence_and_a_working_console_script(tmp_path):
    """Build the wheel from the files a release holds, install it into a throwaway venv and run ``flwr-vproto``
    from a folder that is not a checkout."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "NOTICE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "flwr_vproto", src / "flwr_vproto", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(dist), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-3000:]
    wheel = next(dist.glob("flwr_vproto-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = {p.relative_to(REPO).as_posix() for p in (REPO / "flwr_vproto" / "conf").rglob("*.yaml")}
    assert conf and conf <= names, sorted(conf - names)
    assert {"flwr_vproto/py.typed", "flwr_vproto/data/files/adult/adult.data.gz"} <= names
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert {f"{dist_info}/licenses/LICENSE", f"{dist_info}/licenses/NOTICE"} <= names
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "flwr-vproto = flwr_vproto.cli:run" in entry_points
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()  # heavy optional parts are extras
    assert 'Requires-Dist: opacus>=1.5; extra == "dp"' in metadata
    assert 'Requires-Dist: matplotlib>=3.7; extra == "plots"' in metadata

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    _see_these_dependencies(venv)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                          str(wheel)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import flwr_vproto; print(flwr_vproto.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr  # the wheel, not this checkout
    script = str(venv / "bin" / "flwr-vproto")
    helped = subprocess.run([script, "--help"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and helped.stdout.startswith("flwr-vproto: "), helped.stderr[-2000:]
    assert "\n  flwr-vproto [group=preset ...] [option=value ...]\n" in helped.stdout  # the command the user ran
    assert "run_simulation.py [group" not in helped.stdout and "...\n" not in helped.stdout  # no description cut
    assert "dataset: adult, csv, digits, fashion_mnist" in helped.stdout  # the presets, shipped in the wheel
    assert "  exchange.count=null " in helped.stdout  # every option, with a description
    job = subprocess.run([script, "--cfg", "job", "dataset=adult", "seed=3"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=120)
    assert job.returncode == 0, job.stderr[-2000:]
    assert job.stdout == _python([str(REPO / "run_simulation.py"), "--cfg", "job", "dataset=adult", "seed=3"],
                                 tmp_path).stdout
    assert not list(elsewhere.iterdir())  # --help and --cfg write no run folder


# ---------------------------------------------------------------------------------------------------- README
def _readme_server_app() -> str:
    """The code block under docs/extending.md's "Your own ServerApp" heading."""
    text = (REPO / "docs" / "extending.md").read_text()
    section = text[text.index("## Your own ServerApp"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_quotes_the_example_server_app():
    example = (REPO / "flwr_vproto" / "examples" / "own_server_app.py").read_text()
    quoted = _readme_server_app()
    assert "VerticalProtoStrategy(" in quoted and "make_client_app(" in quoted
    assert quoted in example  # the docs show the file's code, which the test below runs


@pytest.mark.slow
def test_own_server_app_example_runs_in_a_flower_simulation(tmp_path):
    """README's ServerApp, with this package's ClientApp, in a Ray-backed Flower simulation (3 rounds of digits)."""
    env = {**_env(), "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "flwr_vproto.examples.own_server_app"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rounds = re.findall(r"^round (\d): validation accuracy (0\.\d+)$", proc.stdout, re.M)
    assert [r for r, _ in rounds] == ["1", "2", "3"], proc.stdout[-2000:]
    assert re.search(r"^exchange 1 done: [\d.]+ s$", proc.stdout, re.M), proc.stdout[-2000:]  # the default: one
    final = re.search(r"^test accuracy (0\.\d+) \(round \d\); 1 exchange\(s\) of party metrics$", proc.stdout, re.M)
    assert final and float(final.group(1)) > 0.5, proc.stdout[-2000:]
