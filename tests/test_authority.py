"""Each node is its own authority, and the active party's secret never leaves its process and its own checkpoint.

Played as the run config's writer: a run config naming a ``_target_`` or a path a deployed node did not allow is
refused on that node in one line naming the party, the option and the node-config key. Played as anyone who later
reads the run's files: a defended run whose secret is given by file writes it to no file but the active party's
owner-only checkpoint secret.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import InlineGrid, small_cfg

from flwr_vproto import checkpoint as ck
from flwr_vproto import defences, targets
from flwr_vproto.client_app import authorize, identity, make_client_app
from flwr_vproto.config import ConfigError, config_from_dict
from flwr_vproto.inprocess import run_inprocess
from flwr_vproto.parties import state_from_bytes
from flwr_vproto.protocol import ProtocolError
from flwr_vproto.run_config import run_config_from_config
from flwr_vproto.strategy import VerticalProtoStrategy

REPO = Path(__file__).resolve().parents[1]
SECRET = bytes(range(100, 132))
ENCODER = {"_target_": "torch.nn.Linear"}  # any importable target; the node decides, not the run config


def _node(role: str, index: int, **extra) -> dict:
    return {"role": role, "party-index": index, **extra}


def _me(cfg, **node):
    return identity(_node("passive", 1, **node), cfg.dataset.num_passive)


# ------------------------------------------------------------------------------------------------ targets
def test_an_allow_list_entry_allows_exactly_what_it_reads_as():
    entries = targets.parse_allow_list(" my_pkg.MyEnc , torch.nn.* ,", "passive1")
    assert entries == ("my_pkg.MyEnc", "torch.nn.*")
    assert targets.allowed("my_pkg.MyEnc", entries) and not targets.allowed("my_pkg.MyEnc2", entries)
    assert targets.allowed("torch.nn.Linear", entries) and not targets.allowed("torch.nnx.Linear", entries)
    assert targets.allowed("flwr_vproto.models.MLPEncoder", ())  # the package's own model classes: no allowance
    assert not targets.allowed("flwr_vproto.models.make_encoder", ())
    # a prefix allows what is defined under it, not what is reachable through it (an alias of os.replace)
    assert not targets.allowed("flwr_vproto.checkpoint.os.replace", ("flwr_vproto.*",))
    assert targets.allowed("flwr_vproto.checkpoint.os.replace", ("flwr_vproto.checkpoint.os.replace",))  # exact
    for bad in ("my_pkg*", "*", "my_pkg.*.x", "my pkg.A"):
        with pytest.raises(ConfigError, match=rf"^passive1: node-config allow-targets entry '{re.escape(bad)}'"):
            targets.parse_allow_list(bad, "passive1")


def test_a_run_config_target_the_node_did_not_allow_is_refused_on_that_node_in_one_line():
    """The real deployment path: the ClientApp reads the run config (no closure), the strategy relays the refusal."""
    cfg = small_cfg("vproto", rounds=1, model={"encoder_target": {**ENCODER, "bias": {"_target_": "my_pkg.flag"}}})
    allowed = {"allow-targets": "torch.nn.*,my_pkg.flag"}
    nodes = [_node("active", 0, **allowed), _node("passive", 1, **{"allow-targets": "torch.nn.*"})]
    grid = InlineGrid(make_client_app(), nodes, run_config=run_config_from_config(cfg))
    with pytest.raises(ProtocolError) as err:
        VerticalProtoStrategy(cfg, timeout=30.0, wait_for_nodes=1.0).start(grid=grid)
    line = str(err.value)
    assert "\n" not in line and "passive1" in line and "discovery" in line, line
    assert ("model.encoder_target '_target_' my_pkg.flag is not allowed on this node (it allows torch.nn.*): its "
            "operator adds it to node-config allow-targets") in line, line
    assert all(m.metadata.message_type.startswith("query.discover") or "discover" in m.metadata.message_type
               for m in grid.sent)  # refused at discovery: nothing was built, no PSI point left
    # a path: the run config's audit folder outside the node's own root (which opted in to the audit)
    cfg = small_cfg("vproto", rounds=1, audit={"record": True, "dir": "/etc/cron.d"})
    opted = {"allow-audit-record": True, "audit-dir": "/srv/audit"}
    grid = InlineGrid(make_client_app(), [_node("active", 0, **opted), _node("passive", 1, **opted)],
                      run_config=run_config_from_config(cfg))
    with pytest.raises(ProtocolError, match=r"active.*audit.dir='/etc/cron.d' is outside this node's node-config "
                                            r"audit-dir \(/srv/audit\)") as err:
        VerticalProtoStrategy(cfg, timeout=30.0, wait_for_nodes=1.0).start(grid=grid)
    assert "\n" not in str(err.value)
    # a passive builds only its encoder: the active party's top model is none of its business
    top = small_cfg("vproto", rounds=1, model={"top_target": {"_target_": "my_pkg.Top"}})
    authorize(top, _me(top))
    with pytest.raises(ConfigError, match=r"^active: model.top_target '_target_' my_pkg.Top is not allowed"):
        authorize(top, identity(_node("active", 0), 1))
    with pytest.raises(ConfigError, match=r"^active: method.extra_losses '_target_' my_pkg.loss is not allowed"):
        extra = small_cfg("vproto", rounds=1, method_extra={"extra_losses": [{"_target_": "my_pkg.loss",
                                                                              "weight": 1.0}]})
        authorize(extra, identity(_node("active", 0, **{"allow-targets": "my_pkg.Top"}), 1))


# ------------------------------------------------------------------------------------------------ paths
def test_run_config_paths_resolve_under_the_nodes_own_roots_or_are_refused(tmp_path):
    audit = small_cfg("vproto", rounds=1, audit={"record": True, "dir": "run7"})
    root = str(tmp_path / "audit")
    with pytest.raises(ConfigError, match=r"^passive1: audit.record=true would make this node write its raw "
                                          r"features to disk, and it has not opted in: set node-config "
                                          r"allow-audit-record=true"):
        authorize(audit, _me(audit, **{"audit-dir": root}))
    with pytest.raises(ConfigError, match=r"^active: audit.record=true would make this node write its true labels"):
        authorize(audit, identity(_node("active", 0, **{"audit-dir": root}), 1))
    with pytest.raises(ConfigError, match="no audit-dir"):
        authorize(audit, _me(audit, **{"allow-audit-record": True}))
    me = authorize(audit, _me(audit, **{"allow-audit-record": "true", "audit-dir": root}))
    assert me.audit_dir == str(tmp_path / "audit" / "run7")
    for bad in ("/etc/cron.d", "../elsewhere", "run7/../../elsewhere"):
        cfg = small_cfg("vproto", rounds=1, audit={"record": True, "dir": bad})
        with pytest.raises(ConfigError, match=rf"^passive1: audit.dir='{bad}' is outside this node's node-config "
                                              r"audit-dir"):
            authorize(cfg, _me(cfg, **{"allow-audit-record": True, "audit-dir": root}))
    with pytest.raises(ValueError, match="allow-audit-record='yes': expected true or false"):
        _me(audit, **{"allow-audit-record": "yes"})
    # checkpoints: only under the node's own checkpoint-dir; the run config's checkpoint.dir is the ServerApp's
    ckpt = small_cfg("vproto", rounds=1, checkpoint={"every": 1, "dir": "/srv/server-ckpt"})
    with pytest.raises(ConfigError, match=r"^passive1: checkpoint.every=1 but this node's node-config has no "
                                          r"checkpoint-dir.*set node-config checkpoint-dir$"):
        authorize(ckpt, _me(ckpt))
    assert authorize(ckpt, _me(ckpt, **{"checkpoint-dir": str(tmp_path)})).checkpoint_dir == str(tmp_path)
    # a data folder: the node's own data-path, never the run config's dataset.root
    data = small_cfg("vproto", rounds=1, dataset={"name": "fashion_mnist", "root": "/home/bank/secret"})
    with pytest.raises(ConfigError, match=r"^passive1: dataset.root='/home/bank/secret' would choose the folder this "
                                          r"node reads its data from; .*set node-config data-path$"):
        authorize(data, _me(data))
    # simulation (partition-id): the researcher owns every node, the config decides
    sim = identity({"partition-id": 1}, 1)
    assert authorize(audit, sim) is sim and authorize(ckpt, sim) is sim


# ------------------------------------------------------------------------------------------------ the secret
def _secret_file(folder: Path, text: str | None = None, mode: int = 0o600) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "secret.hex"
    path.write_text((SECRET.hex() if text is None else text) + "\n")
    path.chmod(mode)
    return path


def test_the_secret_comes_from_an_owner_only_file_in_the_right_format_never_from_a_value(tmp_path):
    good = _secret_file(tmp_path / "a")
    assert defences.read_secret_file(str(good), "runner.active_secret_file") == SECRET
    assert defences.read_secret_file(None, "x") is None
    for name, text, mode, match in [("b", None, 0o640, "permissions 0640 let group or others"),
                                    ("c", None, 0o604, "permissions 0604"),
                                    ("d", "abc", 0o600, "expected the file to hold 64 hex digits"),
                                    ("e", "zz" * 32, 0o600, "expected the file to hold 64 hex digits")]:
        path = _secret_file(tmp_path / name, text, mode)
        with pytest.raises(ConfigError, match=rf"^invalid runner.active_secret_file={path}: {match}") as err:
            defences.read_secret_file(str(path), "runner.active_secret_file")
        assert "\n" not in str(err.value) and SECRET.hex() not in str(err.value)
    with pytest.raises(ValueError, match=r"^node-config active-secret on active is refused.*active-secret-file=PATH"):
        identity(_node("active", 0, **{"active-secret": SECRET.hex()}), 1)
    assert identity(_node("active", 0, **{"active-secret-file": str(good)}), 1).secret == SECRET
    with pytest.raises(ValueError, match="active-secret-file on passive1: only the active party"):
        identity(_node("passive", 1, **{"active-secret-file": str(good)}), 1)


def test_checkpoints_keep_the_secret_in_an_owner_only_file_and_a_resume_needs_it(tmp_path):
    cfg = config_from_dict({"engine": "inprocess", "num_rounds": 2, "exchange": {"count": 2},
                            "dataset": {"max_train_users": 300, "aligned_fraction": 0.2},
                            "method": {"batch_size": 64}, "defence": {"noise_multiplier": 1.0, "release_rounds": None},
                            "checkpoint": {"dir": str(tmp_path), "every": 1}})
    run_inprocess(cfg, active_secret=SECRET)
    secret_file = tmp_path / "active" / ck.SECRET_FILE
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert defences.read_secret_file(secret_file, "x") == SECRET
    blob = state_from_bytes((tmp_path / "active" / "round-2.pt").read_bytes())
    assert "secret" not in blob["party"] and SECRET not in (tmp_path / "active" / "round-2.pt").read_bytes()
    assert ck.load_party_state(cfg, "active", 2)["party"]["secret"].numpy().tobytes() == SECRET  # put back
    secret_file.unlink()
    with pytest.raises(ck.CheckpointError, match=r"^active: the checkpoint in .* has no secret.hex"):
        ck.load_party_state(cfg, "active", 2)


def _scan(folder: Path) -> list[Path]:
    """Every file under ``folder`` holding the secret's bytes or its hex (either case)."""
    needles = (SECRET, SECRET.hex().encode(), SECRET.hex().upper().encode())
    return sorted(p for p in folder.rglob("*") if p.is_file() and any(n in p.read_bytes() for n in needles))


def _defended_run(tmp_path: Path, engine: str) -> tuple[subprocess.CompletedProcess, Path]:
    key = _secret_file(tmp_path / "keys")
    run = tmp_path / "run"
    overrides = [f"engine={engine}", "defence=gradient_noise", "defence.release_rounds=null", "num_rounds=2",
                 "dataset.max_train_users=300", "dataset.aligned_fraction=0.2", "method.batch_size=64",
                 "checkpoint.every=1", "audit.record=true", f"runner.active_secret_file={key}",
                 f"hydra.run.dir={run}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "run_simulation.py"), *overrides], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    return proc, run


def _no_secret_but_the_checkpoints(proc: subprocess.CompletedProcess, run: Path) -> None:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wrote = {p.relative_to(run).parts[0] for p in run.rglob("*") if p.is_file()}
    assert {".hydra", "models", "checkpoints", "audit", "results.json"} <= wrote, wrote
    secret_file = run / "checkpoints" / "active" / ck.SECRET_FILE
    assert _scan(run) == [secret_file]  # found there (the scan works), and nowhere else
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    model = torch.load(run / "models" / "active.pt", weights_only=True)
    assert not set(model["state"]) & {"secret", "optimizer", "aligned", "privacy", "gradient_privacy", "kept_test"}
    assert SECRET.hex() not in proc.stdout + proc.stderr


def test_a_defended_run_with_a_secret_file_writes_the_secret_to_no_file_but_its_owner_only_checkpoint(tmp_path):
    """Every file of the run (run folder, .hydra/, models, checkpoints, audit), in-process engine. And the value
    option of old is refused in one line, its run folder (where Hydra had written the value) removed."""
    _no_secret_but_the_checkpoints(*_defended_run(tmp_path / "a", "inprocess"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    old = subprocess.run([sys.executable, str(REPO / "run_simulation.py"), "engine=inprocess",
                          f"runner.active_secret={SECRET.hex()}", f"hydra.run.dir={tmp_path / 'old'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert old.returncode != 0 and old.stderr.strip().splitlines()[-1].startswith(
        "config error: runner.active_secret is refused"), old.stderr[-2000:]
    assert "runner.active_secret_file=PATH" in old.stderr and not (tmp_path / "old").exists()


@pytest.mark.slow
def test_the_flower_engine_writes_the_secret_to_no_file_but_its_owner_only_checkpoint(tmp_path):
    _no_secret_but_the_checkpoints(*_defended_run(tmp_path, "flower"))
