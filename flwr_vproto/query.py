"""Prediction as a Flower query round: each party scores new users from its own saved model, on its own node.

The same steps as :func:`flwr_vproto.predict.predict`, but every party runs on its own SuperNode and only blinded
PSI points and embeddings travel (through the server, which sees nothing else):

1. ``query.predict_start`` (every node): load its saved model (``<model-dir>/<party>.pt``) and its new rows; the
   active party blinds its new users' IDs (PSI step 1).
2. ``query.predict_psi_peer`` (passives): re-blind the active party's points, blind their own (PSI step 2).
3. ``query.predict_psi_finish`` (active): intersect; returns each passive's positions in the shared order.
4. ``query.predict_embed`` (passives): embed their aligned new rows, in the shared order.
5. ``query.predict_score`` (active): joint prediction for aligned users, active-only head for the others; writes the
   predictions CSV **on the active party's node** (node-config ``prediction-path``, default
   ``<model-dir>/predictions.csv``) and replies only with counts and, where its rows have labels, accuracy.

Where the new rows come from, per node: ``source="held-out"`` (the held-out test users of the built-in dataset the
model was trained on) or ``source="file"`` (node-config ``predict-path``: a CSV in the party's training format).
State between messages lives in ``context.state`` (a deployment starts a process per message).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from flwr_vproto import messages as M
from flwr_vproto.alignment import split_order_seed
from flwr_vproto.config import Config
from flwr_vproto.protocol import JOINT_METHODS, ProtocolError
from flwr_vproto.psi import PSIError, PSIHub, PSIPeer
from flwr_vproto.relay import PartyNode, Relay

if TYPE_CHECKING:
    from flwr_vproto.predict import SavedParty

# flwr_vproto.predict (pandas, the CSV encoders) is imported where a prediction message needs it, not when the
# ClientApp starts: every deployment message starts a fresh process, and training messages never need it.
SPLIT = "test"  # = flwr_vproto.predict.SPLIT: the new rows sit in this split of the predicting party

START = "query.predict_start"
PSI_PEER = "query.predict_psi_peer"
PSI_FINISH = "query.predict_psi_finish"
EMBED = "query.predict_embed"
SCORE = "query.predict_score"
STATE = "vproto.predict"  # context.state key of this query's arrays (the training state is left alone)
SOURCES = ("held-out", "file")
SOURCE, METHOD, MODEL = "source", "method", "model"  # config entries of the prediction messages (the rest: messages)

Handler = Callable[[Message, Context, Config, Any], Message]


def _saved(me: Any) -> SavedParty:
    if not me.model_dir:
        raise ValueError(f"{me.name}: no model-dir in this node's node-config: nowhere to load its model from")
    from flwr_vproto.predict import load_party_model

    return load_party_model(Path(me.model_dir) / f"{me.name}.pt")


def _rows(msg: Message, context: Context, saved: SavedParty, me: Any) -> Any:
    source = str(M.config_in(msg.content)[SOURCE])
    if source not in SOURCES:
        raise ValueError(f"prediction source {source!r}: expected one of {SOURCES}")
    path = None
    if source == "file":
        path = context.node_config.get("predict-path")
        if not path:
            raise ValueError(f"{me.name}: source='file' but this node's node-config has no predict-path")
    from flwr_vproto.predict import new_rows

    return new_rows(saved, None if path is None else str(path))


def _arrays(context: Context) -> dict[str, np.ndarray]:
    return M.arrays_of(context.state.get(STATE))


def _keep(context: Context, **arrays: np.ndarray) -> None:
    context.state[STATE] = M.array_record({**_arrays(context), **arrays})


def _reply(msg: Message, arrays: dict[str, np.ndarray] | None = None, config: dict[str, Any] | None = None,
           metrics: dict[str, float] | None = None) -> Message:
    return Message(M.records(arrays, config, metrics), reply_to=msg)


def start(msg: Message, context: Context, c: Config, me: Any) -> Message:
    context.state[STATE] = ArrayRecord()
    if me.role != "active" and me.model_dir and not (Path(me.model_dir) / f"{me.name}.pt").exists():
        # e.g. method "local", where passives never train; the server decides whether that is an error
        return _reply(msg, config={M.ROLE: me.role, M.PARTY_INDEX: me.index, MODEL: False})
    saved = _saved(me)
    rows = _rows(msg, context, saved, me)
    info = {M.ROLE: me.role, M.PARTY_INDEX: me.index, M.ROWS: len(rows), METHOD: saved.cfg.method.name,
            MODEL: True}
    if me.role != "active":
        return _reply(msg, config=info)
    hub = PSIHub(rows.ids, order_seed=split_order_seed(saved.cfg.seed, SPLIT))
    points = hub.blinded_ids()
    _keep(context, **M.blobs_of("psi", hub.export_state()))
    return _reply(msg, arrays={M.HUB: M.bytes_to_array(points)}, config=info)


def psi_peer(msg: Message, context: Context, c: Config, me: Any) -> Message:
    rows = _rows(msg, context, _saved(me), me)
    peer = PSIPeer(rows.ids)
    reblinded, own = peer.respond(M.array_to_bytes(M.arrays_in(msg.content)[M.HUB]))
    _keep(context, **M.blobs_of("psi", peer.export_state()))
    return _reply(msg, arrays={M.REBLINDED: M.bytes_to_array(reblinded), M.OWN: M.bytes_to_array(own)})


def psi_finish(msg: Message, context: Context, c: Config, me: Any) -> Message:
    saved = _saved(me)
    rows = _rows(msg, context, saved, me)
    kept = _arrays(context)
    if "psi.secret" not in kept:
        raise ProtocolError(f"{me.name}: predict_psi_finish before predict_start")
    hub = PSIHub.from_state(rows.ids, M.bytes_of("psi", kept), order_seed=split_order_seed(saved.cfg.seed, SPLIT))
    got = M.arrays_in(msg.content)
    passives = [int(k) for k in M.config_in(msg.content)[M.PASSIVES]]
    for k in passives:
        hub.add_peer(f"passive{k}", M.array_to_bytes(got[M.passive_key(k, M.REBLINDED)]),
                     M.array_to_bytes(got[M.passive_key(k, M.OWN)]))
    try:
        if not passives:  # method "local": the active party scores every user alone
            raise PSIError("intersection is empty (no passive party)")
        aligned, pos = hub.finish()
    except PSIError as err:  # no user in common: all are scored by the active party alone
        if "empty" not in str(err):
            raise
        aligned, pos = np.zeros(0, dtype=np.int64), {f"passive{k}": np.zeros(0, np.int64) for k in passives}
    _keep(context, aligned=np.asarray(aligned, dtype=np.int64))
    return _reply(msg, arrays={M.passive_key(k, M.POSITIONS): np.asarray(pos[f"passive{k}"], dtype=np.int64)
                               for k in passives}, config={M.ALIGNED: int(len(aligned))})


def embed(msg: Message, context: Context, c: Config, me: Any) -> Message:
    saved = _saved(me)
    rows = _rows(msg, context, saved, me)
    kept = _arrays(context)
    if "psi.perm" not in kept:
        raise ProtocolError(f"{me.name}: predict_embed before predict_psi_peer")
    peer = PSIPeer.from_state(rows.ids, M.bytes_of("psi", kept))
    positions = M.arrays_in(msg.content)[M.POSITIONS]
    from flwr_vproto.predict import predictor, set_rows

    party = predictor(saved, rows)
    set_rows(party, np.asarray(peer.rows_from_positions(positions), dtype=np.int64))
    return _reply(msg, arrays={M.EMBEDDINGS: party.embed(SPLIT)})


def score_rows(msg: Message, context: Context, c: Config, me: Any) -> Message:
    saved = _saved(me)
    rows = _rows(msg, context, saved, me)
    kept = _arrays(context)
    from flwr_vproto.predict import predictor, score, set_rows

    party = predictor(saved, rows)
    set_rows(party, kept.get(M.ALIGNED, np.zeros(0, dtype=np.int64)))
    got = M.arrays_in(msg.content)
    passives = [int(k) for k in M.config_in(msg.content)[M.PASSIVES]]
    result = score(party, [got[M.passive_key(k, M.EMBEDDINGS)] for k in passives],  # type: ignore[arg-type]
                   saved.class_names or [])
    out = context.node_config.get("prediction-path") or Path(me.model_dir) / "predictions.csv"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    result.frame.to_csv(out, index=False)
    context.state[STATE] = ArrayRecord()
    return _reply(msg, metrics=result.metrics)


HANDLERS: dict[str, Handler] = {
    "predict_start": start,
    "predict_psi_peer": psi_peer,
    "predict_psi_finish": psi_finish,
    "predict_embed": embed,
    "predict_score": score_rows,
}
"""Flower's ``query.<action>`` -> the handler that answers it."""


def register(app: ClientApp, handler: Callable[[Handler], Callable[[Message, Context], Message]]) -> None:
    """Add the prediction query handlers to ``app``; ``handler`` resolves (config, identity) like training's."""
    for action, fn in HANDLERS.items():
        app.query(action)(handler(fn))


def predict_over_grid(grid: Grid, cfg: Config, *, source: str = "held-out", timeout: float = 600.0,
                      wait_for_nodes: float = 120.0) -> dict[str, float]:
    """Server side: run the prediction query over ``grid``'s parties; return the active party's counts/accuracy.

    ``cfg`` needs only to say how many passive parties there are and the method (the parties use their saved
    models' own configs). The predictions themselves stay on the active party's node.
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r}: expected one of {SOURCES}")
    relay = Relay(grid, timeout=timeout, wait_for_nodes=wait_for_nodes)
    conf = {SOURCE: source}
    nodes = relay.nodes(cfg.dataset.num_passive + 1, "prediction: one active party + dataset.num_passive passives")
    replies = relay.exchange([(n, START, M.records(config=conf)) for n in nodes], "prediction (start)")
    active, passives, hub = _roles(nodes, replies)
    listed = {**conf, M.PASSIVES: [p.index for p in passives]}
    relay_points: dict[str, np.ndarray] = {}
    if passives:
        peer = relay.exchange([(p, PSI_PEER, M.records(arrays={M.HUB: hub}, config=conf)) for p in passives],
                              "prediction (PSI peers)")
        for p in passives:
            relay_points.update({M.passive_key(p.index, k): v for k, v in M.arrays_in(peer[p.name].content).items()})
    fin = relay.exchange([(active, PSI_FINISH, M.records(arrays=relay_points, config=listed))],
                         "prediction (PSI intersection)")[active.name]
    positions = M.arrays_in(fin.content)
    embeddings: dict[str, np.ndarray] = {}
    if passives:
        sends = [(p, EMBED, M.records(arrays={M.POSITIONS: positions[M.passive_key(p.index, M.POSITIONS)]},
                                      config=conf)) for p in passives]
        embedded = relay.exchange(sends, "prediction (embeddings)")
        embeddings = {M.passive_key(p.index, M.EMBEDDINGS): M.arrays_in(embedded[p.name].content)[M.EMBEDDINGS]
                      for p in passives}
    res = relay.exchange([(active, SCORE, M.records(arrays=embeddings, config=listed))],
                         "prediction (scoring)")[active.name]
    return M.metrics_of(M.check_metrics(res.content, active.name, "prediction (scoring)"))


def _roles(nodes: list[PartyNode], replies: dict[str, Message]) -> tuple[PartyNode, list[PartyNode], np.ndarray]:
    """Who is who from the start replies: the active party, the passives that score jointly, the hub's points."""
    active, passives = None, []
    for n in nodes:
        info = M.config_in(replies[n.name].content)
        party = PartyNode(n.node_id, str(info[M.ROLE]), int(info[M.PARTY_INDEX]), dict(info))
        if party.role == "active":
            active, hub = party, M.arrays_in(replies[n.name].content)[M.HUB]
        else:
            passives.append(party)
    if active is None:
        raise ProtocolError("prediction: no node answered as the active party")
    joint = str(active.info[METHOD]) in JOINT_METHODS
    passives = sorted(passives, key=lambda p: p.index) if joint else []
    lacking = [p.name for p in passives if not p.info[MODEL]]
    if lacking:
        raise ProtocolError(f"prediction: {', '.join(lacking)} has no saved model (<model-dir>/<party>.pt); "
                            f"train with a model-dir first")
    return active, passives, hub
