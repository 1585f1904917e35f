"""The Flower layer: config plumbing, the message protocol, failure handling, and engine equivalence.

Most protocol tests drive the real strategy and the real ClientApp through :class:`InlineGrid`, a Flower ``Grid``
that runs the ClientApp in this process (no Ray, milliseconds per message), so failures can be injected. One test
runs the real Flower simulation (Ray) and checks it against the in-process engine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    SECRET,
    InlineGrid,
    assert_same_history,
    import_script,
    run_inline,
    sim_nodes,
    small_cfg,
    to_passives,
)
from flwr.app import ConfigRecord, RecordDict
from flwr.common.config import flatten_dict

from flwr_vproto import messages
from flwr_vproto import run_config as RC
from flwr_vproto.client_app import identity, make_client_app
from flwr_vproto.config import ConfigError, config_from_dict
from flwr_vproto.inprocess import run_inprocess
from flwr_vproto.messages import ProtocolError
from flwr_vproto.results import select_final
from flwr_vproto.strategy import VerticalProtoStrategy

REPO = Path(__file__).resolve().parents[1]
# ------------------------------------------------------------------------------------------------ config plumbing
def test_pyproject_run_config_lists_every_config_field_with_its_default():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "flwr-vproto"  # a valid Flower app name (letters, digits, hyphens)
    run_config = flatten_dict(pyproject["tool"]["flwr"]["app"]["config"])
    want = {**RC.run_config_from_config(), **RC.APP_DEFAULTS}
    fix = "\n".join(f"{k} = {json.dumps(v)}" for k, v in want.items() if run_config.get(k) != v)
    assert run_config == want, f"update [tool.flwr.app.config] in pyproject.toml (Config changed):\n{fix}"
    cfg, settings = RC.config_from_run_config(run_config)
    assert cfg == config_from_dict({}) and settings == RC.AppSettings()
    assert pyproject["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "flwr_vproto.server_app:app", "clientapp": "flwr_vproto.client_app:app"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pathspec's, inside Flower's FAB builder
def test_the_fab_carries_no_code_so_every_host_runs_its_installed_package_with_its_data():
    """``flwr run`` ships a FAB that Flower puts first on the apps' ``sys.path``: a copy of ``flwr_vproto`` in it
    would shadow the installed package without its bundled Adult files (a FAB takes no ``.gz``), and would ship
    ``benchmarks/`` to every node."""
    import io
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    with zipfile.ZipFile(io.BytesIO(build_fab_from_disk(REPO))) as fab:
        names = sorted(fab.namelist())
    assert names == [".info/CONTENT", "README.md", "pyproject.toml"], names


def test_run_config_parses_lists_nulls_and_validates():
    rc = {**RC.run_config_from_config(), "model.hidden": "[128, 32]", "dataset.max_train_users": "300",
          "dataset.root": "/data/fm", "method.name": "vanilla", "method.local_head": False,
          "method.combine_weight": 1.0, "app.timeout": 5}
    cfg, settings = RC.config_from_run_config(rc)
    assert cfg.model.hidden == [128, 32] and cfg.dataset.max_train_users == 300 and cfg.dataset.root == "/data/fm"
    assert settings.timeout == 5.0
    with pytest.raises(ConfigError, match="unknown run-config key 'model.hiden'"):
        RC.config_from_run_config({"model.hiden": "[1]"})
    with pytest.raises(ConfigError, match="expected JSON"):
        RC.config_from_run_config({"model.hidden": "[1,"})
    with pytest.raises(ConfigError, match="method.lr"):
        RC.config_from_run_config({"method.lr": -1.0})
    with pytest.raises(ConfigError, match="app.timeout"):
        RC.config_from_run_config({"app.timeout": 0})


def test_codecs_round_trip_exactly():
    arrays = {"z": np.random.default_rng(0).random((5, 3)).astype(np.float32), "rows": np.arange(4)}
    back = messages.arrays_of(messages.array_record(arrays))
    assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in arrays.items())
    blob = b"\x00\x01secret-ish bytes"
    assert messages.array_to_bytes(messages.bytes_to_array(blob)) == blob
    conf = ConfigRecord()
    messages.put_matrix(conf, "p", arrays["z"])
    assert np.array_equal(messages.get_matrix(conf, "p"), arrays["z"]) and messages.get_matrix(conf, "q") is None
    rec = messages.metric_record({"accuracy": 0.5}, "val.")
    assert messages.metrics_of(rec, "val.") == {"accuracy": 0.5} and messages.metrics_of(rec, "test.") == {}
    cfg = small_cfg("vanilla")
    assert RC.config_of(RC.config_record(cfg)) == cfg
    assert messages.payload_bytes(RecordDict({"a": messages.array_record(arrays)})) == sum(
        len(a.data) for a in messages.array_record(arrays).values())


def test_csv_paths_come_from_each_nodes_data_path():
    rc = {"dataset.name": "csv", "dataset.num_passive": 2, "dataset.csv.paths": "[]"}
    server, _ = RC.config_from_run_config(rc)  # the server opens no file: placeholders
    assert len(server.dataset.csv.paths) == 3
    node, _ = RC.config_from_run_config(rc, party_index=2, data_path="/data/shop.csv")
    assert node.dataset.csv.paths[2] == "/data/shop.csv"
    assert RC.config_fingerprint(server) == RC.config_fingerprint(node)  # paths are per node, not shared config


def test_identity_from_node_config():
    assert identity({"partition-id": 0, "num-partitions": 3}, 2).role == "active"
    me = identity({"partition-id": 2, "num-partitions": 3}, 2)
    assert (me.role, me.index, me.name) == ("passive", 2, "passive2")
    me = identity({"role": "passive", "party-index": 1, "data-path": "/d/shop.csv", "model-dir": "/m"}, 1)
    assert (me.name, me.data_path, me.model_dir) == ("passive1", "/d/shop.csv", "/m")
    for bad, match in [({"role": "boss", "party-index": 0}, "expected 'active' or 'passive'"),
                       ({"role": "active", "party-index": 1}, "party-index 0"),
                       ({"role": "passive", "party-index": 3}, r"outside 1\.\.2"),
                       ({"role": "passive"}, "no party-index"), ({}, "must set role and party-index")]:
        with pytest.raises(ValueError, match=match):
            identity(bad, 2)


def test_hydra_configs_compose_to_valid_configs():
    from hydra import compose, initialize_config_dir

    _config = import_script("run_simulation")._config

    with initialize_config_dir(config_dir=str(REPO / "flwr_vproto" / "conf"), version_base=None):
        cfg, runner = _config(compose("config"))
        # the yaml defaults are Config's defaults, digits' own 40 rounds included (config.py DATASET_ROUNDS)
        assert cfg == config_from_dict({}) == config_from_dict({"num_rounds": 40}) and runner["timeout"] > 0
        for group, section in (("dataset", "dataset"), ("model", "model"), ("method", "method"),
                               ("defence", "defence")):
            for option in (REPO / "flwr_vproto" / "conf" / group).glob("*.yaml"):  # every field listed, so overridable
                listed = set(compose("config", [f"{group}={option.stem}"])[section])
                assert listed == set(getattr(cfg, section).__dataclass_fields__), (option, listed)
        for method in ("vproto", "vanilla", "local", "centralized"):
            for dataset in ("digits", "adult", "fashion_mnist"):
                cfg, _ = _config(compose("config", [f"method={method}", f"dataset={dataset}"]))
                assert (cfg.method.name, cfg.dataset.name) == (method, dataset)
        assert _config(compose("config", ["method=vanilla"]))[0].method.local_head is False
        assert _config(compose("config", ["defence=gradient_noise"]))[0].defence.target_epsilon == 0.55
        assert _config(compose("config", ["defence=label_dp"]))[0].defence.label_epsilon == 1.0
        cfg, _ = _config(compose("config", ["dataset=csv", "dataset.csv.paths=[a.csv,b.csv]", "model=cnn",
                                            "dataset=digits"]))
        assert cfg.model.encoder == "cnn"
        with pytest.raises(SystemExit, match="config error: invalid dataset.csv.paths"):
            _config(compose("config", ["dataset=csv"]))


# ------------------------------------------------------------------------------------------------ the protocol
@pytest.mark.parametrize("method,num_passive", [("vproto", 2), ("vanilla", 1), ("local", 1)])
def test_message_protocol_matches_inprocess_exactly(method, num_passive):
    cfg = small_cfg(method, rounds=3, num_passive=num_passive)
    strategy, result, grid = run_inline(cfg)
    reference = run_inprocess(cfg)
    assert_same_history(strategy.history, reference["rounds"])
    assert strategy.results["final"] == pytest.approx(select_final(reference["rounds"]))
    # Flower's Result: per-round train metrics, evaluation metrics on evaluation rounds (2 and the last, 3)
    assert sorted(result.train_metrics_clientapp) == [1, 2, 3]
    assert sorted(result.evaluate_metrics_clientapp) == [2, 3]
    # at most one message per party per round; setup = discovery + PSI (peers, then intersection)
    types = [m.metadata.message_type for m in grid.sent]
    joint = method != "local"
    assert types.count(messages.TRAIN) == 3 * ((num_passive if joint else 0) + 1)
    assert types.count(messages.DISCOVER) == num_passive + 1 and types.count(messages.PSI_FINISH) == 1
    for rec in strategy.history:
        assert rec["messages"] == (num_passive if joint else 0) + 1
        if joint:
            assert rec["bytes/passive1/up"] > 0 and rec["bytes/active/down"] >= rec["bytes/passive1/up"]


def test_private_prototypes_give_the_same_numbers_and_epsilon_in_both_engines():
    """The budget is loose enough (sigma 0.55) that every class's noisy count (about 10 aligned rows) clears the
    release threshold, so the noisy prototypes reach the passives and their third loss; at epsilon 3 (sigma 3.7) no
    class would, and the two engines would agree whatever their noise. Both draw it from the same secret."""
    cfg = small_cfg("vproto", rounds=3, num_passive=2, privacy={"target_epsilon": 30.0},
                    method_extra={"lambda_passive": 1.0})  # the third loss: prototypes are released
    strategy, _, _ = run_inline(cfg, secret=SECRET)
    reference = run_inprocess(cfg, active_secret=SECRET)
    assert_same_history(strategy.history, reference["rounds"])
    assert all(f"passive{k}/third_loss" in r for r in strategy.history[1:] for k in (1, 2))
    eps = [r["privacy/epsilon"] for r in strategy.history]
    assert 0 < eps[0] < eps[1] == eps[2] <= 30.0  # rounds 1-2 release (3 steps each), the last round does not
    assert strategy.results["privacy"] == reference["privacy"]


def test_an_embedding_dimension_other_than_the_config_is_refused_naming_the_party():
    cfg = small_cfg(num_passive=2)
    real = make_client_app(cfg)

    def app(msg, context):  # passive 2 claims another embedding size at discovery
        reply = real(msg, context)
        if msg.metadata.message_type == messages.DISCOVER and context.node_config["partition-id"] == 2:
            reply.content[messages.CONFIG]["embedding-dim"] = 32
        return reply

    strategy = VerticalProtoStrategy(cfg, timeout=30, wait_for_nodes=1)
    with pytest.raises(ProtocolError, match=r"passive2 \(node 102\) reports embedding dimension 32, but "
                                            r"model.embedding_dim=64"):
        strategy.start(grid=InlineGrid(app, sim_nodes(cfg)))
    from flwr_vproto.data import load_party
    from flwr_vproto.parties import ActiveParty

    with pytest.raises(ValueError, match=r"passive2: embedding dimension 32 differs from model.embedding_dim=64"):
        ActiveParty(load_party(cfg, 0), cfg, 10, [64, 32])
    with pytest.raises(ValueError, match=r"expects dataset.num_passive=2 passive parties, got embedding dimensions "
                                         r"for 1"):
        ActiveParty(load_party(cfg, 0), cfg, 10, [64])


@pytest.mark.parametrize("once", [False, True])
def test_pseudo_gate_sends_each_passive_one_threshold_and_both_engines_agree(once):
    """method.research.pseudo_gate: the active party fits a threshold on validation rows; the passive trains with it
    (``pseudo_label_once``: labelling its non-aligned rows once per round, with the round-start encoder)."""
    cfg = config_from_dict({"num_rounds": 4, "eval_every": 2, "dataset": {"name": "digits", "aligned_fraction": 0.2,
                                                                          "max_train_users": 500},
                            "method": {"batch_size": 64, "lambda_passive": 1.0, "passive_pretrain_epochs": 0,
                                       "research": {"pseudo_gate": 0.8, "pseudo_label_once": once}},
                            "defence": {"release_rounds": None},
                            "privacy": {"clear_prototypes": True}})  # gates fitted on true labels: clear, acknowledged
    strategy, _, grid = run_inline(cfg)
    reference = run_inprocess(cfg)["rounds"]
    assert_same_history(strategy.history, reference)
    # Before the first evaluation (round 2) there is no evidence: keep nothing. Then the gate fitted at round 2
    # (no evaluation at round 3) is the threshold of rounds 3 and 4, never below confidence_threshold.
    assert reference[1]["passive1/pseudo_threshold"] == 1.0 and reference[1]["passive1/pseudo_coverage"] == 0.0
    gate = reference[1]["val/pseudo_gate1"]
    assert 0.5 < gate < 1.0  # a real cut: some validation rows are kept, some are not
    assert reference[2]["passive1/pseudo_threshold"] == reference[3]["passive1/pseudo_threshold"] == gate
    sent = {r.round: r.pseudo_threshold for _, r in to_passives(grid, cfg) if r.pseudo_threshold is not None}
    assert sent == {2: 1.0, 3: gate, 4: gate}  # a single float per round: the labels stay with the active party
    if once:  # labels fixed at the round start: coverage and accuracy differ from relabelling every batch
        research = dataclasses.replace(cfg.method.research, pseudo_label_once=False)
        per_batch = run_inprocess(dataclasses.replace(cfg, method=dataclasses.replace(
            cfg.method, research=research)))["rounds"]
        assert reference[2]["passive1/pseudo_coverage"] != per_batch[2]["passive1/pseudo_coverage"]


def test_parties_save_their_final_models(tmp_path):
    from flwr_vproto.parties import state_from_bytes

    cfg = small_cfg(rounds=2)
    strategy = VerticalProtoStrategy(cfg, timeout=30, wait_for_nodes=1)
    strategy.start(grid=InlineGrid(make_client_app(cfg, str(tmp_path)), sim_nodes(cfg)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["active.pt", "passive1.pt"]
    saved = state_from_bytes((tmp_path / "active.pt").read_bytes())
    assert "modules" in saved["state"] and saved["config"] == cfg.to_dict()  # with what prediction needs


def test_a_failing_party_stops_the_run_naming_party_and_round():
    def fault(msg, party):
        rnd = msg.content[messages.CONFIG].get("round") if messages.CONFIG in msg.content else None
        return "error" if (party == 1 and rnd == 2) else None

    with pytest.raises(ProtocolError, match=r"passive1 \(node 101\) failed during training .*round 2.*injected"):
        run_inline(small_cfg(rounds=3), fault=fault)


def test_a_dead_node_reported_by_the_superlink_is_named_by_its_message():
    def fault(msg, party):  # the SuperLink answers for the dead active party, from its own node ID
        return "superlink-error" if party == 0 and msg.metadata.message_type == messages.PSI_FINISH else None

    with pytest.raises(ProtocolError, match=r"active \(node 100\) failed during PSI \(intersection\)"):
        run_inline(small_cfg(), fault=fault)


def test_a_missing_reply_times_out_naming_party_and_round():
    def fault(msg, party):
        rnd = msg.content[messages.CONFIG].get("round") if messages.CONFIG in msg.content else None
        return "drop" if (party == 0 and rnd == 1) else None

    with pytest.raises(ProtocolError, match=r"no reply from active \(node 100\) during training \(active party\) "
                                            r"of round 1 within 0.5 s"):
        run_inline(small_cfg(), fault=fault, timeout=0.5)


def test_client_exceptions_come_back_as_clear_errors():
    cfg = small_cfg()
    bad = [{"partition-id": 0}, {"role": "passive", "party-index": 5}]
    with pytest.raises(ProtocolError, match=r"node 101 failed during discovery: .*passive party-index 5 outside"):
        run_inline(cfg, nodes=bad)


@pytest.mark.parametrize("nodes,match", [
    ([{"role": "active", "party-index": 0}, {"role": "active", "party-index": 0}],
     "exactly one active party is required.*found 2"),
    ([{"role": "passive", "party-index": 1}, {"role": "passive", "party-index": 1}],
     "exactly one active party is required.*found 0"),
    ([{"role": "active", "party-index": 0}, {"role": "passive", "party-index": 1},
      {"role": "passive", "party-index": 1}], r"expected passive parties with party-index \[1\].*found \[1, 1\]"),
])
def test_roles_are_checked(nodes, match):
    with pytest.raises(ProtocolError, match=match):
        run_inline(small_cfg(), nodes=nodes)


def test_too_few_nodes_and_mixed_configs_are_refused():
    cfg = small_cfg(num_passive=2)
    with pytest.raises(ProtocolError, match="only 2 of 3 SuperNodes connected"):
        run_inline(cfg, nodes=[{"partition-id": 0}, {"partition-id": 1}])
    other = small_cfg(seed=1)
    strategy = VerticalProtoStrategy(small_cfg(), timeout=30, wait_for_nodes=1)
    with pytest.raises(ProtocolError, match="differs from the server's"):
        strategy.start(grid=InlineGrid(make_client_app(other), sim_nodes(other)))


def test_a_node_with_another_flwr_vproto_version_is_refused(monkeypatch):
    import flwr_vproto.client_app as client_module

    monkeypatch.setattr(client_module, "__version__", "0.0.1")
    cfg = small_cfg()
    strategy = VerticalProtoStrategy(cfg, timeout=30, wait_for_nodes=1)
    with pytest.raises(ProtocolError, match=r"runs flwr_vproto 0\.0\.1, the ServerApp 0\.1\.0: install the same"):
        strategy.start(grid=InlineGrid(make_client_app(cfg), sim_nodes(cfg)))


def test_centralized_is_inprocess_only_and_global_models_are_refused():
    with pytest.raises(ConfigError, match="engine=inprocess"):
        VerticalProtoStrategy(config_from_dict({"method": {"name": "centralized", "local_head": False,
                                                            "combine_weight": 1.0}}))
    from flwr.app import ArrayRecord

    strategy = VerticalProtoStrategy(small_cfg())
    with pytest.raises(ValueError, match="no global model"):
        strategy.start(grid=InlineGrid(None, []), initial_arrays=ArrayRecord({"w": messages.array_record(
            {"w": np.zeros(2)})["w"]}))


# ------------------------------------------------------------------------------------------------ real simulation
@pytest.mark.slow
def test_flower_simulation_matches_inprocess(tmp_path):
    """The real thing: Ray-backed Flower simulation, K=2 passives, against the in-process engine."""
    run_simulation = import_script("run_simulation")
    run_flower, run_local = run_simulation.run_flower, run_simulation.run_local

    cfg = small_cfg("vproto", rounds=3, num_passive=2)
    runner = {"timeout": 120, "client_num_cpus": 1}
    flower = run_flower(cfg, runner, tmp_path / "flower")
    reference = run_local(cfg, runner, tmp_path / "inprocess")
    # Ray actors run torch with one thread, this process with more: float reductions may differ in the last bits
    assert_same_history(flower["rounds"], reference["rounds"], rel=1e-4, abs_=1e-5)
    assert all(math.isfinite(v) for rec in flower["rounds"] for v in rec.values())
    for engine in ("flower", "inprocess"):
        assert sorted(p.name for p in (tmp_path / engine / "models").iterdir()) == [
            "active.pt", "passive1.pt", "passive2.pt"]
    json.dumps(flower, allow_nan=False)  # results.json content


@pytest.mark.parametrize(("method", "lambda_passive", "shared"),
                         [("vproto", 0.0, False), ("vproto", 1.0, True), ("vanilla", 1.0, False)])
def test_second_prototypes_leave_the_active_party_only_for_the_third_loss(method, lambda_passive, shared):
    """Only the passives' third loss uses their second prototypes: otherwise they are never sent (and privacy.*,
    which protects them, is refused rather than adding noise for nothing)."""
    cfg = small_cfg(method, rounds=3, method_extra={"lambda_passive": lambda_passive},
                    privacy={"clear_prototypes": shared})  # sent in clear: acknowledged (else refused)
    strategy, _, grid = run_inline(cfg)
    with_prototypes = [r for _, r in to_passives(grid, cfg) if r.prototypes is not None]
    assert len(with_prototypes) == (2 if shared else 0)  # rounds 2 and 3 carry round 1's and 2's prototypes
    assert_same_history(strategy.history, run_inprocess(cfg)["rounds"])
    if not shared:
        with pytest.raises(ConfigError, match="privacy.noise_multiplier"):
            small_cfg(method, rounds=3, method_extra={"lambda_passive": lambda_passive},
                      privacy={"noise_multiplier": 1.0})


def test_dict_valued_options_travel_whole_through_the_run_config():
    example = "flwr_vproto.examples.extending"
    cfg = config_from_dict({"model": {"encoder_target": {"_target_": f"{example}.ResidualMLPEncoder", "width": 32}},
                            "method": {"extra_losses": [{"_target_": f"{example}.confidence_penalty", "weight": 0.1}]}})
    run_config = RC.run_config_from_config(cfg)
    assert json.loads(run_config["model.encoder_target"])["width"] == 32
    assert RC.config_from_run_config(run_config)[0] == cfg


def test_both_engines_record_what_psi_found():
    cfg = small_cfg("vproto", rounds=2, num_passive=2)
    strategy, _, _ = run_inline(cfg)
    reference = run_inprocess(cfg)
    found = reference["alignment"]
    assert strategy.results["alignment"] == found
    assert sorted(found["rows"]) == ["active", "passive1", "passive2"]
    assert 0 < found["aligned"]["train"] < min(r["train"] for r in found["rows"].values())
    active = reference["state"]["active"]
    assert found["aligned"] == {s: len(r) for s, r in active.aligned.items()}


def _bytes(history, key):
    return sum(r.get(key, 0.0) for r in history)


def test_lean_evaluation_reports_the_same_final_with_test_rows_sent_only_when_needed():
    lean, full = small_cfg("vproto", rounds=6, eval_every=1), small_cfg("vproto", rounds=6, eval_every=1,
                                                                         eval_test="every")
    s_lean, _, _ = run_inline(lean)
    s_full, _, _ = run_inline(full)
    assert s_lean.results["final"] == s_full.results["final"]
    assert_same_history(s_lean.history, run_inprocess(lean)["rounds"])  # late test scores land in the same rounds
    best, tested = -1.0, []
    for rec in s_full.history:  # the rounds whose validation accuracy was a new best, and the last
        if rec["val/accuracy"] > best or rec["round"] == 6:
            tested.append(int(rec["round"]))
        best = max(best, rec["val/accuracy"])
    assert [int(r["round"]) for r in s_lean.history if "test/accuracy" in r] == tested
    for got, want in zip(s_lean.history, s_full.history, strict=True):
        assert {k: v for k, v in got.items() if k.startswith("test/")} == (
            {k: v for k, v in want.items() if k.startswith("test/")} if int(got["round"]) in tested else {})
    # Sealed and padded: a round whose reply could carry last round's test rows is as long as if it did, so the
    # server cannot tell from sizes which rounds were a new best (the rows themselves travel only when needed).
    assert _bytes(s_lean.history, "bytes/passive1/up") == pytest.approx(_bytes(s_full.history, "bytes/passive1/up"),
                                                                         rel=1e-3)


def test_float16_wire_halves_the_embedding_bytes_and_both_engines_still_agree():
    half = small_cfg("vproto", rounds=3, wire_dtype="float16")
    strategy, _, grid = run_inline(half)
    assert_same_history(strategy.history, run_inprocess(half)["rounds"])
    full, _, _ = run_inline(small_cfg("vproto", rounds=3))
    for key in ("bytes/passive1/up", "bytes/passive1/down"):
        assert _bytes(strategy.history, key) < 0.55 * _bytes(full.history, key)
    sent = [r.gradients for _, r in to_passives(grid, half) if r.gradients is not None]
    assert sent and all(np.array_equal(g, g.astype(np.float16).astype(np.float32)) for g in sent)


def test_after_setup_a_party_trains_from_the_data_it_keeps_not_from_its_file(tmp_path):
    from flwr_vproto import client_app
    from flwr_vproto.deploy import local as deploy
    paths = deploy.write_party_csvs(tmp_path / "data", 1, max_train_users=400)
    cfg = small_cfg("vproto", rounds=3, dataset={"name": "csv", "aligned_fraction": 0.2, "csv": {"paths": paths}})
    reference = run_inprocess(cfg)["rounds"]

    def files_gone_after_setup(msg, party):
        if messages.round_of(msg.content) == 2 and Path(paths[party]).exists():  # each party's process forgets its file
            Path(paths[party]).unlink()
            client_app._cached_data.cache_clear()

    strategy, _, _ = run_inline(cfg, fault=files_gone_after_setup)
    assert not any(Path(p).exists() for p in paths)
    assert_same_history(strategy.history, reference)
