"""The package as a user gets it: the public names, the entry points, the wheel (its console script, and a loopback
deployment from it outside any checkout), the Flower app folder it writes, and the README's own ServerApp."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
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
    the tests run in a venv (as README's test command does) or not, and give it Flower's executables.

    ``python -m venv --system-site-packages`` would not do inside a venv: the new venv is based on the *base*
    interpreter and sees its site-packages, not the outer venv's (hydra, flwr and torch missing there). A ``.pth``
    file listing this interpreter's site-packages folders puts them after the venv's own, where the wheel goes; the
    ``.pth`` files inside them (this checkout's editable install among them) are not run, so ``flwr_vproto`` comes
    from the wheel. Flower's console scripts (``flwr``, ``flower-superlink``, ``flwr-serverapp``, ...) are written
    into the venv's ``bin`` as ``pip install flwr`` would, run by the venv's Python: the SuperLink and SuperNodes
    start ``flwr-serverapp``/``flwr-clientapp`` from ``PATH``, and those must import the wheel."""
    from importlib.metadata import distribution

    site_dirs = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    (own,) = (venv / "lib").glob("python3*/site-packages")
    (own / "_outer_dependencies.pth").write_text("".join(f"{d}\n" for d in site_dirs))
    for ep in distribution("flwr").entry_points:
        if ep.group == "console_scripts":
            script = venv / "bin" / ep.name
            script.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom {ep.module} import {ep.attr}\n"
                              f"sys.exit({ep.attr}())\n")
            script.chmod(0o755)


@dataclass
class Installed:
    """The wheel built from the files a release holds, installed into a throwaway venv; ``env`` runs it outside
    this checkout (no ``PYTHONPATH``, the venv's ``bin`` first on ``PATH``)."""

    wheel: Path
    venv: Path
    env: dict[str, str]
    elsewhere: Path  # a folder that is not a checkout

    def run(self, args: list[str], cwd: Path | None = None, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        exe = args[0] if "/" in args[0] else str(self.venv / "bin" / args[0])
        return subprocess.run([exe, *args[1:]], cwd=cwd or self.elsewhere, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    """Built and installed once for this module's wheel tests (CI pays for it once)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "NOTICE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "flwr_vproto", src / "flwr_vproto", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(dist), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-3000:]
    wheel = next(dist.glob("flwr_vproto-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    _see_these_dependencies(venv)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                          str(wheel)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR", "FLWR_HOME")}
    env.update({"PATH": os.pathsep.join([str(venv / "bin"), env.get("PATH", "")]), "OMP_NUM_THREADS": "1",
                "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_HOME": str(tmp / "flwr-home")})
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return Installed(wheel, venv, env, elsewhere)


@pytest.mark.slow
def test_wheel_ships_configs_licence_and_a_working_console_script(installed, tmp_path):
    """The wheel holds what a release needs; ``flwr-vproto`` runs from a folder that is not a checkout."""
    wheel, venv, elsewhere = installed.wheel, installed.venv, tmp_path / "elsewhere"
    elsewhere.mkdir()
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = {p.relative_to(REPO).as_posix() for p in (REPO / "flwr_vproto" / "conf").rglob("*.yaml")}
    assert conf and conf <= names, sorted(conf - names)
    assert {"flwr_vproto/py.typed", "flwr_vproto/data/files/adult/adult.data.gz"} <= names
    assert {f"flwr_vproto/deploy/{m}.py" for m in ("app", "certs", "cli", "connect", "local", "submit")} <= names
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert {f"{dist_info}/licenses/LICENSE", f"{dist_info}/licenses/NOTICE"} <= names
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "flwr-vproto = flwr_vproto.cli:run" in entry_points
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()  # heavy optional parts are extras
    assert 'Requires-Dist: opacus>=1.5; extra == "dp"' in metadata
    assert 'Requires-Dist: matplotlib>=3.7; extra == "plots"' in metadata

    where = installed.run(["python", "-c", "import flwr_vproto; print(flwr_vproto.__file__)"], cwd=elsewhere)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr  # the wheel, not this checkout
    helped = installed.run(["flwr-vproto", "--help"], cwd=elsewhere)
    assert helped.returncode == 0 and helped.stdout.startswith("flwr-vproto: "), helped.stderr[-2000:]
    assert "\n  flwr-vproto [group=preset ...] [option=value ...]\n" in helped.stdout  # the command the user ran
    assert "run_simulation.py [group" not in helped.stdout and "...\n" not in helped.stdout  # no description cut
    assert "dataset: adult, csv, digits, fashion_mnist" in helped.stdout  # the presets, shipped in the wheel
    assert "  exchange.count=null " in helped.stdout  # every option, with a description
    job = installed.run(["flwr-vproto", "--cfg", "job", "dataset=adult", "seed=3"], cwd=elsewhere)
    assert job.returncode == 0, job.stderr[-2000:]
    assert job.stdout == _python([str(REPO / "run_simulation.py"), "--cfg", "job", "dataset=adult", "seed=3"],
                                 tmp_path).stdout
    deploy_help = installed.run(["flwr-vproto", "deploy", "--help"], cwd=elsewhere)  # not Hydra's: argparse's
    assert deploy_help.returncode == 0 and "{certs,app,connect,local,submit}" in deploy_help.stdout, \
        deploy_help.stdout + deploy_help.stderr[-2000:]
    assert not list(elsewhere.iterdir())  # --help and --cfg write no run folder


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pathspec's, inside Flower's FAB builder
def test_the_app_folder_deploy_writes_has_the_repositorys_flower_app_tables(tmp_path):
    """``flwr-vproto deploy app DIR`` writes the ``[tool.flwr.app]`` tables of this repository's pyproject.toml,
    from the one source they are both checked against (components, run-config defaults); Flower accepts the folder
    as an app and its FAB carries no code."""
    import io

    from flwr.cli.build import build_fab_from_disk
    from flwr.common.config import flatten_dict, validate_config

    from flwr_vproto.deploy.app import app_tables
    from flwr_vproto.deploy.cli import main as deploy

    assert deploy(["app", str(tmp_path / "app")]) == 0
    written = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())
    ours = tomllib.loads((REPO / "pyproject.toml").read_text())
    tables = [{**doc["tool"]["flwr"]["app"], "config": flatten_dict(doc["tool"]["flwr"]["app"]["config"])}
              for doc in (written, ours)]
    assert tables[0] == tables[1] == app_tables()
    assert written["project"]["name"] == ours["project"]["name"] and \
        written["project"]["version"] == ours["project"]["version"] == flwr_vproto.__version__
    assert validate_config(written, check_module=True, project_dir=tmp_path / "app")[0]
    with zipfile.ZipFile(io.BytesIO(build_fab_from_disk(tmp_path / "app"))) as fab:
        assert sorted(fab.namelist()) == [".info/CONTENT", "README.md", "pyproject.toml"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "pyproject.toml").write_text("[project]\nname = 'mine'\n")
    assert deploy(["app", str(tmp_path / "other")]) == 2  # someone else's pyproject.toml is never replaced
    assert "name = 'mine'" in (tmp_path / "other" / "pyproject.toml").read_text()


def _last_line(text: str) -> str:
    """The last line that says something: ANSI colours removed (Flower colours its level names), and Flower's empty
    ``INFO :`` line after a completed run skipped."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()
    return [ln.strip() for ln in lines if re.sub(r"^\s*[A-Z]+\s*:", "", ln).strip()][-1]


def _ctrl_c_as_in_a_terminal() -> None:
    """SIGINT back to its default in the child, as a shell started in a terminal gives it: a suite run as a
    background job (``.ci/run &``) ignores SIGINT, and a child inherits that, so Ctrl-C would reach nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_from_the_wheel_a_loopback_deployment_of_split_csvs_runs_to_results_json(installed, tmp_path):
    """Outside any checkout, with only the wheel: ``split_table`` cuts a table into two party files and prints the
    commands; ``deploy local --serve`` starts a SuperLink and a SuperNode per file; the printed ``deploy app`` and
    ``deploy submit`` (two rounds, one exchange) train to ``results.json`` (exit 0); a data error and a config error
    exit 1 with their one line last, while Flower 1.42's own ``flwr run --stream`` exits 0 for the same failed run
    (why ``submit`` exists); Ctrl-C stops every process."""
    from conftest import write_table

    work = installed.elsewhere / "deploy"
    work.mkdir()
    write_table(work / "own.csv")
    split = installed.run(["python", "-m", "flwr_vproto.split_table", "own.csv", "--id", "customer no", "--label",
                           "defaulted", "--active-share", "0.5", "--aligned", "0.1", "--out", "parties"], cwd=work)
    assert split.returncode == 0, split.stderr[-2000:]
    assert str(REPO) not in split.stdout and "checkout" not in split.stdout, split.stdout
    lines = [shlex.split(ln) for ln in map(str.strip, split.stdout.splitlines())
             if ln.startswith("python -m flwr_vproto.deploy ")]
    app = next(w for w in lines if w[3] == "app")
    submit = next(w for w in lines if w[3] == "submit")
    assert installed.run(app, cwd=work).returncode == 0 and (work / app[-1] / "pyproject.toml").is_file()

    serving = subprocess.Popen([str(installed.venv / "bin" / "flwr-vproto"), "deploy", "local", "--serve",
                                "--workdir", "local", str(work / "parties" / "own.active.csv"),
                                str(work / "parties" / "own.passive1.csv")], cwd=work, env=installed.env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               preexec_fn=_ctrl_c_as_in_a_terminal)
    try:
        said = [serving.stdout.readline() for _ in range(4)]  # type: ignore[union-attr]
        assert said[-1].startswith("Ctrl-C stops them all"), "".join(said)
        port = int(re.search(r"SuperLink on 127\.0\.0\.1:(\d+)", said[0]).group(1))
        cli_home = re.search(r"connection 'loopback' in (\S+)/config\.toml", said[1]).group(1)
        run_config = submit[submit.index("--run-config") + 1]

        def submitted(config: str) -> subprocess.CompletedProcess:
            args = [*submit[:submit.index("--run-config")], "--run-config", config]
            args[args.index("<superlink>")] = "loopback"
            return installed.run(args, cwd=work, timeout=600, env={"FLWR_HOME": cli_home})

        ok = submitted(f"{run_config} num_rounds=2 method.batch_size=64 app.output-dir=\"{work / 'results'}\"")
        assert ok.returncode == 0 and (work / "results" / "results.json").exists(), ok.stdout[-3000:]
        assert "aligned training users" in _last_line(ok.stdout), ok.stdout[-2000:]
        results = json.loads((work / "results" / "results.json").read_text())
        assert [int(r["round"]) for r in results["rounds"]] == [1]  # one exchange of rounds 1-2 (the default)
        assert results["rounds"][0]["exchange/last_round"] == 2
        assert [p["name"] for p in results["flower"]["parties"]] == ["active", "passive1"]

        bad = run_config.replace('label_column="defaulted"', 'label_column="nope"')
        assert bad != run_config
        data = submitted(bad)
        assert data.returncode == 1, data.stdout[-3000:]
        assert re.match(r"ERROR\s*:\s+data error: active \(node \d+\) during discovery: \S+active\.csv: the active "
                        r"party's file has no label column 'nope'", _last_line(data.stdout)), data.stdout[-3000:]
        config = submitted(f"{run_config} method.name=\"nope\"")
        assert config.returncode == 1, config.stdout[-3000:]
        assert re.match(r"ERROR\s*:\s+config error: invalid method.name='nope'", _last_line(config.stdout)), \
            config.stdout[-3000:]
        plain = installed.run(["flwr", "run", app[-1], "loopback", "--stream", "--run-config", bad], cwd=work,
                              timeout=600, env={"FLWR_HOME": cli_home})
        assert plain.returncode == 0 and "data error: active" in _last_line(plain.stdout), plain.stdout[-3000:]
    finally:
        serving.send_signal(signal.SIGINT)
        try:
            out = serving.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:  # it did not stop its processes: stop them all (its own session) and fail
            os.killpg(serving.pid, signal.SIGKILL)
            out = serving.communicate()[0] + "\n(Ctrl-C did not stop deploy local --serve within 60 s)"
    assert serving.returncode == 0, out[-3000:]
    with socket.socket() as s:  # the SuperLink is gone: nobody listens on its port
        assert s.connect_ex(("127.0.0.1", port)) != 0


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
