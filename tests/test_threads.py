"""The thread policy of the in-process engine and the tools (flwr_vproto/threads.py, README "Threads")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flwr_vproto import threads

REPO = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*threads.THREAD_VARS, "HYDRA_FULL_ERROR")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**env, **extra}


def test_default_is_one_thread_unless_the_user_set_omp_num_threads(monkeypatch):
    assert threads.default_threads({}) == threads.DEFAULT_THREADS == 1
    assert threads.default_threads({"OMP_NUM_THREADS": " "}) == 1
    assert threads.default_threads({"OMP_NUM_THREADS": "2"}) is None  # the user's number stands
    monkeypatch.setitem(threads._SET, "OMP_NUM_THREADS", "2")  # ... unless an earlier job of this process set it
    assert threads.default_threads({"OMP_NUM_THREADS": "2"}) == 1
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        threads.bound_threads(0)


def test_simulation_backend_gives_each_party_the_policys_cpus_and_no_gpu():
    """Flower's run_simulation resources for a ServerApp of your own (README "Your own ServerApp")."""
    def cpus(backend):
        assert backend["client_resources"]["num_gpus"] == 0.0
        return backend["client_resources"]["num_cpus"]

    assert cpus(threads.simulation_backend(environ={})) == threads.DEFAULT_THREADS == 1
    assert cpus(threads.simulation_backend(environ={"OMP_NUM_THREADS": "3"})) == 3  # the user's number stands
    assert cpus(threads.simulation_backend(environ={"OMP_NUM_THREADS": "4,1"})) == 4  # nested: the outer level
    assert cpus(threads.simulation_backend(2, environ={"OMP_NUM_THREADS": "3"})) == 2  # an explicit number first
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='many' is not a number of threads"):
        threads.simulation_backend(environ={"OMP_NUM_THREADS": "many"})
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        threads.simulation_backend(0)


_PROBE = """
import json, os, numpy, torch, threadpoolctl
from flwr_vproto.threads import apply_default_threads
before = torch.get_num_threads()
applied = apply_default_threads()
print(json.dumps({"before": before, "applied": applied, "torch": torch.get_num_threads(),
                  "env": os.environ.get("OMP_NUM_THREADS"),
                  "blas": sorted({i["num_threads"] for i in threadpoolctl.threadpool_info()})}))
"""


def test_apply_default_bounds_torch_blas_and_child_processes(tmp_path):
    """In a fresh process (torch and numpy already loaded, as in the tools): torch, the loaded BLAS/OpenMP pools and
    the environment children inherit all get one thread; a user's OMP_NUM_THREADS is left as it is."""
    out = json.loads(subprocess.run([sys.executable, "-c", _PROBE], cwd=tmp_path, env=_env(), capture_output=True,
                                    text=True, timeout=120, check=True).stdout)
    assert out["applied"] == out["torch"] == 1 and out["env"] == "1" and out["blas"] == [1], out
    users = json.loads(subprocess.run([sys.executable, "-c", _PROBE], cwd=tmp_path, env=_env(OMP_NUM_THREADS="2"),
                                      capture_output=True, text=True, timeout=120, check=True).stdout)
    assert users["applied"] is None and users["torch"] == users["before"] == 2 and users["env"] == "2", users


@pytest.mark.parametrize("value", ["0", "abc"])
def test_bad_runner_threads_is_one_line_before_any_data(tmp_path, value):
    proc = subprocess.run([sys.executable, str(REPO / "run_simulation.py"), "engine=inprocess",
                           f"runner.threads={value}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"config error: runner.threads must be an integer >= 1 or null, got {0 if value == '0' else repr(value)}"]


@pytest.mark.slow
@pytest.mark.parametrize(("extra_env", "override", "want"), [
    ({}, [], {"threads": 1, "torch_threads": 1, "by": "default"}),
    ({"OMP_NUM_THREADS": "2"}, [], {"threads": None, "torch_threads": 2, "by": "OMP_NUM_THREADS"}),
    ({}, ["runner.threads=2"], {"threads": 2, "torch_threads": 2, "by": "runner.threads"}),
])
def test_inprocess_run_records_its_threads(tmp_path, extra_env, override, want):
    """results.json's ``job`` says how many threads the in-process engine ran on and why.

    The runs train ``method=local`` for one round: the record is the runner's, whatever the method, and a run on
    two torch threads beside the other pytest worker's processes (a loopback deployment's dozen) crawls, each
    parallel region waiting for both threads to get a core. vproto's pre-training and round took 180 s there in a
    suite (2026-12-07, 9 s with one thread); beside eight busy processes, 60 s for vproto and 25 s for ``local``."""
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(REPO / "run_simulation.py"), "engine=inprocess", "num_rounds=1",
                           "method=local", *override, f"hydra.run.dir={run}"], cwd=tmp_path,
                          env=_env(**extra_env), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = json.loads((run / "results.json").read_text())["job"]
    assert {k: job[k] for k in want} == want and job["cores"] >= 1, job
