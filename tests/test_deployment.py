"""A real deployment on loopback: ``flower-superlink``, one ``flower-supernode`` per party, ``flwr run``.

Each SuperNode has its own ``--node-config`` (role, party index, its own CSV file, where to save its model) and its
own ``FLWR_HOME``; nothing is installed at run time. The run's ``results.json`` must match the in-process engine on
the same files, and every process is stopped by PID afterwards (see :mod:`flwr_vproto.deploy.local`; the app is the
folder ``flwr-vproto deploy app`` writes, not this checkout).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import pytest

from flwr_vproto import checkpoint as ck
from flwr_vproto.config import config_from_dict
from flwr_vproto.deploy import certs
from flwr_vproto.deploy import local as deploy
from flwr_vproto.inprocess import run_inprocess

pytestmark = [pytest.mark.slow,  # minutes of loopback deployments: run by CI, not by `pytest -m "not slow"`
              pytest.mark.skipif(shutil.which("flower-superlink") is None and not
                                 (Path(sys.executable).parent / "flower-superlink").exists(),
                                 reason="Flower's deployment executables are not installed")]

# The most any one run may take: a guard against a hang, not a speed test. The two deployments below run side by
# side, CPU-bound: 244 s in all on a quiet 2-core machine (2026-12-07, 403 s of CPU; the three of before, a TLS one
# apart, 265 s and 480 s), most of it Flower's processes (a ClientApp per message, each importing torch and Flower)
# and their SuperLinks and SuperNodes. BENCHMARKS.md "Threads on a shared machine, and the test suite's wall time".
RUN_TIMEOUT = 600.0
# Two deployments share the cores, each running several ClientApp processes at once: one torch thread each.
ENV = {"OMP_NUM_THREADS": "1"}


def _reporting(nodes: list[str]) -> list[str]:
    """The active party's node-config also says it reports every metric to the server (``server-metrics="full"``;
    the default, ``progress``, keeps the label-derived ones on its node): these tests compare the server's results
    with the in-process engine's."""
    return [nodes[0] + ' server-metrics="full"', *nodes[1:]]


def _deploy(workdir: Path, num_passive: int = 2) -> dict:
    """One deployment over TLS with SuperNode authentication (1 active + ``num_passive`` passives, each SuperNode
    with its registered key): an unregistered SuperNode (valid TLS, unknown key), a plain-text SuperNode and a
    plain-HTTP client are turned away; then one 2-round ``flwr run``, a prediction query round with the saved models
    and a run with a bad run config; all stopped after. (The killed deployment runs one passive, without TLS, as the
    wheel's deployment in ``test_package.py`` does: both kinds of SuperLink stay covered.)"""
    import httpx

    names = [f"party{i}" for i in range(num_passive + 1)]
    made = certs.make_certs(workdir / "certs", supernodes=[*names, "intruder"])
    paths = deploy.write_party_csvs(workdir / "data", num_passive, max_train_users=600)
    run_config = {"dataset.name": "csv", "dataset.num_passive": num_passive, "num_rounds": 2,
                  "dataset.aligned_fraction": 0.2, "method.batch_size": 64,
                  "defence.release_rounds": "null"}  # gradient rows travel too (the killed run keeps the default)
    nodes = _reporting(deploy.node_configs(paths, workdir / "models"))
    dep = deploy.LocalDeployment(workdir / "flwr", nodes, tls=workdir / "certs",
                                 node_keys=[made[f"{n}-key"] for n in names], env=ENV)
    turned_away: dict = {}
    try:
        dep.start()
        give_up = ["--max-wait-time", "10"]
        turned_away["intruder"] = dep.try_supernode("intruder",
                                                    dep.supernode_args(nodes[1], made["intruder-key"]) + give_up)
        turned_away["plaintext"] = dep.try_supernode("plaintext", dep.supernode_args(nodes[1], insecure=True) + give_up)
        try:
            turned_away["plain-http"] = httpx.get(f"http://127.0.0.1:{dep.port}/health", timeout=5.0).status_code
        except httpx.HTTPError as err:
            turned_away["plain-http"] = type(err).__name__
        results = dep.run_app(run_config, workdir / "results", timeout=RUN_TIMEOUT)
        trained = dep.last_run_id
        target = workdir / "prediction" / "prediction.json"  # score the held-out users with the saved models
        run_id = dep.submit({**run_config, "app.predict": "held-out"}, target.parent)
        dep.wait(run_id, RUN_TIMEOUT, until=target.exists)
        time.sleep(0.5)
        assert target.exists(), dep.log(run_id)[-3000:]
        prediction = json.loads(target.read_text())
        dep.wait(trained, 60.0)  # finished long ago: its log ends with the summary
        log = dep.log(trained)
        # a party's bad input (here: a label column the active party's file lacks) reaches the ServerApp log as
        # one line naming the party and the file
        bad = dep.submit({**run_config, "dataset.csv.label_column": "nope"}, workdir / "bad")
        bad_status = dep.wait(bad, RUN_TIMEOUT)
        bad_log = dep.log(bad)
    finally:
        dep.stop()
    return {"results": results, "paths": paths, "models": workdir / "models", "deployment": dep,
            "prediction": prediction, "log": log, "bad": (bad_status, bad_log, workdir / "bad"), **turned_away}


# app.timeout of the killed run: far above a normal reply on a busy CI machine (up to ~50 s seen with four
# deployments at once on 2 cores). The SuperLink itself reports a killed node unavailable once its heartbeats
# expire (within about a minute), which usually ends the run first.
KILL_TIMEOUT = 120.0


def _kill_and_resume(workdir: Path) -> dict:
    """``SIGKILL`` the passive SuperNode (and its ClientApp) after the round-1 checkpoint, restart it, resume.

    Each party keeps its checkpoints in its own folder (node-config ``checkpoint-dir``), the server in
    ``checkpoint.dir``. Returns what the test checks.
    """
    paths = deploy.write_party_csvs(workdir / "data", 1, max_train_users=600)
    ckdir = workdir / "server-checkpoints"
    run_config = {"dataset.name": "csv", "dataset.num_passive": 1, "num_rounds": 3, "dataset.aligned_fraction": 0.2,
                  "method.batch_size": 64, "checkpoint.dir": str(ckdir), "checkpoint.every": 1,
                  "exchange.count": 3, "app.timeout": KILL_TIMEOUT}  # one exchange per round: 3 checkpoints
    dep = deploy.LocalDeployment(workdir / "flwr", _reporting(deploy.node_configs(paths, None, workdir / "parties")),
                                 env=ENV)
    out: dict = {"paths": paths, "ckdir": ckdir, "parties": workdir / "parties"}
    try:
        dep.start()
        run_id = dep.submit(run_config, workdir / "killed")
        status = dep.wait(run_id, RUN_TIMEOUT, until=lambda: 1 in ck.rounds_in(ckdir / "server"))
        assert not status.startswith("finished"), dep.log(run_id)[-3000:]
        killed_at = time.monotonic()
        dep.kill_supernode(1)
        dep.start_supernode(1)  # the operator restarts it at once: a new node, which the running run ignores
        out["status"] = dep.wait(run_id, timeout=KILL_TIMEOUT + 60)
        out["noticed"] = time.monotonic() - killed_at
        out["log"] = dep.log(run_id)
        out["last"] = ck.rounds_in(ckdir / "server")[-1]
        out["results"] = dep.run_app({**run_config, "resume": True}, workdir / "resumed", timeout=RUN_TIMEOUT)
    finally:
        dep.stop()
    return out


@pytest.fixture(scope="module")
def deployments(tmp_path_factory) -> dict[str, Future]:
    """Both deployments side by side: much of a deployment's time is waiting (polls, a killed node's heartbeats)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {"tls": pool.submit(_deploy, tmp_path_factory.mktemp("deploy")),
                   "killed": pool.submit(_kill_and_resume, tmp_path_factory.mktemp("killed"))}
        wait(list(futures.values()))
    return futures


def test_flwr_run_on_a_loopback_deployment_then_a_prediction_round(deployments):
    out = deployments["tls"].result()
    results, paths, models, dep = out["results"], out["paths"], out["models"], out["deployment"]
    num_passive = len(paths) - 1  # one CSV per party
    assert all(proc.poll() is not None for proc in dep.started) and not dep.started

    assert [int(r["round"]) for r in results["rounds"]] == [1, 2]
    assert all(math.isfinite(v) for r in results["rounds"] for v in r.values())
    names = ["active"] + [f"passive{k}" for k in range(1, num_passive + 1)]
    assert [p["name"] for p in results["flower"]["parties"]] == names
    assert sorted(p.name for p in models.iterdir() if p.suffix == ".pt") == [f"{n}.pt" for n in names]
    # the prediction query round on the same deployment: the saved models (the last round's; the active-only model
    # kept on the active party's validation users) score the held-out test users as the run reported; the
    # predictions CSV stays on the active party's node, the server gets counts
    metrics = out["prediction"]["metrics"]
    last = results["rounds"][-1]
    assert metrics["accuracy"] == pytest.approx(last["test/accuracy"], abs=1e-6)
    assert metrics["active_only_accuracy"] == pytest.approx(results["final"]["active_only_accuracy"], abs=1e-6)
    assert out["prediction"]["predictions"] == str((models / "predictions-held-out.csv").resolve())
    assert (models / "predictions-held-out.csv").exists()

    # the ServerApp's log ends with the same summary as run_simulation.py (flwr_vproto.results.format_summary)
    final, log = results["final"], out["log"]
    assert f"final: test accuracy {final['accuracy']:.4f}" in log, log[-3000:]
    assert f"round {int(final['best_round'])} of 2" in log and "results.json" in log, log[-3000:]
    assert f"{results['alignment']['aligned']['train']} aligned training users" in log, log[-3000:]
    status, log, folder = out["bad"]
    assert status == "finished:failed" and not folder.exists(), (status, log[-3000:])
    # discovery is where the server learns who a node is: the ClientApp names its party in its data error
    line = re.search(r"data error: active \(node \d+\) during discovery: (\S+): the active party's "
                     r"file has no label column 'nope'", log)
    assert line and line.group(1) == paths[0], log[-3000:]  # one line: the party, the phase, its file, the cause

    # the same files through the in-process engine: the same numbers (up to float reduction order)
    cfg = config_from_dict({"num_rounds": 2, "engine": "inprocess", "method": {"batch_size": 64},
                            "dataset": {"name": "csv", "num_passive": num_passive, "aligned_fraction": 0.2,
                                        "csv": {"paths": paths}}, "defence": {"release_rounds": None}})
    reference = run_inprocess(cfg)["rounds"]
    for got, want in zip(results["rounds"], reference, strict=True):
        for key, value in want.items():
            if key != "seconds":
                assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key



def test_a_killed_passive_supernode_stops_the_run_naming_it_and_a_resumed_run_finishes_it(deployments):
    """The run fails within ``app.timeout`` naming passive1, the round and the last complete checkpoint; a restarted
    SuperNode and ``resume=true`` finish it with the uninterrupted run's numbers."""
    out = deployments["killed"].result()
    log, last, ckdir = out["log"], out["last"], out["ckdir"]
    assert out["status"] == "finished:failed", (out["status"], log[-3000:])
    assert out["noticed"] < KILL_TIMEOUT + 30, out["noticed"]  # the timeout plus polling and exit: never a hang
    assert re.search(rf"passive1 \(node \d+\).* during training \(passive parties\) of round {last + 1}", log), log
    assert f"last complete checkpoint is round {last} in {ckdir}" in log and "resume=true" in log
    assert ck.rounds_in(out["parties"] / "party1")[-1] >= last  # the passive's own folder

    results = out["results"]
    assert results["flower"]["resumed_from_round"] == last and [r["round"] for r in results["rounds"]] == [1, 2, 3]
    cfg = config_from_dict({"num_rounds": 3, "engine": "inprocess", "method": {"batch_size": 64},
                            "exchange": {"count": 3}, "dataset": {"name": "csv", "num_passive": 1,
                                                                  "aligned_fraction": 0.2,
                                                                  "csv": {"paths": out["paths"]}}})
    for got, want in zip(results["rounds"], run_inprocess(cfg)["rounds"], strict=True):
        for key, value in want.items():
            if key != "seconds":
                assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_tls_with_supernode_authentication(deployments):
    """The deployment above runs over TLS: its registered SuperNodes trained (that test checks their results), and
    meanwhile an unregistered SuperNode, a plain-text one and a plain-HTTP client were turned away."""
    out = deployments["tls"].result()
    code, log = out["intruder"]
    assert code != 0 and "Failed to activate SuperNode" in log, log[-2000:]  # TLS fine, key not registered
    code, log = out["plaintext"]
    assert code != 0 and "Failed to initialize the connection" in log, log[-2000:]  # no TLS: no connection
    assert out["plain-http"] in ("RemoteProtocolError", "ReadError", "ConnectError"), out["plain-http"]
    assert [p["name"] for p in out["results"]["flower"]["parties"]] == ["active", "passive1", "passive2"]
