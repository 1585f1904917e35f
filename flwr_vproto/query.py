"""Prediction as a Flower query round: each party scores new users from its own saved model, on its own node.

The same steps as :func:`flwr_vproto.predict.predict`, but every party runs on its own SuperNode and only blinded
PSI points and embeddings travel (through the server, which sees nothing else):

1. ``query.predict_start`` (every node): load its saved model (``<model-dir>/<party>.pt``) and its new rows; the
   active party blinds its new users' IDs (PSI step 1).
2. ``query.predict_psi_peer`` (passives): re-blind the active party's points, blind their own (PSI step 2).
3. ``query.predict_psi_finish`` (active): intersect; returns each passive's positions in the shared order.
4. ``query.predict_embed`` (passives): embed their aligned new rows, in the shared order.
5. ``query.predict_score`` (active): joint prediction for aligned users, active-only head for the others; writes the
   predictions CSV **on the active party's node**, logs where, and replies only with that path, counts and, where
   its rows have labels, accuracy.

The CSV is never overwritten. Node-config ``prediction-path`` names it; if that file exists the active party refuses
at step 1, before any work (and at step 5 if it appeared since). Without it, the default is
``<model-dir>/predictions-held-out.csv`` (``source="held-out"``) or ``<model-dir>/predictions.csv``
(``source="file"``), and when that exists the next free name: ``predictions-2.csv``, ``predictions-3.csv``, ...
(each created atomically, so two queries never write the same file).

Where the new rows come from, per node: ``source="held-out"`` (the held-out test users of the built-in dataset the
model was trained on) or ``source="file"`` (node-config ``predict-path``: a CSV in the party's training format).
State between messages lives in ``context.state`` (a deployment starts a process per message).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from flwr_vproto import messages
from flwr_vproto.alignment import split_order_seed
from flwr_vproto.config import REPLY_TIMEOUT, WAIT_FOR_NODES, Config
from flwr_vproto.data.types import DataError
from flwr_vproto.protocol import JOINT_METHODS, PredictReply, PredictRequest, ProtocolError
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
PREDICTION_PATH = "prediction-path"  # node-config key: where the active party writes its predictions CSV

log = logging.getLogger("flwr")

Handler = Callable[[Message, Context, Config, Any], Message]


def _saved(me: Any) -> SavedParty:
    if not me.model_dir:
        raise ValueError(f"{me.name}: no model-dir in this node's node-config: nowhere to load its model from")
    from flwr_vproto.predict import load_party_model

    return load_party_model(Path(me.model_dir) / f"{me.name}.pt")


def _rows(req: PredictRequest, context: Context, saved: SavedParty, me: Any) -> Any:
    if req.source not in SOURCES:
        raise ValueError(f"prediction source {req.source!r}: expected one of {SOURCES}")
    path = None
    if req.source == "file":
        path = context.node_config.get("predict-path")
        if not path:
            raise ValueError(f"{me.name}: source='file' but this node's node-config has no predict-path")
    from flwr_vproto.predict import new_rows

    return new_rows(saved, None if path is None else str(path))


def _arrays(context: Context) -> dict[str, np.ndarray]:
    return messages.arrays_of(context.state.get(STATE))


def _keep(context: Context, **arrays: np.ndarray) -> None:
    context.state[STATE] = messages.array_record({**_arrays(context), **arrays})


def _resume(msg: Message, context: Context, me: Any, needs: str, step: str
            ) -> tuple[PredictRequest, SavedParty, Any, dict[str, np.ndarray]]:
    """A later step of the query: its request, the saved model, the new rows and what earlier steps kept (``needs``
    must be among it, else the steps came out of order)."""
    req = messages.decode_predict_request(msg.content)
    saved = _saved(me)
    rows = _rows(req, context, saved, me)
    kept = _arrays(context)
    if needs not in kept:
        raise ProtocolError(f"{me.name}: {step}")
    return req, saved, rows, kept


def _answer(msg: Message, reply: PredictReply) -> Message:
    return Message(messages.encode_predict_reply(reply), reply_to=msg)


def start(msg: Message, context: Context, c: Config, me: Any) -> Message:
    """Every party: load its saved model and new rows; the active party blinds its users' IDs (PSI 1)."""
    context.state[STATE] = ArrayRecord()
    if me.role != "active" and me.model_dir and not (Path(me.model_dir) / f"{me.name}.pt").exists():
        # e.g. method "local", where passives never train; the server decides whether that is an error
        return _answer(msg, PredictReply(role=me.role, index=me.index, model=False))
    named = context.node_config.get(PREDICTION_PATH) if me.role == "active" else None
    if named:  # refuse an existing predictions file before any work
        from flwr_vproto.predict import check_output

        try:
            check_output(str(named), f"node-config {PREDICTION_PATH}")
        except DataError as err:
            raise DataError(f"{me.name}: {err}") from None
    saved = _saved(me)
    rows = _rows(messages.decode_predict_request(msg.content), context, saved, me)
    reply = PredictReply(role=me.role, index=me.index, rows=len(rows), method=saved.cfg.method.name)
    if me.role == "active":
        hub = PSIHub(rows.ids, order_seed=split_order_seed(saved.cfg.seed, SPLIT))
        reply.hub = hub.blinded_ids()
        _keep(context, **messages.blobs_of("psi", hub.export_state()))
    return _answer(msg, reply)


def psi_peer(msg: Message, context: Context, c: Config, me: Any) -> Message:
    """Passive, PSI 2: re-blind the active party's points, blind its own."""
    req = messages.decode_predict_request(msg.content)
    peer = PSIPeer(_rows(req, context, _saved(me), me).ids)
    reblinded, own = peer.respond(req.hub)  # type: ignore[arg-type]
    _keep(context, **messages.blobs_of("psi", peer.export_state()))
    return _answer(msg, PredictReply(reblinded=reblinded, own=own))


def psi_finish(msg: Message, context: Context, c: Config, me: Any) -> Message:
    """Active, PSI 3: intersect; each passive's positions in the shared order (none aligned: scored alone)."""
    req, saved, rows, kept = _resume(msg, context, me, "psi.secret", "predict_psi_finish before predict_start")
    hub = PSIHub.from_state(rows.ids, messages.bytes_of("psi", kept),
                            order_seed=split_order_seed(saved.cfg.seed, SPLIT))
    for k, (reblinded, own) in req.points.items():
        hub.add_peer(f"passive{k}", reblinded, own)
    try:
        if not req.passives:  # method "local": the active party scores every user alone
            raise PSIError("intersection is empty (no passive party)")
        aligned, pos = hub.finish()
    except PSIError as err:  # no user in common: all are scored by the active party alone
        if "empty" not in str(err):
            raise
        aligned, pos = np.zeros(0, dtype=np.int64), {f"passive{k}": np.zeros(0, np.int64) for k in req.passives}
    _keep(context, aligned=np.asarray(aligned, dtype=np.int64))
    return _answer(msg, PredictReply(aligned=int(len(aligned)),
                                     positions={k: pos[f"passive{k}"] for k in req.passives}))


def embed(msg: Message, context: Context, c: Config, me: Any) -> Message:
    """Passive: embed its aligned new rows, in the shared order."""
    req, saved, rows, kept = _resume(msg, context, me, "psi.perm", "predict_embed before predict_psi_peer")
    peer = PSIPeer.from_state(rows.ids, messages.bytes_of("psi", kept))
    from flwr_vproto.predict import predictor, set_rows

    party = predictor(saved, rows)
    set_rows(party, np.asarray(peer.rows_from_positions(req.positions), dtype=np.int64))  # type: ignore[arg-type]
    return _answer(msg, PredictReply(embeddings=party.embed(SPLIT)))


def score_rows(msg: Message, context: Context, c: Config, me: Any) -> Message:
    """Active: score every new user (jointly where aligned); the predictions CSV stays on this node."""
    req, saved, rows, kept = _resume(msg, context, me, "aligned", "predict_score before predict_psi_finish")
    from flwr_vproto.predict import OUTPUT_NAMES, predictor, score, set_rows, write_predictions

    party = predictor(saved, rows)
    set_rows(party, kept["aligned"])
    result = score(party, [req.embeddings[k] for k in req.passives], saved.class_names or [])  # type: ignore
    named = context.node_config.get(PREDICTION_PATH)
    out = Path(str(named)) if named else Path(me.model_dir) / OUTPUT_NAMES[req.source]
    try:
        written = write_predictions(result.frame, out, next_free=not named,
                                    what=f"node-config {PREDICTION_PATH}").resolve()
    except DataError as err:  # the named file appeared since the start
        raise DataError(f"{me.name}: {err}") from None
    log.info("%s: predictions for %d of %d new users written to %s", me.name, len(result.frame),
             int(result.metrics["users"]), written)
    context.state[STATE] = ArrayRecord()
    return _answer(msg, PredictReply(metrics=result.metrics, path=str(written)))


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


@dataclass
class PredictionRound:
    """What the server learns from a prediction query round: the active party's counts and accuracy, and where it
    wrote the predictions CSV (a path on its own node; the predictions never leave it)."""

    metrics: dict[str, float] = field(default_factory=dict)
    path: str | None = None

    def summary(self) -> str:
        """One line: integer counts, accuracy, the CSV's path (:func:`flwr_vproto.results.format_prediction`)."""
        from flwr_vproto.results import format_prediction

        return "prediction: " + format_prediction(self.metrics, self.path or "(path not reported)",
                                                  " (on the active party's node)")


def predict_over_grid(grid: Grid, cfg: Config, *, source: str = "held-out", timeout: float = REPLY_TIMEOUT,
                      wait_for_nodes: float = WAIT_FOR_NODES) -> PredictionRound:
    """Server side: run the prediction query over ``grid``'s parties; return the active party's counts/accuracy
    and the path of the predictions CSV it wrote.

    ``cfg`` needs only to say how many passive parties there are and the method (the parties use their saved
    models' own configs). The predictions themselves stay on the active party's node.
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r}: expected one of {SOURCES}")
    relay = Relay(grid, timeout=timeout, wait_for_nodes=wait_for_nodes)
    nodes = relay.nodes(cfg.dataset.num_passive + 1, "prediction: one active party + dataset.num_passive passives")
    ask = messages.encode_predict_request(PredictRequest(source))
    replies = relay.exchange([(n, START, ask) for n in nodes], "prediction (start)")
    active, passives, hub = _roles(nodes, replies)
    ks = [p.index for p in passives]
    points: dict[int, tuple[bytes, bytes]] = {}
    if passives:
        peer_ask = messages.encode_predict_request(PredictRequest(source, hub=hub))
        peer = relay.exchange([(p, PSI_PEER, peer_ask) for p in passives], "prediction (PSI peers)")
        got = {p.index: messages.decode_predict_reply(peer[p.name].content) for p in passives}
        points = {k: (r.reblinded, r.own) for k, r in got.items()}  # type: ignore[misc]
    finish = messages.encode_predict_request(PredictRequest(source, passives=ks, points=points))
    fin = relay.exchange([(active, PSI_FINISH, finish)], "prediction (PSI intersection)")[active.name]
    positions = messages.decode_predict_reply(fin.content, ks).positions
    embeddings: dict[int, np.ndarray] = {}
    if passives:
        sends = [(p, EMBED, messages.encode_predict_request(PredictRequest(source, positions=positions[p.index])))
                 for p in passives]
        embedded = relay.exchange(sends, "prediction (embeddings)")
        embeddings = {p.index: messages.decode_predict_reply(embedded[p.name].content).embeddings for p in passives}  # type: ignore
    res = relay.exchange([(active, SCORE, messages.encode_predict_request(PredictRequest(source, passives=ks,
                                                                                   embeddings=embeddings)))],
                         "prediction (scoring)")[active.name]
    metrics = messages.metrics_of(messages.check_metrics(res.content, active.name, "prediction (scoring)"))
    return PredictionRound(metrics, messages.decode_predict_reply(res.content).path)


def _roles(nodes: list[PartyNode], replies: dict[str, Message]) -> tuple[PartyNode, list[PartyNode], bytes]:
    """Who is who from the start replies: the active party, the passives that score jointly, the hub's points."""
    active, passives, hub = None, [], b""
    for n in nodes:
        reply = messages.decode_predict_reply(replies[n.name].content)
        party = PartyNode(n.node_id, str(reply.role), reply.index, {"method": reply.method, "model": reply.model})
        if party.role == "active":
            active, hub = party, reply.hub or b""
        else:
            passives.append(party)
    if active is None:
        raise ProtocolError("prediction: no node answered as the active party")
    joint = str(active.info["method"]) in JOINT_METHODS
    passives = sorted(passives, key=lambda p: p.index) if joint else []
    lacking = [p.name for p in passives if not p.info["model"]]
    if lacking:
        raise ProtocolError(f"prediction: {', '.join(lacking)} has no saved model (<model-dir>/<party>.pt); "
                            f"train with a model-dir first")
    return active, passives, hub
