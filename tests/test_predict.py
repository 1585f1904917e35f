"""Prediction from saved models: in process and as a Flower query round, on held-out users, against the accuracy
the training run reported for the round whose models were saved (the last one)."""

from __future__ import annotations

import logging
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import InlineGrid, import_script, sim_nodes, small_cfg, write_csvs

from flwr_vproto.config import config_from_dict
from flwr_vproto.data.csv_files import split_of
from flwr_vproto.data.types import DataError
from flwr_vproto.predict import load_party_model, main, predict

REPO = Path(__file__).resolve().parents[1]
run_local = import_script("run_simulation").run_local

RUNNER = {"save_models": True}


def reported(results: dict) -> tuple[float, float | None]:
    """Test accuracy on users every party holds at the last (saved) round, and what ``final`` reports for the users
    only the active party holds (its active-only model kept on all its validation users, which the files carry)."""
    last = results["rounds"][-1]
    assert results["final"]["last_round_accuracy"] == last["test/accuracy"]
    return last["test/accuracy"], results["final"].get("active_only_accuracy")


@pytest.mark.parametrize("method,num_passive", [("vproto", 2), ("vanilla", 1), ("local", 1)])
def test_inprocess_prediction_matches_the_reported_test_accuracy(tmp_path, method, num_passive):
    cfg = small_cfg(method, rounds=3, num_passive=num_passive)
    results = run_local(cfg, RUNNER, tmp_path)
    pred = predict(tmp_path / "models", out=tmp_path / "pred.csv")
    acc, only = reported(results)
    m = pred.metrics
    frame = pd.read_csv(tmp_path / "pred.csv", dtype={"predicted_class": str})
    probs = frame[[f"prob_{c}" for c in range(10)]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (frame["predicted_class"].astype(int) == probs.argmax(1)).all()
    if method == "local":  # no passive model: every user is scored by the active party alone
        assert m["joint_users"] == 0 and set(frame["scored_by"]) == {"active_only"}
        return
    assert m["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert m["joint_users"] == (frame["scored_by"] == "joint").sum() > 0
    if method == "vproto":  # users only the active party holds: its active-only head
        assert m["active_only_accuracy"] == pytest.approx(only, abs=1e-12)
        assert m["active_only_users"] > 0 and m["unscored_users"] == 0
    else:  # vanilla has no active-only head: those users are not scored
        assert m["unscored_users"] > 0 and len(frame) == m["joint_users"]


def test_csv_prediction_encodes_new_raw_rows_as_in_training(tmp_path):
    paths = write_csvs(tmp_path, n=400)
    cfg = config_from_dict({"num_rounds": 3, "engine": "inprocess", "dataset": {"name": "csv", "csv": {"paths": paths}},
                            "method": {"batch_size": 32}})
    results = run_local(cfg, RUNNER, tmp_path / "run")
    saved = load_party_model(tmp_path / "run" / "models" / "active.pt")
    assert saved.class_names == ["maybe", "no", "yes"]
    assert saved.preprocessing["encoder"]["categorical"] == ["city"]
    # New users' raw rows: the held-out test users, in a new order, in new files (passive without its ID order)
    new = []
    for k, p in enumerate(paths):
        frame = pd.read_csv(p, dtype=str)
        test = frame[split_of(frame["id"].to_numpy(), cfg.seed, 0.2, 0.1) == "test"].sample(frac=1, random_state=k)
        new.append(str(tmp_path / f"new{k}.csv"))
        test.to_csv(new[-1], index=False)
    pred = predict(tmp_path / "run" / "models", new, tmp_path / "pred.csv")
    acc, only = reported(results)
    assert pred.metrics["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert pred.metrics["active_only_accuracy"] == pytest.approx(only, abs=1e-12)
    out = pd.read_csv(tmp_path / "pred.csv")
    assert list(out.columns) == ["id", "predicted_class", "scored_by", "prob_maybe", "prob_no", "prob_yes"]
    assert set(out["id"]) == set(pd.read_csv(new[0])["id"])  # the active party's users, nobody else's
    # without labels the same predictions come out, and no accuracy
    pd.read_csv(new[0]).drop(columns="label").to_csv(tmp_path / "nolabel.csv", index=False)
    bare = predict(tmp_path / "run" / "models", [str(tmp_path / "nolabel.csv"), new[1]])
    assert "accuracy" not in bare.metrics
    assert bare.frame.sort_values("id").reset_index(drop=True).equals(
        pred.frame.sort_values("id").reset_index(drop=True))
    # bad input names the file and the column
    pd.read_csv(new[1]).drop(columns="spend").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"bad.csv: passive1 was trained with column\(s\) 'spend'"):
        predict(tmp_path / "run" / "models", [new[0], str(tmp_path / "bad.csv")])
    with pytest.raises(DataError, match="1 data file"):
        predict(tmp_path / "run" / "models", [new[0]])


def test_builtin_models_refuse_csv_input_and_missing_models(tmp_path):
    run_local(small_cfg(rounds=1), RUNNER, tmp_path)
    with pytest.raises(DataError, match="built-in dataset 'digits'"):
        predict(tmp_path / "models", [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")])
    with pytest.raises(DataError, match="model file not found"):
        predict(tmp_path / "nowhere")


@pytest.mark.parametrize("method", ["vproto", "local"])
def test_query_round_over_flower_messages_matches_inprocess(tmp_path, method):
    """The Flower query round through the real ClientApp (in-process grid): same CSV as in-process prediction."""
    from flwr_vproto.client_app import make_client_app
    from flwr_vproto.query import predict_over_grid
    from flwr_vproto.strategy import VerticalProtoStrategy

    cfg = small_cfg(method, rounds=3)
    strategy = VerticalProtoStrategy(cfg, timeout=30, wait_for_nodes=1)
    grid = InlineGrid(make_client_app(cfg, str(tmp_path), server_metrics="full"), sim_nodes(cfg))  # results below
    strategy.start(grid=grid)
    grid.sent.clear()
    done = predict_over_grid(grid, cfg, timeout=30, wait_for_nodes=1)
    metrics, written = done.metrics, tmp_path / "predictions-held-out.csv"
    assert done.path == str(written.resolve())
    inproc = predict(tmp_path, out=tmp_path / "inprocess.csv")
    assert metrics == pytest.approx(inproc.metrics)
    if method == "vproto":
        acc, only = reported(strategy.results)
        assert metrics["accuracy"] == pytest.approx(acc, abs=1e-12)
        assert metrics["active_only_accuracy"] == pytest.approx(only, abs=1e-12)
    got = pd.read_csv(written).sort_values("id").reset_index(drop=True)
    want = pd.read_csv(tmp_path / "inprocess.csv").sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)
    # what travelled: blinded points, positions, embeddings and counts; never an ID or a feature row
    ids = set(pd.read_csv(written)["id"].astype(str))
    for msg in grid.sent:
        for rec in msg.content.array_records.values():
            for arr in rec.values():
                a = arr.numpy()
                assert a.dtype != object and not (a.dtype.kind in "US" and set(a.ravel().tolist()) & ids)
        for rec in msg.content.config_records.values():
            assert not {str(v) for v in rec.values()} & ids
    types = [m.metadata.message_type for m in grid.sent]
    assert types.count("query.predict_score") == 1 and types.count("query.predict_embed") == (method == "vproto")


@pytest.mark.slow
def test_query_round_in_a_flower_simulation(tmp_path, monkeypatch):
    """Flower's own simulation runtime (Ray): train, then the prediction query round, in one ServerApp."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from flwr_vproto.client_app import make_client_app
    from flwr_vproto.query import predict_over_grid
    from flwr_vproto.strategy import VerticalProtoStrategy

    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # as run_simulation.py: silences a warning
    cfg = small_cfg("vproto", rounds=2)
    strategy = VerticalProtoStrategy(cfg, timeout=120)
    out: dict = {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy.start(grid=grid)
        out.update(predict_over_grid(grid, cfg, timeout=120).metrics)

    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"logging_level": "ERROR", "log_to_driver": False, "include_dashboard": False}}
    run_simulation(server_app=app, client_app=make_client_app(cfg, str(tmp_path), server_metrics="full"),
                   num_supernodes=2,
                   backend_config=backend)
    acc, only = reported(strategy.results)
    assert out["accuracy"] == pytest.approx(acc, abs=1e-6)
    assert out["active_only_accuracy"] == pytest.approx(only, abs=1e-6)
    assert len(pd.read_csv(tmp_path / "predictions-held-out.csv")) == out["users"]


def test_deployment_apps_train_then_predict_from_run_config(tmp_path, caplog):
    """What `flwr run` does: config from the run-config, roles and model-dir from node-config; `app.predict`
    turns the same ServerApp into the prediction query round, and the CSV stays on the active party's node."""
    from flwr.app import Context, RecordDict

    from flwr_vproto.client_app import make_client_app
    from flwr_vproto.run_config import run_config_from_config
    from flwr_vproto.server_app import make_server_app

    cfg = small_cfg(rounds=2)
    nodes = [{"role": "active", "party-index": 0, "model-dir": str(tmp_path / "bank"),
              "results-dir": str(tmp_path / "bank-results")},
             {"role": "passive", "party-index": 1, "model-dir": str(tmp_path / "shop")}]
    run_config = {**run_config_from_config(cfg), "app.output-dir": str(tmp_path / "server")}
    grid = InlineGrid(make_client_app(), nodes, run_config=run_config)
    make_server_app()(grid, Context(run_id=7, node_id=1, node_config={}, state=RecordDict(), run_config=run_config))
    assert "final" not in __import__("json").loads((tmp_path / "server" / "results.json").read_text()) or \
        not __import__("json").loads((tmp_path / "server" / "results.json").read_text())["final"]
    # metrics policy progress (the default): the label-derived results are on the active party's node
    results = __import__("json").loads((tmp_path / "bank-results" / "results.json").read_text())
    assert sorted(p.name for p in (tmp_path / "bank").iterdir()) == ["active.pt"]
    predict_config = {**run_config, "app.predict": "held-out"}
    for ctx in grid.contexts.values():
        ctx.run_config = predict_config
    flwr_log = logging.getLogger("flwr")
    flwr_log.addHandler(caplog.handler)  # Flower's logger may not propagate to the root logger
    try:
        with caplog.at_level(logging.INFO, logger="flwr"):
            make_server_app()(grid, Context(run_id=8, node_id=1, node_config={}, state=RecordDict(),
                                            run_config=predict_config))
    finally:
        flwr_log.removeHandler(caplog.handler)
    saved = __import__("json").loads((tmp_path / "server" / "prediction.json").read_text())
    summary = saved["metrics"]
    assert saved["predictions"] == str((tmp_path / "bank" / "predictions-held-out.csv").resolve())
    acc, only = reported(results)
    assert summary["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert summary["active_only_accuracy"] == pytest.approx(only, abs=1e-12)
    assert isinstance(summary["users"], int) and isinstance(summary["joint_users"], int)
    # both ends say where the CSV went: the active party's ClientApp, and the ServerApp's summary (integer counts)
    lines = [r.getMessage() for r in caplog.records]
    assert f"active: predictions for {summary['users']} of {summary['users']} new users written to " \
           f"{saved['predictions']}" in lines, lines
    line = next(ln for ln in lines if ln.startswith("prediction: "))
    assert line.startswith(f"prediction: {summary['users']} users: {summary['joint_users']} scored jointly, ")
    assert line.endswith(f"-> {saved['predictions']} (on the active party's node)") and ".0 " not in line
    assert sorted(p.name for p in (tmp_path / "bank").iterdir()) == ["active.pt", "predictions-held-out.csv"]
    assert sorted(p.name for p in (tmp_path / "shop").iterdir()) == ["passive1.pt"]
    assert not any(p.suffix == ".csv" for p in (tmp_path / "server").iterdir())
    from flwr_vproto.config import ConfigError
    from flwr_vproto.run_config import config_from_run_config

    with pytest.raises(ConfigError, match="invalid app.predict='tomorrow'"):
        config_from_run_config({**run_config, "app.predict": "tomorrow"})


def test_the_query_rounds_split_is_the_one_prediction_uses():
    from flwr_vproto import predict, query

    assert query.SPLIT == predict.SPLIT


def test_prediction_payloads_round_trip_through_their_codecs():
    from flwr_vproto import messages as M
    from flwr_vproto.protocol import PredictReply, PredictRequest

    emb = np.arange(6, dtype=np.float32).reshape(3, 2)
    req = PredictRequest("file", passives=[1, 2], hub=b"\x01\x02", points={1: (b"a", b"bb"), 2: (b"c", b"d")},
                         positions=np.array([2, 0], dtype=np.int64), embeddings={1: emb, 2: emb + 1})
    back = M.decode_predict_request(M.encode_predict_request(req))
    assert (back.source, back.passives, back.hub, back.points) == ("file", [1, 2], b"\x01\x02", req.points)
    assert np.array_equal(back.positions, req.positions) and np.array_equal(back.embeddings[2], emb + 1)
    reply = PredictReply(role="active", index=0, rows=5, method="vproto", hub=b"h", aligned=3,
                         positions={1: np.array([0, 1])}, metrics={"accuracy": 0.5}, path="/srv/bank/predictions.csv")
    got = M.decode_predict_reply(M.encode_predict_reply(reply), [1])
    assert (got.role, got.rows, got.method, got.model, got.hub, got.aligned) == ("active", 5, "vproto", True, b"h", 3)
    assert got.path == "/srv/bank/predictions.csv"
    assert np.array_equal(got.positions[1], [0, 1]) and got.metrics == {"accuracy": 0.5}
    bare = M.decode_predict_reply(M.encode_predict_reply(PredictReply(role="passive", index=1, model=False)))
    assert bare.model is False and bare.path is None


# --- predictions are never overwritten ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple:
    """One short training run's saved models (vproto, one passive), shared by the tests below."""
    cfg = small_cfg(rounds=1)
    run = tmp_path_factory.mktemp("trained")
    run_local(cfg, RUNNER, run)
    return cfg, run / "models"


def _models(trained, tmp_path: Path) -> Path:
    """A copy of the saved models in a fresh folder (each test writes its predictions next to them)."""
    return Path(shutil.copytree(trained[1], tmp_path / "models"))


def _query(trained, model_dir: Path, active_config: dict | None = None, fault=None, grid=None):
    """The prediction query round through the real ClientApp over the in-process grid (``active_config``: the
    active node's node-config keys)."""
    from flwr_vproto.client_app import make_client_app
    from flwr_vproto.query import predict_over_grid

    cfg = trained[0]
    nodes = sim_nodes(cfg)
    nodes[0].update(active_config or {})
    grid = grid or InlineGrid(make_client_app(cfg, str(model_dir)), nodes, fault=fault)
    return predict_over_grid(grid, cfg, timeout=30, wait_for_nodes=1), grid


def test_query_round_writes_the_next_free_name_instead_of_overwriting(trained, tmp_path):
    model_dir = _models(trained, tmp_path)
    (model_dir / "predictions.csv").write_text("a file query's output\n")  # what issue #22 lost
    first, _ = _query(trained, model_dir)
    second, _ = _query(trained, model_dir)
    assert first.path == str((model_dir / "predictions-held-out.csv").resolve())
    assert second.path == str((model_dir / "predictions-held-out-2.csv").resolve())
    assert (model_dir / "predictions.csv").read_text() == "a file query's output\n"
    assert Path(first.path).read_text() == Path(second.path).read_text()
    assert len(pd.read_csv(first.path)) == first.metrics["users"] > 0
    assert first.summary().endswith(f"-> {first.path} (on the active party's node)")


def test_query_round_refuses_an_existing_prediction_path_before_any_work(trained, tmp_path):
    from flwr_vproto.checks import party_error_line
    from flwr_vproto.protocol import ProtocolError

    model_dir = _models(trained, tmp_path)
    mine = tmp_path / "mine.csv"
    mine.write_text("keep me\n")
    from flwr_vproto.client_app import make_client_app

    nodes = sim_nodes(trained[0])
    nodes[0]["prediction-path"] = str(mine)
    grid = InlineGrid(make_client_app(trained[0], str(model_dir)), nodes)
    with pytest.raises(ProtocolError) as err:
        _query(trained, model_dir, grid=grid)
    refusal = (f"{mine}: already exists; predictions never overwrite a file (move it away or choose another "
               f"node-config prediction-path)")
    assert str(err.value) == f"node 100 failed during prediction (start): DataError: active: {refusal} (error code 1)"
    assert {m.metadata.message_type for m in grid.sent} == {"query.predict_start"}  # refused at the first step
    # as Flower wraps a ClientApp's exception, the ServerApp's one line (flwr_vproto.server_app)
    wrapped = ProtocolError(f"node 100 failed during prediction (start): "
                            f"<class 'flwr_vproto.data.types.DataError'>:<'active: {refusal}'>")
    assert party_error_line(wrapped) == f"data error: active (node 100) during prediction (start): {refusal}"
    assert mine.read_text() == "keep me\n"
    # a new path the node-config names is written exactly there; it appearing meanwhile is refused at scoring too
    fresh = tmp_path / "out" / "bank.csv"
    done, grid = _query(trained, model_dir, {"prediction-path": str(fresh)})
    assert done.path == str(fresh.resolve()) and not list(model_dir.glob("*.csv"))
    assert [m.metadata.message_type for m in grid.sent].count("query.predict_score") == 1

    def late(msg, index):  # another writer creates the file between the start and the scoring
        if msg.metadata.message_type == "query.predict_score":
            late_file.write_text("the other writer's\n")

    late_file = tmp_path / "late.csv"
    with pytest.raises(ProtocolError, match="late.csv: already exists"):
        _query(trained, model_dir, {"prediction-path": str(late_file)}, fault=late)
    assert late_file.read_text() == "the other writer's\n"


def test_predict_cli_writes_the_next_free_name_with_integer_counts(trained, tmp_path, monkeypatch, capsys):
    models = _models(trained, tmp_path)
    monkeypatch.chdir(tmp_path)
    Path("predictions-held-out.csv").write_text("earlier\n")
    assert main([str(models)]) == 0
    assert main([str(models)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert Path("predictions-held-out.csv").read_text() == "earlier\n"
    assert [ln.rsplit(" -> ", 1)[1] for ln in lines] == ["predictions-held-out-2.csv", "predictions-held-out-3.csv"]
    assert re.match(r"\d+ users: \d+ scored jointly, \d+ by the active party alone; accuracy 0\.\d{4}", lines[0])
    assert ".0 " not in lines[0]
    assert Path("predictions-held-out-2.csv").read_text() == Path("predictions-held-out-3.csv").read_text()


def test_predict_refuses_an_existing_out_before_loading_models(tmp_path):
    mine = tmp_path / "p.csv"
    mine.write_text("keep me\n")
    with pytest.raises(SystemExit) as exc:  # no models there: the output file is checked first
        main([str(tmp_path / "no-models"), "--out", str(mine)])
    assert exc.value.code == (f"predict: {mine}: already exists; predictions never overwrite a file (move it away or "
                              f"choose another --out)")
    with pytest.raises(DataError, match=f"^{re.escape(str(mine))}: already exists; .* choose another out\\)$"):
        predict(tmp_path / "no-models", out=mine)
    assert mine.read_text() == "keep me\n"


def test_write_new_gives_racing_writers_different_files(tmp_path):
    from flwr_vproto.results import write_new

    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda i: write_new(tmp_path / "p.csv", f"{i}\n"), range(24)))
    assert sorted(p.name for p in paths) == sorted(["p.csv"] + [f"p-{n}.csv" for n in range(2, 25)])
    assert [p.read_text() for p in paths] == [f"{i}\n" for i in range(24)]
    before = (tmp_path / "p.csv").read_text()
    with pytest.raises(FileExistsError, match="p.csv: already exists"):
        write_new(tmp_path / "p.csv", "new\n", next_free=False)
    assert (tmp_path / "p.csv").read_text() == before


def test_prediction_summary_names_the_path_with_integer_counts():
    from flwr_vproto.query import PredictionRound

    metrics = {"users": 110.0, "joint_users": 80.0, "active_only_users": 30.0, "unscored_users": 0.0,
               "accuracy": 0.9, "active_only_accuracy": 0.5}
    assert PredictionRound(metrics, "/srv/bank/predictions-held-out.csv").summary() == (
        "prediction: 110 users: 80 scored jointly, 30 by the active party alone; accuracy 0.9000; "
        "active_only_accuracy 0.5000 -> /srv/bank/predictions-held-out.csv (on the active party's node)")
    unscored = {**metrics, "active_only_users": 0.0, "unscored_users": 30.0}
    assert "0 by the active party alone, 30 not scored" in PredictionRound(unscored, "/p.csv").summary()
