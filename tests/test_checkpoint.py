"""Checkpoints and resume: a run killed mid-way and resumed ends exactly where an uninterrupted run ends.

The in-process run is really killed (``SIGKILL``) while it writes its round-3 checkpoint: the active party's file
is a FIFO the test holds shut, so the process blocks in the write, after the passive party wrote its round-3 file
and before the server's. The resumed run must take round 2, the last *complete* checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flwr_vproto import checkpoint as ck
from flwr_vproto.config import ConfigError, config_from_dict
from flwr_vproto.inprocess import run_inprocess
from flwr_vproto.parties import state_to_bytes

REPO = Path(__file__).resolve().parents[1]
# One exchange per round (checkpoints are per exchange; the default protection would train all rounds in one).
OVERRIDES = ["engine=inprocess", "num_rounds=4", "exchange.count=4", "dataset.max_train_users=500",
             "dataset.aligned_fraction=0.2", "method.batch_size=64", "runner.save_models=false"]


def _cfg(**extra):
    rounds = extra.pop("num_rounds", 4)
    return config_from_dict({"engine": "inprocess", "num_rounds": rounds, "exchange": {"count": rounds},
                             "dataset": {"max_train_users": 500, "aligned_fraction": 0.2},
                             "method": {"batch_size": 64}, **extra})


def _strip(history):
    return [{k: v for k, v in rec.items() if k != "seconds"} for rec in history]


def _hydra(tmp: Path, name: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "run_simulation.py"), *OVERRIDES, *extra,
                             f"hydra.run.dir={tmp / name}"], cwd=tmp, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_killed_inprocess_run_resumes_to_the_same_final_metrics(tmp_path):
    ckdir = tmp_path / "ck"
    (ckdir / "active").mkdir(parents=True)
    os.mkfifo(ckdir / "active" / "round-3.pt.tmp")  # the active party's round-3 write blocks here
    proc = _hydra(tmp_path, "killed", "checkpoint.every=1", f"checkpoint.dir={ckdir}")
    try:
        deadline = time.monotonic() + 120
        while not (ckdir / "passive1" / "round-3.pt").exists():  # from here on it can only be blocked
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "round 3 never started"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    (ckdir / "active" / "round-3.pt.tmp").unlink()
    # round 3 is incomplete (only the passive wrote it): the server's latest file says round 2
    assert ck.rounds_in(ckdir / "server") == [1, 2] and ck.rounds_in(ckdir / "active") == [1, 2]
    assert ck.rounds_in(ckdir / "passive1") == [2, 3]

    resumed = _hydra(tmp_path, "resumed", "resume=true", "checkpoint.every=1", f"checkpoint.dir={ckdir}")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "round   1/4" not in out and "round   3/4" in out  # only rounds 3 and 4 ran
    results = json.loads((tmp_path / "resumed" / "results.json").read_text())

    reference = run_inprocess(_cfg())
    assert _strip(results["rounds"]) == _strip(reference["rounds"])
    assert results["final"] == reference["final"]
    assert ck.rounds_in(ckdir / "server") == [3, 4]


def test_resume_refuses_a_missing_or_foreign_checkpoint(tmp_path):
    with pytest.raises(ck.CheckpointError, match="holds no checkpoint"):
        run_inprocess(_cfg(resume=True, checkpoint={"dir": str(tmp_path)}))
    run_inprocess(_cfg(num_rounds=2, checkpoint={"dir": str(tmp_path), "every": 2}))
    with pytest.raises(ck.CheckpointError, match=r"another config: seed \(checkpoint 0, now 1\)"):
        run_inprocess(_cfg(num_rounds=2, seed=1, resume=True, checkpoint={"dir": str(tmp_path)}))
    (tmp_path / "passive1" / "round-2.pt").unlink()
    with pytest.raises(ck.CheckpointError, match=r"passive1: no checkpoint of round 2"):
        run_inprocess(_cfg(num_rounds=2, resume=True, checkpoint={"dir": str(tmp_path)}))


@pytest.mark.parametrize(("override", "needle"), [
    ({"resume": True}, "checkpoint.dir"),
    ({"checkpoint": {"every": -1}}, "checkpoint.every"),
    ({"checkpoint": {"dir": ""}}, "checkpoint.dir"),
    ({"resume": "yes"}, "resume"),
    ({"checkpoint": {"retries": 2}}, "checkpoint.retries"),
    ({"checkpoint": {"retries": -1, "every": 1}}, "checkpoint.retries"),
])
def test_checkpoint_options_are_validated(override, needle):
    with pytest.raises(ConfigError, match=needle):
        config_from_dict(override)


def test_a_failed_flower_run_names_its_checkpoint_and_resumes_on_fresh_nodes_to_the_same_metrics(tmp_path):
    """Message protocol (real strategy, real ClientApp, in-process Grid): the active party dies in round 3."""
    from conftest import InlineGrid, sim_nodes, small_cfg

    from flwr_vproto import messages as M
    from flwr_vproto.client_app import make_client_app
    from flwr_vproto.messages import ProtocolError
    from flwr_vproto.strategy import VerticalProtoStrategy

    ckconf = {"dir": str(tmp_path), "every": 1}
    cfg = small_cfg(rounds=4, checkpoint=ckconf)

    def fault(msg, party):  # the passive trains round 3 and writes its file; the active fails
        rnd = msg.content[M.CONFIG].get("round") if M.CONFIG in msg.content else None
        return "error" if (party == 0 and rnd == 3) else None

    own = str(tmp_path / "active-results")  # the active party's own record (metrics policy progress), read back
    with pytest.raises(ProtocolError, match=r"active \(node 100\) failed during training \(active party\) of round 3"
                                            r".*last complete checkpoint is round 2 in .*resume=true"):
        VerticalProtoStrategy(cfg, timeout=30, wait_for_nodes=1, active_results=own).start(
            grid=InlineGrid(make_client_app(cfg, results_dir=own), sim_nodes(cfg), fault=fault))
    assert ck.rounds_in(tmp_path / "server") == [1, 2] and ck.rounds_in(tmp_path / "passive1") == [2, 3]

    resumed_cfg = small_cfg(rounds=4, checkpoint=ckconf, resume=True)
    strategy = VerticalProtoStrategy(resumed_cfg, timeout=30, wait_for_nodes=1, active_results=own)
    grid = InlineGrid(make_client_app(resumed_cfg, results_dir=own), sim_nodes(resumed_cfg))  # new nodes: empty state
    result = strategy.start(grid=grid)
    types = [m.metadata.message_type for m in grid.sent]
    assert M.PSI_PEER not in types and M.PSI_FINISH not in types and types.count(M.TRAIN) == 2 * 2
    reference = run_inprocess(small_cfg(rounds=4))
    flower = [{k: v for k, v in r.items() if k in ref} for r, ref in zip(strategy.history, reference["rounds"],
                                                                       strict=True)]
    assert _strip(flower) == _strip(reference["rounds"])
    assert strategy.results["final"] == reference["final"] and sorted(result.train_metrics_clientapp) == [1, 2, 3, 4]
    assert strategy.results["flower"]["resumed_from_round"] == 2
    assert [p["aligned.train"] for p in strategy.results["flower"]["parties"] if p["name"] == "active"]


def test_resume_keeps_the_pseudo_gates_in_both_engines(tmp_path):
    """method.research.pseudo_gate: the thresholds in transit are part of the server's checkpoint, like the
    prototypes."""
    from conftest import InlineGrid, sim_nodes

    from flwr_vproto.client_app import make_client_app
    from flwr_vproto.strategy import VerticalProtoStrategy

    def cfg(folder: str = "inprocess", **extra):
        return _cfg(method={"batch_size": 64, "lambda_passive": 1.0, "research": {"pseudo_gate": 0.8}},
                    privacy={"clear_prototypes": True}, checkpoint={"dir": str(tmp_path / folder), "every": 2}, **extra)

    def flower(c):
        own = str(tmp_path / "active-results")  # the active party's own record, read back (policy progress)
        strategy = VerticalProtoStrategy(c, timeout=30, wait_for_nodes=1, active_results=own)
        strategy.start(grid=InlineGrid(make_client_app(c, results_dir=own), sim_nodes(c)))  # fresh nodes
        return [{k: v for k, v in r.items() if k in ref} for r, ref in zip(strategy.history, full["rounds"],
                                                                          strict=True)]

    full = run_inprocess(cfg())
    assert any("passive1/pseudo_threshold" in r and r["passive1/pseudo_threshold"] < 1.0 for r in full["rounds"][2:])
    for engine in ("inprocess", "flower"):
        if engine == "flower":
            assert _strip(flower(cfg(engine))) == _strip(full["rounds"])
        saved = ck.load(tmp_path / engine / "server", 2, "server")
        if engine == "inprocess":
            assert saved["pseudo-gates"] == [full["rounds"][1]["val/pseudo_gate1"]]
        else:  # the Flower server holds only what the active party sealed for the passive: no gate in clear
            assert "pseudo-gates" not in saved and set(saved["sealed"]) == {"passive1"}
        (tmp_path / engine / "server" / "round-4.pt").unlink()  # the latest complete checkpoint is now round 2
        resumed = run_inprocess(cfg(engine, resume=True))["rounds"] if engine == "inprocess" else flower(
            cfg(engine, resume=True))
        assert _strip(resumed) == _strip(full["rounds"]), engine


def test_a_checkpoint_of_another_format_is_refused_in_one_line_naming_the_file_and_both_formats(tmp_path):
    ck.save(tmp_path, 1, {"round": 1})
    assert ck.load(tmp_path, 1, "server")[ck.FORMAT_KEY] == ck.FORMAT
    (tmp_path / "round-2.pt").write_bytes(state_to_bytes({"round": 2}))  # as written before formats were numbered
    with pytest.raises(ck.CheckpointError) as err:
        ck.load(tmp_path, 2, "server")
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "round-2.pt") in message
    assert f"format 1; this version reads format {ck.FORMAT} only" in message


def test_a_checkpoint_without_an_option_is_another_config(tmp_path):
    """No translation of older fingerprints: an option the checkpoint does not know is a difference, named."""
    cfg = config_from_dict({"checkpoint": {"dir": str(tmp_path)}})
    old = ck.resume_fingerprint(cfg)
    ck.check_same_run(old, cfg, "server", tmp_path)
    del old["defence"]["release_rounds"]
    with pytest.raises(ck.CheckpointError, match=r"defence.release_rounds \(checkpoint None, now 0\)"):
        ck.check_same_run(old, cfg, "server", tmp_path)
