"""A user's first runs (issue 14): bad inputs fail before any engine starts with one line, runs never share a folder
or overwrite results.json, failed runs leave no folder behind, every run ends with its summary; the deployment
helpers (one-line party errors in the ServerApp log, ``flwr-vproto deploy connect``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flwr_vproto.checks import party_error_line, unwrap_reason
from flwr_vproto.protocol import ProtocolError
from flwr_vproto.results import format_summary, write_results

REPO = Path(__file__).resolve().parents[1]
ENGINE_STARTED = ("starting the Flower simulation", "round   1/", "ray", "Ray")  # what a started engine prints


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update({"PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
                "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", **extra})
    return env


def _run(cwd: Path, *overrides: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "run_simulation.py"), *overrides], cwd=cwd, env=_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def _csvs(folder: Path) -> dict[str, str]:
    """Tiny party files: a good pair and one bad file per kind of mistake."""
    rng = np.random.default_rng(0)
    n = 120
    ids = np.arange(n)
    bank = pd.DataFrame({"id": ids, "a1": rng.normal(size=n), "a2": rng.normal(size=n),
                         "label": rng.integers(0, 2, n)})
    shop = pd.DataFrame({"id": ids, "b1": rng.normal(size=n), "b2": rng.normal(size=n)})
    files = {"bank": bank, "shop": shop, "bank_nolabel": bank.drop(columns="label"),
             "bank_dup": pd.concat([bank, bank.iloc[:1]]), "shop_disjoint": shop.assign(id=shop["id"] + 10_000)}
    nan = bank.copy()
    nan.loc[3, "a1"] = np.nan
    files["bank_nan"] = nan
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in files.items():
        frame.to_csv(folder / f"{name}.csv", index=False)
    return {name: str(folder / f"{name}.csv") for name in files}


def _paths(*files: str) -> str:
    return f"dataset.csv.paths=[{','.join(files)}]"


# (active file, passive file, what the one line must say)
BAD_INPUTS = {
    "missing file": ("bank_gone", "shop", "data error: CSV file not found: "),
    "missing label column": ("bank_nolabel", "shop", "the active party's file has no label column 'label'"),
    "NaN": ("bank_nan", "shop", "bank_nan.csv: column 'a1' has 1 empty/NaN value(s)"),
    "duplicate ID": ("bank_dup", "shop", "bank_dup.csv: 1 ID(s) appear more than once in column 'id'"),
    "empty overlap": ("bank", "shop_disjoint", "only 0 training user ID(s) appear in every CSV file"),
}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["flower", "inprocess"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_a_bad_input_fails_before_any_engine_starts_with_one_line(tmp_path, case, engine):
    files = _csvs(tmp_path / "data")
    active, passive, says = BAD_INPUTS[case]
    paths = [files.get(active, str(tmp_path / "data" / f"{active}.csv")), files[passive]]
    proc = _run(tmp_path, f"engine={engine}", "dataset=csv", _paths(*paths))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("data error: ") and says in lines[0], out
    assert "Traceback" not in out and not any(s in out for s in ENGINE_STARTED), out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"], list(tmp_path.rglob("*"))  # no folder left


@pytest.mark.slow
def test_hydra_full_error_shows_the_traceback(tmp_path):
    files = _csvs(tmp_path / "data")
    proc = _run(tmp_path, "engine=inprocess", "dataset=csv", _paths(files["bank_nan"], files["shop"]),
                HYDRA_FULL_ERROR="1")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "DataError: " in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.slow
def test_a_config_error_is_one_line_and_leaves_no_folder(tmp_path):
    proc = _run(tmp_path, "engine=inprocess", "runner.selection_metric=f1")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and out.strip().splitlines() == [
        "config error: runner.selection_metric must be one of accuracy, auc, got 'f1'"], out
    proc = _run(tmp_path, "engine=flower", "method=centralized")
    assert proc.returncode != 0 and (proc.stdout + proc.stderr).strip().startswith("config error: method=centralized")
    assert list(tmp_path.iterdir()) == []  # not even outputs/<date>


@pytest.mark.slow
def test_runs_started_together_get_their_own_folders_and_end_with_the_summary(tmp_path):
    files = _csvs(tmp_path / "data")
    args = [sys.executable, str(REPO / "run_simulation.py"), "engine=inprocess", "dataset=csv",
            _paths(files["bank"], files["shop"]), "num_rounds=2", "runner.save_models=false"]
    procs = [subprocess.Popen(args + extra, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for extra in ([], ["audit.record=true"])]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    found = sorted(tmp_path.glob("outputs/*/*/results.json"))
    assert len(found) == 2 and found[0].parent != found[1].parent, found  # same second, two folders
    for out in outs:
        header = out.splitlines()[0]
        assert "(bank.csv, shop.csv, 1 passive, 2 rounds" in header and "aligned 0.05" not in header, header
        assert "final: test accuracy " in out and re.search(r"\bround \d+ of 2\b", out), out  # best, or the last
        path = out.split("results: ")[-1].strip().splitlines()[0]
        assert Path(path) in found, (path, found)
        results = json.loads(Path(path).read_text())
        aligned = results["alignment"]["aligned"]["train"]
        assert f"{aligned} aligned training users" in out, out
        final = results["final"]
        assert f"test accuracy {final['accuracy']:.4f} (joint model {final['joint_accuracy']:.4f}, active-only " \
               f"head {final['local_accuracy']:.4f}" in out, out
    audited = [json.loads(p.read_text()) for p in found if "audit" in json.loads(p.read_text())]
    # audit.dir = <run dir>/audit; the default (defence=no_gradients) sends no row: nothing to attack
    assert len(audited) == 1 and audited[0]["audit"]["rows_rounds"] == 0
    assert sum("label-leakage audit: no gradient row reached any passive" in out for out in outs) == 1
    assert all("label protection (aligned users, against each passive): no gradient row leaves the active party"
               in out for out in outs)  # the default's protection, stated in the summary
    assert len({p.parent.parent for p in tmp_path.glob("outputs/*/*/audit/round-*.npz")}) == 1


@pytest.mark.slow
def test_a_run_never_overwrites_results_json(tmp_path):
    files = _csvs(tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text('{"earlier": true}')
    proc = _run(tmp_path, "engine=inprocess", "dataset=csv", _paths(files["bank"], files["shop"]), "num_rounds=1",
                f"hydra.run.dir={run}")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "already holds results.json" in out and "Traceback" not in out, out
    assert json.loads((run / "results.json").read_text()) == {"earlier": True}
    assert not (run / "models").exists()


def test_write_results_exclusive_writes_beside_an_existing_file(tmp_path):
    first = write_results(tmp_path / "results.json", {"a": 1}, exclusive=True)
    second = write_results(tmp_path / "results.json", {"a": 2}, exclusive=True)
    assert first == tmp_path / "results.json" and second == tmp_path / "results-2.json"
    assert json.loads(first.read_text()) == {"a": 1} and json.loads(second.read_text()) == {"a": 2}
    assert write_results(tmp_path / "results.json", {"a": 3}) == first and json.loads(first.read_text()) == {"a": 3}


def test_format_summary_names_the_joint_model_the_active_only_head_the_round_and_the_file():
    results = {"config": {"num_rounds": 40}, "rounds": [{"round": 1.0}],
               "final": {"accuracy": 0.9084, "joint_accuracy": 0.8526, "local_accuracy": 0.761,
                         "active_only_accuracy": 0.7685, "best_round": 38.0, "val_accuracy": 0.9097},
               "alignment": {"aligned": {"train": 65}}, "selection": {"metric": "accuracy", "val_score": 0.9097}}
    lines = format_summary(results, "out/results.json", elapsed=47)
    assert lines == [
        "final: test accuracy 0.9084 (joint model 0.8526, active-only head 0.7610, on the users every party holds)",
        "best round 38 of 40 by validation accuracy (0.9097); users only the active party holds: 0.7685 "
        "(active-only head)",
        "65 aligned training users, 47s -> results: out/results.json"]
    assert format_summary({"final": {}, "rounds": []})[0].startswith("final: no evaluated round")
    # server-metrics=progress: the server's summary points at the active party's own results, and still counts
    progress = format_summary({"final": {}, "rounds": [{"round": 1, "progress.exchange": 1.0, "progress.rounds": 1.0}],
                               "alignment": {"aligned": {"train": 12}}}, path="out/results.json")
    assert progress[0].startswith("final: the scores stay with the active party (its server-metrics=progress)")
    assert progress[1] == "12 aligned training users -> results: out/results.json"
    # a deployment's server records only its own exchange keys: the policy the active party announced says it
    deployed = format_summary({"final": {}, "rounds": [{"round": 1, "exchange/seconds": 2.0}],
                               "flower": {"server_metrics": "progress"}})
    assert deployed[0].startswith("final: the scores stay with the active party")


RAY_REASON = (
    "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m "
    "(pid=1, ip=127.0.0.1)\n  File \"flwr/client_app.py\", line 9, in __call__\n    raise ClientAppException(str(ex))"
    "\nflwr.clientapp.client_app.ClientAppException: \nException ClientAppException occurred. Message: "
    "/tmp/bank_nan.csv: column 'x' has 1 empty/NaN value(s)\nTraceback (most recent call last):\n  File \"load.py\", "
    "line 3, in load_party\nflwr_vproto.data.types.DataError: /tmp/bank_nan.csv: column 'x' has 1 empty/NaN "
    "value(s) of 99 rows'>")


def test_a_partys_error_becomes_one_line_naming_the_party_and_the_file():
    deployed = ProtocolError("passive1 (node 7) failed during discovery: <class 'flwr_vproto.data.types.DataError'>:"
                             "<'/data/shop.csv: 2 ID(s) appear more than once in column 'id', e.g. '5'; each user "
                             "must have exactly one row per party'> (error code 2)")
    assert party_error_line(deployed) == (
        "data error: passive1 (node 7) during discovery: /data/shop.csv: 2 ID(s) appear more than once in column "
        "'id', e.g. '5'; each user must have exactly one row per party")
    simulated = ProtocolError(f"active (node 3) failed during discovery: {RAY_REASON} (error code 2)")
    assert party_error_line(simulated) == ("data error: active (node 3) during discovery: /tmp/bank_nan.csv: column "
                                           "'x' has 1 empty/NaN value(s) of 99 rows")
    at_discovery = ProtocolError("node 9 failed during discovery: <class 'flwr_vproto.data.types.DataError'>:"
                                 "<'passive1: /data/shop.csv: column 'x' has 1 empty/NaN value(s)'> (error code 2)")
    assert party_error_line(at_discovery) == ("data error: passive1 (node 9) during discovery: /data/shop.csv: "
                                              "column 'x' has 1 empty/NaN value(s)")
    assert unwrap_reason("<class 'ZeroDivisionError'>:<'division by zero'>") == ("ZeroDivisionError",
                                                                                 "division by zero")
    plain = ProtocolError("no reply from passive1 (node 9) during training (passive parties) of round 3 within 5 s")
    assert party_error_line(plain) == f"error: {plain}"


def test_connect_writes_the_superlink_connection_in_flowers_format(tmp_path, monkeypatch, capsys):
    from flwr_vproto.deploy.cli import main as deploy

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    assert deploy(["connect", "--name", "mylink", "--address", "127.0.0.1:9093", "--insecure"]) == 0
    assert deploy(["connect", "--name", "tls", "--address", "link.example.org:9093", "--root-certificates", str(ca),
                   "--no-default"]) == 0
    config = tomllib.loads((tmp_path / "home" / "config.toml").read_text())["superlink"]
    assert config["default"] == "mylink" and "local" in config  # Flower's own default connection is kept
    assert config["mylink"] == {"address": "127.0.0.1:9093", "insecure": True}
    assert config["tls"] == {"address": "link.example.org:9093", "root-certificates": str(ca.resolve())}

    from flwr.cli.flower_config import read_superlink_connection  # Flower itself reads it back

    assert read_superlink_connection("tls").root_certificates == str(ca.resolve())
    capsys.readouterr()
    assert deploy(["connect", "--name", "x", "--address", "no-port", "--insecure"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("connect error: --address 'no-port'") and len(err.splitlines()) == 1, err


@pytest.mark.slow
def test_an_aligned_fraction_given_with_csv_is_named_as_ignored_and_the_measured_overlap_reported(tmp_path):
    files = _csvs(tmp_path / "data")
    proc = _run(tmp_path, "engine=inprocess", "dataset=csv", _paths(files["bank"], files["shop"]), "num_rounds=1",
                "dataset.aligned_fraction=0.02", f"hydra.run.dir={tmp_path / 'run'}", "runner.save_models=false")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "warning: dataset.aligned_fraction=0.02 is ignored for dataset=csv" in out
    aligned = json.loads((tmp_path / "run" / "results.json").read_text())["alignment"]["aligned"]["train"]
    assert f"{aligned} aligned training users" in out and "aligned 0.02" not in out
