"""One ClientApp for every party: it finds out who it is, loads only its own data and routes messages to a party.

Who am I (node-config):

* **deployment** (``flower-supernode --node-config ...``):

  - ``role`` = ``"active"`` or ``"passive"`` (required);
  - ``party-index`` = ``0`` for the active party, ``1..K`` for passives (required);
  - ``data-path`` = this party's CSV file (required for ``dataset.name = "csv"``, ignored otherwise);
  - ``model-dir`` = folder where this party saves its final model as ``<party>.pt`` (optional; nothing is saved
    without it). The model never leaves the party.
  - ``checkpoint-dir`` = folder of this party's checkpoints (optional; default ``<checkpoint.dir>/<party>``, see
    ``flwr_vproto/checkpoint.py``). Checkpoints never leave the party either.

  e.g. ``--node-config 'role="passive" party-index=1 data-path="/data/shop.csv" model-dir="/models"'``.
* **simulation**: Flower's ``partition-id``; partition 0 is the active party, ``k`` the passive ``k``.

The learning config comes from a closure in simulation (:func:`make_client_app` with a :class:`Config`) and from
the run-config under ``flwr run`` (:func:`flwr_vproto.messages.config_from_run_config`).

All party state (models, optimizer, alignment, PSI secrets between the two PSI messages) lives in
``context.state``: in a deployment each message runs in a fresh process, so nothing else survives. A per-process
cache of the party's *data* is kept, since re-reading it is the only repeated cost a warm simulation process can
skip.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from flwr_vproto import __version__
from flwr_vproto import checkpoint as ck
from flwr_vproto import messages as M
from flwr_vproto.alignment import min_intersection, split_order_seed
from flwr_vproto.config import Config
from flwr_vproto.data import SPLITS, PartySplits, dataset_classes, load_party
from flwr_vproto.inprocess import party_checkpoint
from flwr_vproto.parties import ActiveParty, PassiveParty, state_from_bytes, state_to_bytes
from flwr_vproto.predict import save_party_model
from flwr_vproto.psi import PSIHub, PSIPeer
from flwr_vproto.query import register as register_prediction

ROLES = ("active", "passive")


@dataclass(frozen=True)
class Identity:
    """Who this node is in the federation, from its node-config."""

    role: str
    index: int
    data_path: str | None = None
    model_dir: str | None = None
    checkpoint_dir: str | None = None

    @property
    def name(self) -> str:
        return "active" if self.role == "active" else f"passive{self.index}"


def identity(node_config: dict[str, Any], num_passive: int, model_dir: str | None = None) -> Identity:
    """Read role and party index from the node-config (deployment keys first, then simulation's partition-id)."""
    if "role" in node_config:
        role = str(node_config["role"]).strip().lower()
        if role not in ROLES:
            raise ValueError(f"node-config role={node_config['role']!r}: expected 'active' or 'passive'")
        if "party-index" not in node_config:
            raise ValueError(f"node-config has role={role!r} but no party-index (0 for the active party, 1..K for "
                             f"passives)")
        index = node_config["party-index"]
        data_path = node_config.get("data-path")
        model_dir = str(node_config.get("model-dir", "")) or model_dir
    elif "partition-id" in node_config:
        index = node_config["partition-id"]
        role = "active" if index == 0 else "passive"
        data_path = None
    else:
        raise ValueError("node-config must set role and party-index, e.g. --node-config 'role=\"passive\" "
                         "party-index=1 data-path=\"/data/party1.csv\"'")
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(f"node-config party-index={index!r}: expected an integer")
    if role == "active" and index != 0:
        raise ValueError(f"node-config: the active party has party-index 0, got {index}")
    if role == "passive" and not 1 <= index <= num_passive:
        raise ValueError(f"node-config: passive party-index {index} outside 1..{num_passive} (dataset.num_passive)")
    return Identity(role, int(index), None if data_path in (None, "") else str(data_path), model_dir,
                    str(node_config.get("checkpoint-dir", "")) or None)


@functools.lru_cache(maxsize=4)
def _cached_data(cfg_json: str, index: int) -> PartySplits:
    from flwr_vproto.config import config_from_dict

    return load_party(config_from_dict(json.loads(cfg_json)), index)


def party_data(cfg: Config, index: int) -> PartySplits:
    """This party's data, cached per process (parties never modify it)."""
    return _cached_data(json.dumps(cfg.to_dict(), sort_keys=True), index)


# ------------------------------------------------------------------------------------------------ context.state
def _facts(context: Context) -> ConfigRecord:
    if M.STATE_KEY not in context.state:
        context.state[M.STATE_KEY] = ConfigRecord()
    return context.state[M.STATE_KEY]  # type: ignore[return-value]


def _blobs(context: Context) -> dict[str, np.ndarray]:
    return M.arrays_of(context.state.get(M.STATE_ARRAYS))  # type: ignore[arg-type]


def _store(context: Context, blobs: dict[str, np.ndarray], **facts: Any) -> None:
    """Replace this party's stored arrays (state bytes, PSI secrets) and update its facts."""
    context.state[M.STATE_ARRAYS] = M.array_record(blobs)
    _facts(context).update(facts)


def _save_party(context: Context, party: ActiveParty | PassiveParty) -> None:
    _store(context, {"party": M.bytes_to_array(state_to_bytes(party.state_dict()))}, ready=True)


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise M.ProtocolError(what)


def _reply(msg: Message, arrays: dict[str, np.ndarray] | ArrayRecord | None = None,
           config: dict[str, Any] | ConfigRecord | None = None, metrics: Any = None) -> Message:
    content = RecordDict()
    if arrays is not None:
        content[M.ARRAYS] = arrays if isinstance(arrays, ArrayRecord) else M.array_record(arrays)
    if config is not None:
        content[M.CONFIG] = config if isinstance(config, ConfigRecord) else ConfigRecord(config)
    if metrics is not None:
        content[M.METRICS] = metrics
    return Message(content, reply_to=msg)


# ------------------------------------------------------------------------------------------------ PSI state
def _hub(data: PartySplits, c: Config, split: str, blobs: dict[str, np.ndarray]) -> PSIHub:
    """The active party's PSI hub of an earlier message (a deployment runs each message in a fresh process)."""
    return PSIHub.from_state(data.split(split).ids, M.bytes_of(f"psi.{split}", blobs),
                             order_seed=split_order_seed(c.seed, split),
                             min_intersection=min_intersection(c.dataset.min_aligned, split))


def _peer(data: PartySplits, split: str, blobs: dict[str, np.ndarray]) -> PSIPeer:
    """A passive party's PSI peer of an earlier message."""
    return PSIPeer.from_state(data.split(split).ids, M.bytes_of(f"psi.{split}", blobs))


# ------------------------------------------------------------------------------------------------ the app
def make_client_app(cfg: Config | None = None, model_dir: str | None = None) -> ClientApp:
    """The ClientApp. ``cfg`` given: simulation (config from this closure); ``None``: config from the run-config.

    ``model_dir``: where parties save their final model in simulation (deployment: node-config ``model-dir``).
    """
    app = ClientApp()

    def setup(context: Context) -> tuple[Config, Identity]:
        if cfg is not None:
            return cfg, identity(context.node_config, cfg.dataset.num_passive, model_dir)
        base, _ = M.config_from_run_config(context.run_config)
        me = identity(context.node_config, base.dataset.num_passive, model_dir)
        if base.dataset.name == "csv":
            if me.data_path is None:
                raise ValueError(f"{me.name}: dataset.name is 'csv' but this node's node-config has no data-path")
            base, _ = M.config_from_run_config(context.run_config, party_index=me.index, data_path=me.data_path)
        return base, me

    def handler(fn: Callable[[Message, Context, Config, Identity], Message]) -> Callable[[Message, Context], Message]:
        @functools.wraps(fn)
        def run(msg: Message, context: Context) -> Message:
            c, me = setup(context)
            return fn(msg, context, c, me)

        return run

    @app.query("discover")
    @handler
    def discover(msg: Message, context: Context, c: Config, me: Identity) -> Message:
        """Role, party index and sizes (no IDs, no features); every party also does PSI step 1.

        Starting PSI here saves a message round trip, which costs seconds in a deployment.
        """
        version = msg.content[M.CONFIG].get("version")
        _require(version in (None, __version__), f"{me.name} runs flwr_vproto {__version__}, the ServerApp "
                                                 f"{version}: install the same flwr_vproto version on every host")
        want = msg.content[M.CONFIG].get("fingerprint")
        mine = M.config_fingerprint(c)
        _require(want in (None, mine), f"{me.name}: its config (fingerprint {mine}) differs from the server's "
                                       f"({want}); every party must run with the same config")
        data = party_data(c, me.index)
        info: dict[str, Any] = {
            "role": me.role, "party-index": me.index, "fingerprint": mine,
            "input-shape": [int(s) for s in data.input_shape], "embedding-dim": int(c.model.embedding_dim),
            **{f"rows.{s}": len(data.split(s)) for s in SPLITS},
        }
        context.state[M.STATE_KEY] = ConfigRecord({"role": me.role, "party-index": me.index})
        if "resume-round" in msg.content[M.CONFIG]:
            rnd = int(msg.content[M.CONFIG]["resume-round"])  # type: ignore[arg-type]
            resume_party(context, c, me, rnd)
            return _reply(msg, config={**info, "resumed-round": rnd})
        # PSI step 1, the same on every party: blind own IDs (the active party in its row order, a passive in a
        # private random order), so that step 2 can run on all parties at once.
        points: dict[str, np.ndarray] = {}
        blobs: dict[str, np.ndarray] = {}
        for split in SPLITS:
            ids = data.split(split).ids
            side = (PSIHub(ids, order_seed=split_order_seed(c.seed, split)) if me.role == "active"
                    else PSIPeer(ids))
            points[f"{'hub' if me.role == 'active' else 'own'}.{split}"] = M.bytes_to_array(side.blinded_ids())
            blobs.update(M.blobs_of(f"psi.{split}", side.export_state()))
        _store(context, blobs)
        return _reply(msg, arrays=points, config=info)

    @app.query("psi_peer")
    @handler
    def psi_peer(msg: Message, context: Context, c: Config, me: Identity) -> Message:
        """Passive party, PSI step 2: re-blind the hub's points (its own went out with discovery)."""
        _require(me.role == "passive", f"{me.name}: psi_peer goes to passive parties only")
        blobs = _blobs(context)
        _require("psi.train.secret" in blobs, f"{me.name}: psi_peer before discovery")
        data = party_data(c, me.index)
        hub_points = M.arrays_of(msg.content[M.ARRAYS])  # type: ignore[arg-type]
        out = {}
        for s in SPLITS:
            reblinded = _peer(data, s, blobs).reblind(M.array_to_bytes(hub_points[f"hub.{s}"]))
            out[f"reblinded.{s}"] = M.bytes_to_array(reblinded)
        return _reply(msg, arrays=out)

    @app.query("psi_blind")
    @handler
    def psi_blind(msg: Message, context: Context, c: Config, me: Identity) -> Message:
        """Active party, PSI step 2 (while the passives re-blind its points): blind every passive's points."""
        _require(me.role == "active", f"{me.name}: psi_blind goes to the active party only")
        blobs = _blobs(context)
        _require("psi.train.secret" in blobs, f"{me.name}: psi_blind before discovery")
        data = party_data(c, 0)
        arrays = M.arrays_of(msg.content[M.ARRAYS])  # type: ignore[arg-type]
        passives = [int(k) for k in msg.content[M.CONFIG]["passives"]]  # type: ignore[union-attr]
        for split in SPLITS:
            hub = _hub(data, c, split, blobs)
            hub.blind_peers({f"passive{k}": M.array_to_bytes(arrays[f"passive{k}.own.{split}"]) for k in passives})
            blobs.update(M.blobs_of(f"psi.{split}", hub.export_state()))
        _store(context, blobs)
        return _reply(msg, config={"blinded": len(passives)})

    @app.query("psi_finish")
    @handler
    def psi_finish(msg: Message, context: Context, c: Config, me: Identity) -> Message:
        """Active party, PSI step 3: intersect per split, fix the shared order, build the active party."""
        _require(me.role == "active", f"{me.name}: psi_finish goes to the active party only")
        conf = msg.content[M.CONFIG]
        passives = [int(k) for k in conf["passives"]]  # type: ignore[union-attr]
        dims = [int(d) for d in conf["passive-dims"]]  # type: ignore[union-attr]
        arrays = M.arrays_of(msg.content[M.ARRAYS])  # type: ignore[arg-type]
        blobs = _blobs(context)
        _require(any(k.startswith("psi.train.double.") for k in blobs), f"{me.name}: psi_finish before psi_blind")
        data = party_data(c, 0)
        aligned: dict[str, np.ndarray] = {}
        positions: dict[str, np.ndarray] = {}
        for split in SPLITS:
            hub = _hub(data, c, split, blobs)
            for k in passives:
                hub.add_peer(f"passive{k}", M.array_to_bytes(arrays[f"passive{k}.reblinded.{split}"]))
            rows, pos = hub.finish()
            aligned[split] = np.asarray(rows, dtype=np.int64)
            for k in passives:
                positions[f"passive{k}.positions.{split}"] = np.asarray(pos[f"passive{k}"], dtype=np.int64)
        num_classes = int(dataset_classes(c)[0])
        party = ActiveParty(data, c, num_classes, dims)
        party.set_alignment(aligned)
        _save_party(context, party)
        _facts(context).update({"num-classes": num_classes, "passives": passives, "passive-dims": dims})
        info = {"num-classes": num_classes, **{f"aligned.{s}": int(len(r)) for s, r in aligned.items()}}
        return _reply(msg, arrays=positions, config=info)

    def resume_party(context: Context, c: Config, me: Identity, rnd: int) -> None:
        """Restore this party from its own round-``rnd`` checkpoint (a resumed run: no PSI, no fresh models)."""
        folder = ck.party_dir(c, me.name, me.checkpoint_dir)
        saved = ck.load(folder, rnd, me.name)
        ck.check_same_run(saved["config"], c, me.name, folder)
        facts = dict(saved["facts"])
        _require((facts.get("role"), facts.get("party-index")) == (me.role, me.index),
                 f"{me.name}: the checkpoint in {folder} belongs to {facts.get('role')} party "
                 f"{facts.get('party-index')}")
        _store(context, {"party": M.bytes_to_array(state_to_bytes(saved["party"]))}, ready=True, **facts)

    def init_passive(context: Context, c: Config, me: Identity, msg: Message) -> None:
        """Passive party, PSI step 4 (with its first round): own aligned rows from the hub's positions."""
        blobs = _blobs(context)
        _require("psi.train.perm" in blobs, f"{me.name}: first round before PSI")
        data = party_data(c, me.index)
        arrays = M.arrays_of(msg.content[M.ARRAYS])  # type: ignore[arg-type]
        aligned = {s: _peer(data, s, blobs).rows_from_positions(arrays[f"positions.{s}"]) for s in SPLITS}
        num_classes = int(msg.content[M.CONFIG]["num-classes"])  # type: ignore[arg-type]
        party = PassiveParty(data, c, me.index, num_classes)
        party.set_alignment(aligned)
        _save_party(context, party)
        _facts(context)["num-classes"] = num_classes

    @app.train()
    @handler
    def train(msg: Message, context: Context, c: Config, me: Identity) -> Message:
        """One round of this party (design §4): the one message it gets per round."""
        facts = _facts(context)
        if me.role == "passive" and not facts.get("ready"):
            init_passive(context, c, me, msg)
        _require(bool(facts.get("ready")), f"{me.name}: train before the setup finished")
        num_classes = int(facts["num-classes"])  # type: ignore[arg-type]
        data = party_data(c, me.index)
        conf = msg.content[M.CONFIG]
        rnd, final = int(conf["round"]), bool(conf["final"])  # type: ignore[arg-type]
        splits = ("val", "test") if bool(conf["eval"]) else ()
        state = state_from_bytes(M.array_to_bytes(_blobs(context)["party"]))
        got = M.arrays_of(msg.content.get(M.ARRAYS))  # type: ignore[arg-type]
        if me.role == "passive":
            party: ActiveParty | PassiveParty = PassiveParty(data, c, me.index, num_classes)
            party.load_state_dict(state)
            mask = conf.get("prototype-mask")
            gate = conf.get("pseudo-threshold")  # method.pseudo_gate: the active party's threshold for this passive
            out = party.train_round(rnd, got.get("gradients"), M.get_matrix(conf, "prototypes"),
                                    None if mask is None else np.asarray(mask, dtype=bool), splits,
                                    None if gate is None else float(gate))  # type: ignore[arg-type]
            sent = {"embeddings": out.embeddings, **{f"embeddings.{s}": e for s, e in out.eval_embeddings.items()}}
            reply = _reply(msg, arrays=sent, metrics=M.metric_record(out.metrics))
        else:
            party = ActiveParty(data, c, num_classes, [int(d) for d in facts["passive-dims"]])  # type: ignore[union-attr]
            party.load_state_dict(state)
            # Parties that train jointly with this one (none for method "local", which still aligned with PSI).
            passives = [int(k) for k in facts["passives"]] if party.joint else []  # type: ignore[union-attr]
            res = party.train_round(rnd, [got[f"passive{k}.embeddings"] for k in passives], release=not final)
            metrics = M.metric_record(res.metrics, "train.")
            metrics.update(M.metric_record(res.privacy, "privacy."))
            cal = party.calibrate([got[f"passive{k}.embeddings.val"] for k in passives]) if splits else {}
            for s in splits:  # calibrate on the validation rows first, then score (design §3)
                scores = party.evaluate(s, [got[f"passive{k}.embeddings.{s}"] for k in passives])
                metrics.update(M.metric_record({**scores, **cal} if s == "val" else scores, f"{s}."))
            out_conf = ConfigRecord()
            out_arrays: dict[str, np.ndarray] = {}
            if not final:  # the last round's gradients and prototypes would never be used
                for j, k in enumerate(passives):
                    out_arrays[f"passive{k}.gradients"] = res.gradients[j]
                    if c.method.shares_prototypes:  # else no passive uses them: they stay here
                        M.put_matrix(out_conf, f"passive{k}.prototypes", res.prototypes[j])
                if c.method.shares_prototypes and passives:
                    out_conf["prototype-mask"] = [bool(b) for b in res.prototype_mask]
                gates = party.pseudo_gates()
                if gates is not None:  # one scalar per passive; the labels it was fitted on stay here
                    for j, k in enumerate(passives):
                        out_conf[f"passive{k}.pseudo-threshold"] = float(gates[j])
            reply = _reply(msg, arrays=out_arrays, config=out_conf, metrics=metrics)
        _save_party(context, party)
        if ck.due(c, rnd):  # before replying: the server's file for this round then means every party has one
            keep = ("num-classes", "passives", "passive-dims")
            ck.save(ck.party_dir(c, me.name, me.checkpoint_dir), rnd,
                    party_checkpoint(c, party, rnd, {k: facts[k] for k in keep if k in facts}))
        if final and me.model_dir:
            save_party_model(party, Path(me.model_dir) / f"{me.name}.pt")  # with config, classes, encoders
        return reply

    register_prediction(app, handler)  # the prediction query round (flwr_vproto.query)
    return app


app = make_client_app()
"""The ClientApp of ``flwr run`` (``[tool.flwr.app.components]``): config from the run-config."""
