"""One ClientApp for every party: it finds out who it is, loads only its own data, and runs each message as
decode -> :mod:`flwr_vproto.protocol` step -> encode.

Who am I (node-config):

* **deployment** (``flower-supernode --node-config ...``). The node is its own authority: nothing in the run config
  (which the run's submitter writes) chooses code the node runs or a path it writes; the node-config does
  (:func:`authorize`, checked at every message, before any work; a refusal is one line naming the party, the
  option and the node-config key to set):

  - ``role`` = ``"active"`` or ``"passive"`` (required);
  - ``party-index`` = ``0`` for the active party, ``1..K`` for passives (required);
  - ``data-path`` = this party's CSV file (required for ``dataset.name = "csv"``, ignored otherwise);
  - ``model-dir`` = folder where this party saves its final model as ``<party>.pt`` (optional; nothing is saved
    without it). The model never leaves the party; it holds the weights and what prediction needs, no secret.
  - ``checkpoint-dir`` = the folder of this party's checkpoints (required when the run config turns checkpoints on,
    ``checkpoint.every`` > 0, or asks to ``resume``). The run config's ``checkpoint.dir`` is the ServerApp's folder
    only: a deployed node never writes there. Checkpoints never leave the party.
  - ``audit-dir`` = this party's root for ``audit.record`` (required with it): the active party writes what it
    sent each passive with the true labels, a passive what it received and its own features, for
    ``python -m flwr_vproto.audit``. The run config's ``audit.dir``, if set, must be a relative path inside it
    (``audit-dir/<audit.dir>``); an absolute one or one that climbs out with ``..`` is refused. Nothing there leaves
    the party.
  - ``allow-audit-record`` = ``true`` to let the run config's ``audit.record`` make this node write its raw
    features (a passive) or its true labels (the active party) to ``audit-dir``; default ``false``: refused.
  - ``allow-targets`` = the ``_target_`` paths this node builds (``model.encoder_target``, ``model.top_target``,
    ``method.extra_losses``, nested targets too), comma-separated: ``my_pkg.MyEnc`` allows that path exactly,
    ``my_pkg.*`` any path under ``my_pkg.`` whose object is defined under it (``my_pkg.os.system`` is not); no other
    wildcard. Default: none but the package's own model classes (:data:`flwr_vproto.targets.BUILT_IN`).
  - ``active-secret-file`` = a file holding the active party's key of its defences' random draws, 64 hex digits,
    readable by its owner only (``chmod 600``) (optional; default: a fresh one from the OS at set-up, kept in the
    node's state and its checkpoint folder's ``secret.hex``, mode 0600). Give it only to reproduce a defended run.
    A value (the old ``active-secret``) is refused: the key is never in any config.

  - ``server-metrics`` = ``"progress"`` (default) or ``"full"``, active party only: what it reports to the server.
    ``progress``: the exchange number and rounds trained, nothing derived from a label; its full record and its own
    ``results.json`` go to ``results-dir`` (default ``./vproto-results``), never to the server
    (:mod:`flwr_vproto.ledger`).
  - ``key-file`` = this node's long-term X25519 private key (``python -m flwr_vproto.sealing keygen PATH`` makes
    one and prints its public key); ``pin-active-key`` (on a passive) / ``pin-passive-<k>-key`` (on the active
    party) = the peer's long-term public key, 64 hex digits: any other key the server relays is refused
    (:mod:`flwr_vproto.sealing`). Without them the per-run keys protect against a curious server, not an active one.

  e.g. ``--node-config 'role="passive" party-index=1 data-path="/data/shop.csv" model-dir="/models"'``.
* **simulation**: Flower's ``partition-id``; partition 0 is the active party, ``k`` the passive ``k``. The
  researcher owns every node: the run's config chooses targets and paths, and the runner gives the active party's
  secret (``runner.active_secret_file``).

Everything this party sends another party through the server is sealed to that party (:mod:`flwr_vproto.sealing`):
the server relays it unread.

The learning config comes from a closure in simulation (:func:`make_client_app` with a :class:`Config`) and from
the run-config under ``flwr run`` (:func:`flwr_vproto.run_config.config_from_run_config`).

All party state (models, optimizer, alignment, PSI secrets between messages) lives in ``context.state``
(:class:`PartyStore`): in a deployment each message runs in a fresh process, so nothing else survives. A
per-process cache of the party's *data* is kept, since re-reading it is the only repeated cost a warm simulation
process can skip.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from flwr_vproto import __version__, defences, exchanges, ledger, messages, sealing, targets
from flwr_vproto import checkpoint as ck
from flwr_vproto import protocol as proto
from flwr_vproto.config import Config, ConfigError
from flwr_vproto.data.types import SPLITS, DataError, PartyData, PartySplits
from flwr_vproto.parties import ActiveParty, PassiveParty, state_from_bytes, state_to_bytes
from flwr_vproto.protocol import ACTIVE, PASSIVE, ROLES, FromPassive, InTransit, ProtocolError, ToPassive
from flwr_vproto.query import register as register_prediction
from flwr_vproto.run_config import config_fingerprint, config_from_run_config

PROGRESS, FULL = "progress", "full"
METRICS_POLICIES = (PROGRESS, FULL)  # what the active party reports to the server (design §2)
DEFAULT_RESULTS_DIR = "vproto-results"  # a deployed active party's results folder without node-config results-dir


@dataclass(frozen=True, kw_only=True)
class Identity:
    """Who this node is in the federation, from its node-config."""

    role: str
    index: int
    data_path: str | None = None
    model_dir: str | None = None
    checkpoint_dir: str | None = None
    audit_dir: str | None = None  # this party's audit.record folder (node-config audit-dir, the root in a deployment)
    secret: bytes | None = None  # the active party's defences' key (node-config active-secret-file, or the runner)
    deployed: bool = False  # a deployment's node (node-config role): its own authority, see authorize()
    allow_targets: tuple[str, ...] = ()  # node-config allow-targets (deployment)
    allow_audit_record: bool = False  # node-config allow-audit-record (deployment)
    server_metrics: str = PROGRESS  # active party: what it reports to the server (node-config server-metrics)
    results_dir: str | None = None  # active party: where it writes its label-derived results (node-config results-dir)

    @property
    def name(self) -> str:
        return proto.party_name(self.role, self.index)


def identity(node_config: dict[str, Any], num_passive: int, *, model_dir: str | None = None,
             secret: bytes | None = None, server_metrics: str = PROGRESS, results_dir: str | None = None) -> Identity:
    """Read role and party index from the node-config (deployment keys first, then simulation's partition-id);
    ``secret``: the simulation's, read from ``runner.active_secret_file`` (the node-config's ``active-secret-file``
    wins); ``server_metrics`` / ``results_dir``: the simulation's metrics policy and the active party's results
    folder (the node-config's ``server-metrics`` / ``results-dir`` win; a deployment's default folder is
    ``./vproto-results`` under the SuperNode's working directory)."""
    if "role" in node_config:
        role, index, data_path, model_dir = _deployment_identity(node_config, model_dir)
    elif "partition-id" in node_config:
        index = node_config["partition-id"]
        role, data_path = (ACTIVE if index == 0 else PASSIVE), None
    else:
        raise ValueError("node-config must set role and party-index, e.g. --node-config 'role=\"passive\" "
                         "party-index=1 data-path=\"/data/party1.csv\"'")
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(f"node-config party-index={index!r}: expected an integer")
    if role == ACTIVE and index != 0:
        raise ValueError(f"node-config: the active party has party-index 0, got {index}")
    if role == PASSIVE and not 1 <= index <= num_passive:
        raise ValueError(f"node-config: passive party-index {index} outside 1..{num_passive} (dataset.num_passive)")
    name = proto.party_name(role, int(index))
    if "active-secret" in node_config:
        raise ValueError(f"node-config active-secret on {name} is refused: a value in a config is copied where its "
                         f"owner does not decide; put the 64 hex digits in a file only the node's user can read "
                         f"(chmod 600) and set active-secret-file=PATH")
    if node_config.get("active-secret-file"):
        if role != ACTIVE:
            raise ValueError(f"node-config active-secret-file on {name}: only the active party holds the defences' "
                             f"secret")
        secret = defences.read_secret_file(str(node_config["active-secret-file"]),
                                           f"node-config active-secret-file of {name}")
    deployed = "role" in node_config
    server_metrics, results_dir = _metrics_policy(node_config, role, server_metrics, results_dir)
    return Identity(role=role, index=int(index), data_path=None if data_path in (None, "") else str(data_path),
                    model_dir=model_dir, checkpoint_dir=str(node_config.get("checkpoint-dir", "")) or None,
                    audit_dir=str(node_config.get("audit-dir", "")) or None,
                    secret=secret if role == ACTIVE else None, deployed=deployed,
                    allow_targets=targets.parse_allow_list(node_config.get(targets.ALLOW_TARGETS), name),
                    allow_audit_record=_flag(node_config, "allow-audit-record", name), server_metrics=server_metrics,
                    results_dir=results_dir)


def _flag(node_config: dict[str, Any], key: str, name: str) -> bool:
    """A yes/no node-config key: TOML's ``true``/``false`` (or the same words as a string); absent = ``false``."""
    value = node_config.get(key, False)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise ValueError(f"{name}: node-config {key}={value!r}: expected true or false")
    return value


def authorize(c: Config, me: Identity) -> Identity:
    """A deployed node's own say over what the run config asks of it; ``me`` with its paths resolved.

    Refused in one line naming the party, the option and the node-config key: a ``_target_`` the node does not
    allow (``allow-targets``); a data folder (``dataset.root``: the node's ``data-path`` says where it reads);
    checkpoints without the node's own ``checkpoint-dir``; ``audit.record`` without ``allow-audit-record=true`` and
    an ``audit-dir``, or with an ``audit.dir`` outside it. In simulation (no ``role`` in the node-config) the
    researcher owns every node: nothing to check.
    """
    if not me.deployed:
        return me
    targets.check_allowed(c, me.role, me.name, me.allow_targets)
    if c.dataset.root is not None:
        raise ConfigError(f"{me.name}: dataset.root={c.dataset.root!r} would choose the folder this node reads its "
                          f"data from; on a deployed node that is the node's own: leave dataset.root unset and set "
                          f"node-config data-path")
    if (c.checkpoint.every > 0 or c.resume) and not me.checkpoint_dir:
        why = f"checkpoint.every={c.checkpoint.every}" if c.checkpoint.every > 0 else "resume=true"
        raise ConfigError(f"{me.name}: {why} but this node's node-config has no checkpoint-dir; a deployed node "
                          f"writes its checkpoints only under its own folder (the run config's checkpoint.dir is the "
                          f"ServerApp's): set node-config checkpoint-dir")
    if not c.audit.record:
        return me
    if not me.allow_audit_record:
        what = "its true labels" if me.role == ACTIVE else "its raw features"
        raise ConfigError(f"{me.name}: audit.record=true would make this node write {what} to disk, and it has not "
                          f"opted in: set node-config allow-audit-record=true (and audit-dir) to allow it")
    if not me.audit_dir:
        raise ConfigError(f"{me.name}: audit.record=true but this node's node-config has no audit-dir, the root "
                          f"under which it writes the audit: set node-config audit-dir")
    return dataclasses.replace(me, audit_dir=str(under_root(me.audit_dir, c.audit.dir, "audit.dir", "audit-dir",
                                                            me.name)))


def under_root(root: str, path: str | None, option: str, key: str, name: str) -> Path:
    """A run-config ``path`` resolved inside a node's ``root`` (node-config ``key``): ``None`` is the root itself, a
    relative path a folder under it; an absolute path, or one whose ``..`` climbs out, is refused in one line."""
    base = Path(root)
    if path is None or path == "":
        return base
    rel = Path(path)
    inside = base.resolve() / rel
    if rel.is_absolute() or not inside.resolve().is_relative_to(base.resolve()):
        raise ConfigError(f"{name}: {option}={path!r} is outside this node's node-config {key} ({root}); on a "
                          f"deployed node a run-config path is a relative folder under the node's own {key}")
    return base / rel


def _metrics_policy(node_config: dict[str, Any], role: str, policy: str, folder: str | None
                    ) -> tuple[str, str | None]:
    """The active party's metrics policy and results folder: its node-config's, else the simulation's."""
    if "server-metrics" in node_config:
        if role != ACTIVE:
            raise ValueError("node-config server-metrics on a passive party: only the active party reports metrics")
        policy = str(node_config["server-metrics"]).strip().lower()
    if policy not in METRICS_POLICIES:
        raise ValueError(f"server-metrics={policy!r}: expected one of {METRICS_POLICIES} (node-config server-metrics "
                         f"in a deployment, runner.server_metrics in simulation)")
    folder = str(node_config.get("results-dir", "")) or folder
    if folder is None and "role" in node_config:  # a deployment keeps its label-derived results somewhere
        folder = DEFAULT_RESULTS_DIR
    return policy, folder if role == ACTIVE else None


def _deployment_identity(node_config: dict[str, Any], model_dir: str | None) -> tuple[str, Any, Any, str | None]:
    role = str(node_config["role"]).strip().lower()
    if role not in ROLES:
        raise ValueError(f"node-config role={node_config['role']!r}: expected 'active' or 'passive'")
    if "party-index" not in node_config:
        raise ValueError(f"node-config has role={role!r} but no party-index (0 for the active party, 1..K for "
                         f"passives)")
    return role, node_config["party-index"], node_config.get("data-path"), str(node_config.get("model-dir", "")) or \
        model_dir


@functools.lru_cache(maxsize=4)
def _cached_data(cfg_json: str, index: int) -> PartySplits:
    from flwr_vproto.config import config_from_dict
    from flwr_vproto.data import load_party

    return load_party(config_from_dict(json.loads(cfg_json)), index)


def party_data(cfg: Config, index: int) -> PartySplits:
    """This party's data, cached per process (parties never modify it). A data error names the party first: at
    discovery the server knows a node only by its ID."""
    try:
        return _cached_data(json.dumps(cfg.to_dict(), sort_keys=True), index)
    except DataError as err:
        raise DataError(f"{proto.party_name(ACTIVE if index == 0 else PASSIVE, index)}: {err}") from None


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise ProtocolError(what)


# ------------------------------------------------------------------------------------------------ context.state
class PartyStore:
    """This party's state in ``context.state``: small facts, its PSI secrets, its serialised learner and, once set
    up, its encoded data.

    Keeping the encoded data spares every later message (each a fresh process in a deployment) re-reading and
    re-encoding the party's file, and importing pandas and scikit-learn to do so (~1 s of a ~4.5 s message,
    BENCHMARKS §3). User IDs stay out of it: only PSI needs them, and PSI is done.
    """

    PSI = "psi"  # blob prefix of the PSI secrets
    PARTY = "party"  # blob of the learner's state dict
    DATA = "data"  # array prefix of the encoded data: data.<split>.x, .y, .y_true

    def __init__(self, context: Context) -> None:
        self.context = context
        self._decoded: dict[str, Any] | None = None  # the stored arrays, decoded once per message

    @property
    def facts(self) -> Any:
        """Small facts (role, classes, passives, ready), a ConfigRecord read back as written."""
        if messages.STATE_KEY not in self.context.state:
            self.context.state[messages.STATE_KEY] = ConfigRecord()
        return self.context.state[messages.STATE_KEY]

    def reset(self, me: Identity) -> None:
        self.context.state[messages.STATE_KEY] = ConfigRecord({"role": me.role, "party-index": me.index})
        self._store({})

    def _blobs(self) -> dict[str, Any]:
        if self._decoded is None:
            self._decoded = messages.arrays_of(self.context.state.get(messages.STATE_ARRAYS))
        return self._decoded

    def _store(self, arrays: dict[str, Any]) -> None:
        self.context.state[messages.STATE_ARRAYS] = messages.array_record(arrays)
        self._decoded = dict(arrays)

    def secrets(self) -> dict[str, bytes]:
        return messages.bytes_of(self.PSI, self._blobs())

    def keep_secrets(self, secrets: dict[str, bytes]) -> None:
        self._store(messages.blobs_of(self.PSI, secrets))

    def save_party(self, party: ActiveParty | PassiveParty | dict[str, Any],
                   facts: Mapping[str, Any] | None = None) -> None:
        """Store the learner's state (``party``'s, or a saved state dict) next to the kept data (the PSI secrets are
        done with); update the facts."""
        blob = state_to_bytes(party if isinstance(party, dict) else party.state_dict())
        data = {k: v for k, v in self._blobs().items() if k.startswith(self.DATA + ".")}
        self._store({self.PARTY: messages.bytes_to_array(blob), **data})
        self.facts.update({"ready": True, **(facts or {})})

    def data(self, c: Config, me: Identity) -> PartySplits:
        """The party's encoded data: kept in the state after the first load, rebuilt from it without the file."""
        blobs = self._blobs()
        if f"{self.DATA}.train.x" not in blobs:
            data = party_data(c, me.index)
            kept = {f"{self.DATA}.{s}.{f}": getattr(data.split(s), f) for s in SPLITS for f in ("x", "y", "y_true")
                    if getattr(data.split(s), f) is not None}
            self._store({**blobs, **kept})
            self.facts["input-shape"] = [int(d) for d in data.input_shape]
            return data

        def split(s: str) -> PartyData:
            x = blobs[f"{self.DATA}.{s}.x"]
            return PartyData(np.full(len(x), None, dtype=object), x, blobs.get(f"{self.DATA}.{s}.y"),
                             blobs.get(f"{self.DATA}.{s}.y_true"))

        return PartySplits(me.name, me.role, split("train"), split("val"), split("test"),
                           tuple(int(d) for d in self.facts["input-shape"]))

    def _state(self, me: Identity) -> dict[str, Any]:
        _require(bool(self.facts.get("ready")), f"{me.name}: train before the setup finished")
        return state_from_bytes(messages.array_to_bytes(self._blobs()[self.PARTY]))

    def load_active(self, c: Config, me: Identity) -> ActiveParty:
        """The active party as the last message left it (a deployment runs each message in a fresh process)."""
        state = self._state(me)
        party = ActiveParty(self.data(c, me), c, int(self.facts["num-classes"]),
                            [int(d) for d in self.facts["passive-dims"]])
        party.load_state_dict(state)
        return party

    def load_passive(self, c: Config, me: Identity) -> PassiveParty:
        state = self._state(me)
        party = PassiveParty(self.data(c, me), c, me.index, int(self.facts["num-classes"]))
        party.load_state_dict(state)
        return party


# ------------------------------------------------------------------------------------------------ handlers
def discover(msg: Message, context: Context, c: Config, me: Identity) -> Message:
    """Role, party index and sizes (no IDs, no features); PSI step 1, or restoring a checkpoint to resume."""
    probe = messages.decode_probe(msg.content)
    _require(probe.version in ("", __version__), f"{me.name} runs flwr_vproto {__version__}, the ServerApp "
                                                 f"{probe.version}: install the same flwr_vproto version on every host")
    mine = config_fingerprint(c)
    _require(probe.fingerprint in ("", mine), f"{me.name}: its config (fingerprint {mine}) differs from the "
                                              f"server's ({probe.fingerprint}); every party must run with the same "
                                              f"config")
    store = PartyStore(context)
    store.reset(me)
    policy = {messages.SERVER_METRICS: me.server_metrics} if me.role == ACTIVE else {}
    if probe.resume_round is not None:  # the pair keys come back with the party's checkpoint
        info = _resume(store, c, me, probe.resume_round)
        return Message(messages.encode_discovered(info, policy), reply_to=msg)
    info, secrets = proto.discover(c, party_data(c, me.index), me.role, me.index, mine)
    store.keep_secrets(secrets)
    return Message(messages.encode_discovered(info, {**policy, **_new_keys(store, context, me)}), reply_to=msg)


def _resume(store: PartyStore, c: Config, me: Identity, rnd: int) -> proto.Discovered:
    """Restore this party from its own round-``rnd`` checkpoint (a resumed run: no PSI, no fresh models)."""
    saved = ck.load_party_state(c, me.name, rnd, me.checkpoint_dir)
    facts = dict(saved["facts"])
    _require((facts.get("role"), facts.get("party-index")) == (me.role, me.index),
             f"{me.name}: the checkpoint in {ck.party_dir(c, me.name, me.checkpoint_dir)} belongs to "
             f"{facts.get('role')} party {facts.get('party-index')}")
    store.save_party(saved["party"], facts)
    data = party_data(c, me.index)
    return proto.Discovered(role=me.role, index=me.index, fingerprint=config_fingerprint(c),
                            input_shape=[int(s) for s in data.input_shape], embedding_dim=int(c.model.embedding_dim),
                            rows={s: len(data.split(s)) for s in SPLITS}, resumed_round=rnd)


def psi_peer(msg: Message, context: Context, c: Config, me: Identity) -> Message:
    """Passive party, PSI step 2: re-blind the active party's points (its own went out with discovery)."""
    _require(me.role == PASSIVE, f"{me.name}: psi_peer goes to passive parties only")
    secrets = PartyStore(context).secrets()
    _require("train.secret" in secrets, f"{me.name}: psi_peer before discovery")
    points = proto.psi_reblind(party_data(c, me.index), secrets, messages.decode_hub_points(msg.content))
    store = PartyStore(context)
    _learn_peer(store, context, c, me, ACTIVE, "pin-active-key", messages.keys_in(msg.content))
    _forget_private(store)
    return Message(messages.encode_reblinded(points), reply_to=msg)


def psi_blind(msg: Message, context: Context, c: Config, me: Identity) -> Message:
    """Active party, PSI step 2 (while the passives re-blind its points): blind every passive's points."""
    _require(me.role == ACTIVE, f"{me.name}: psi_blind goes to the active party only")
    store = PartyStore(context)
    secrets = store.secrets()
    _require("train.secret" in secrets, f"{me.name}: psi_blind before discovery")
    own = messages.decode_blind_request(msg.content)
    for k in own:
        _learn_peer(store, context, c, me, proto.party_name(PASSIVE, k), f"pin-passive-{k}-key",
                    messages.keys_in(msg.content, messages.passive_key(k, "")))
    _forget_private(store)
    store.keep_secrets(proto.psi_blind_peers(c, party_data(c, 0), secrets, own))
    return Message(messages.encode_blinded(len(own)), reply_to=msg)


def psi_finish(msg: Message, context: Context, c: Config, me: Identity) -> Message:
    """Active party, PSI step 3: intersect per split, fix the shared order, build the active party."""
    _require(me.role == ACTIVE, f"{me.name}: psi_finish goes to the active party only")
    store = PartyStore(context)
    secrets = store.secrets()
    _require(any(k.startswith("train.double.") for k in secrets), f"{me.name}: psi_finish before psi_blind")
    reblinded, dims = messages.decode_finish_request(msg.content)
    from flwr_vproto.data import dataset_classes

    num_classes = int(dataset_classes(c)[0])
    party, result = proto.psi_finish(c, party_data(c, 0), secrets, reblinded, num_classes, dims, secret=me.secret)
    store.save_party(party, {"num-classes": num_classes, "passives": list(reblinded), "passive-dims": dims})
    if me.server_metrics == PROGRESS and me.results_dir:
        ledger.reset(me.results_dir)
    return Message(messages.encode_intersection(result), reply_to=msg)


def train(msg: Message, context: Context, c: Config, me: Identity) -> Message:
    """One round of this party (design §4): the one message it gets per round. What comes from or goes to another
    party is sealed to it (:mod:`flwr_vproto.sealing`); the server relays it unread."""
    store = PartyStore(context)
    party: ActiveParty | PassiveParty
    if me.role == PASSIVE:
        request = messages.decode_to_passive(msg.content)
        if request.setup is not None and not store.facts.get("ready"):  # PSI step 4, with the first round
            _require("train.perm" in store.secrets(), f"{me.name}: first round before PSI")
            joined = proto.passive_join(c, party_data(c, me.index), me.index, store.secrets(), request.setup)
            store.save_party(joined, {"num-classes": request.setup.num_classes,
                                      "aligned-train": len(request.setup.positions["train"])})
        _next_round(store, me, request.round)
        request = passive_request(msg, context, c, me)
        party = store.load_passive(c, me)
        content = _sealed_embeddings(store, party, c, me, proto.passive_step(party, request, audit_dir=me.audit_dir),
                                     request.round)
        rnd, final = request.round, request.final
    else:
        party = store.load_active(c, me)
        flags = messages.decode_to_active(msg.content, [])
        _next_round(store, me, flags.round)
        to_active, passive_metrics = _opened_embeddings(msg.content, store, party, c, flags.round)
        reply = proto.active_step(party, to_active, audit_dir=me.audit_dir)
        content = _active_reply(store, c, me, to_active, reply, passive_metrics)
        rnd, final = to_active.round, to_active.final
    store.facts["round"] = rnd
    store.save_party(party)
    _after_round(store, party, c, me, rnd, final)
    return Message(content, reply_to=msg)


# ------------------------------------------------------------------------------------------------ sealing
SEAL_PRIVATE = "seal.private"  # facts: this party's per-run X25519 private key (hex) until its pair keys exist
KEPT_FACTS = ("num-classes", "passives", "passive-dims", "aligned-train", "round", "best-val", "test-previous")


def _pair_fact(peer: str) -> str:
    """facts: the key this party shares with ``peer`` (hex), kept in its state and its own checkpoint."""
    return f"seal.{peer}"


def _new_keys(store: PartyStore, context: Context, me: Identity) -> dict[str, bytes]:
    """A fresh per-run key pair (the private half stays in this party's state); returns what discovery carries."""
    private = sealing.new_private()
    store.facts[SEAL_PRIVATE] = private.hex()
    public, static = sealing.publics(private, context.node_config, me.name)
    return {messages.SEAL_KEY: public, **({messages.SEAL_STATIC: static} if static is not None else {})}


def _learn_peer(store: PartyStore, context: Context, c: Config, me: Identity, peer: str, pin: str,
                keys: tuple[bytes | None, bytes | None]) -> None:
    """Derive and keep the key this party shares with ``peer`` (:func:`flwr_vproto.sealing.learn_peer`)."""
    _require(SEAL_PRIVATE in store.facts, f"{me.name}: set-up message before discovery")
    key = sealing.learn_peer(bytes.fromhex(str(store.facts[SEAL_PRIVATE])), keys, context.node_config, me.name,
                             peer, pin, run_binding(c))
    store.facts[_pair_fact(peer)] = key.hex()


def _forget_private(store: PartyStore) -> None:
    """Every pair key is derived: the per-run private key is no longer needed anywhere."""
    if SEAL_PRIVATE in store.facts:
        del store.facts[SEAL_PRIVATE]


def _pair_key(store: PartyStore, me: Identity, peer: str) -> bytes:
    key = store.facts.get(_pair_fact(peer))
    _require(isinstance(key, str), f"{me.name}: no key shared with {peer} (training before the set-up finished?)")
    return bytes.fromhex(str(key))


def _next_round(store: PartyStore, me: Identity, rnd: int) -> None:
    """Rounds come in order: a message of a round this party already trained (a replay) is refused."""
    last = int(store.facts.get("round", 0))
    _require(rnd == last + 1, f"{me.name}: a message of round {rnd} after round {last}: refused (a replayed or "
                              f"out-of-order message)")


def passive_request(msg: Message, context: Context, c: Config, me: Identity) -> ToPassive:
    """A passive's round message, opened: the server's clear flags (round, splits, final, PSI positions) and what
    the active party sealed for it (every round after the first), checked."""
    store = PartyStore(context)
    request = messages.decode_to_passive(msg.content)
    if request.round == 1:
        return request
    where = f"training of round {request.round}"
    blob = messages.sealed_in(msg.content, [messages.SEALED], "the server", where,
                              overhead=sealing.OVERHEAD)[messages.SEALED]
    plain = sealing.open_sealed(_pair_key(store, me, ACTIVE), blob, _aad(c, request.round, sealing.FOR_PASSIVE, ACTIVE,
                                me.name), receiver=me.name, sender=ACTIVE, phase=sealing.FOR_PASSIVE,
                                rnd=request.round)
    got = messages.decode_for_passive(messages.from_bytes(plain, ACTIVE, where), ACTIVE, where,
                                      n_train=int(store.facts["aligned-train"]), dim=int(c.model.embedding_dim),
                                      num_classes=int(store.facts["num-classes"]), dtype=c.wire_dtype)
    return ToPassive(round=request.round, splits=request.splits, final=request.final, gradients=got.gradients,
                     prototypes=got.prototypes, prototype_mask=got.prototype_mask,
                     pseudo_threshold=got.pseudo_threshold, setup=request.setup, test_previous=got.test_previous)


def run_binding(c: Config) -> str:
    """What sealed payloads are bound to besides round, phase, sender and receiver: the run's config, as a resumed
    run must share it (:func:`flwr_vproto.checkpoint.resume_fingerprint`: ``resume`` and ``checkpoint.*`` left
    out), so the payloads a checkpoint holds still open after a resume. The Flower run ID is not used for the same
    reason (a resume is a new Flower run); per-run keys already tie every payload to its run."""
    text = json.dumps(ck.resume_fingerprint(c), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _aad(c: Config, rnd: int, phase: str, sender: str, receiver: str) -> bytes:
    return sealing.associated_data(run_binding(c), rnd, phase, sender, receiver)


def _may_carry_previous(c: Config, rnd: int) -> bool:
    """Whether round ``rnd``'s embeddings may carry last round's test rows (``eval_test=best``: last round scored
    validation rows only); then the sealed reply is padded as if it did, so its size says nothing of the flag."""
    return rnd > 1 and proto.eval_splits(c, rnd - 1) == ("val",)


def _sealed_embeddings(store: PartyStore, party: PassiveParty, c: Config, me: Identity, reply: FromPassive,
                       rnd: int) -> Any:
    """A passive's reply: its embeddings and metrics, sealed to the active party."""
    inner = messages.to_bytes(messages.encode_from_passive(reply, dtype=c.wire_dtype))
    size = None
    if reply.previous_test is None and _may_carry_previous(c, rnd):
        dummy = np.zeros((len(party.aligned["test"]), int(c.model.embedding_dim)), dtype=np.float32)
        size = len(messages.to_bytes(messages.encode_from_passive(
            FromPassive(embeddings=reply.embeddings, eval_embeddings=reply.eval_embeddings, metrics=reply.metrics,
                        previous_test=dummy), dtype=c.wire_dtype)))
    blob = sealing.seal(_pair_key(store, me, ACTIVE), inner, _aad(c, rnd, sealing.EMBEDDINGS, me.name, ACTIVE),
                        size=size)
    return messages.with_sealed(messages.records(arrays={}), {messages.SEALED: blob})


def _opened_embeddings(content: Any, store: PartyStore, party: ActiveParty, c: Config, rnd: int
                       ) -> tuple[proto.ToActive, list[dict[str, float]]]:
    """The active party's round message, opened: every joint passive's embeddings (checked against the aligned
    rows, its dimension and the wire dtype) and its own metrics."""
    where = f"training of round {rnd}"
    me_name = ACTIVE
    passives = [int(k) for k in store.facts["passives"]] if party.joint else []
    dims = dict(zip([int(k) for k in store.facts["passives"]], [int(d) for d in store.facts["passive-dims"]],
                    strict=True))
    previous = bool(store.facts.get("test-previous", False))
    blobs = messages.sealed_in(content, [messages.passive_key(k, messages.SEALED) for k in passives], "the server",
                               where, overhead=sealing.OVERHEAD)
    rows = {s: len(party.aligned[s]) for s in SPLITS}
    replies = []
    for k in passives:
        name = proto.party_name(PASSIVE, k)
        key = store.facts.get(_pair_fact(name))
        _require(isinstance(key, str), f"{me_name}: no key shared with {name}")
        plain = sealing.open_sealed(bytes.fromhex(str(key)), blobs[messages.passive_key(k, messages.SEALED)],
                                    _aad(c, rnd, sealing.EMBEDDINGS, name, ACTIVE), receiver=ACTIVE, sender=name,
                                    phase=sealing.EMBEDDINGS, rnd=rnd)
        replies.append(messages.decode_from_passive(messages.from_bytes(plain, name, where), name, where, rows=rows,
                                                    dim=dims[k], splits=proto.eval_splits(c, rnd), previous=previous,
                                                    dtype=c.wire_dtype))
    return proto.to_active(rnd, c, replies, test_previous=previous), [r.metrics for r in replies]


def _active_reply(store: PartyStore, c: Config, me: Identity, msg: proto.ToActive, reply: proto.FromActive,
                  passive_metrics: list[dict[str, float]]) -> Any:
    """The active party's reply: to each passive, sealed, what its next round uses (nothing after the last); to
    the server, the metrics its policy allows (``progress``: none derived from a label; the rest goes to its own
    results folder, :mod:`flwr_vproto.ledger`)."""
    transit = InTransit(len(passive_metrics), best_val=float(store.facts.get("best-val", -np.inf)))
    transit.receive(reply)  # the test-rows flag, decided here on what only this party sees
    store.facts["best-val"], store.facts["test-previous"] = transit.best_val, transit.test_previous
    blobs: dict[str, bytes] = {}
    if not msg.final:
        for k, name in enumerate((proto.party_name(PASSIVE, k) for k in range(1, len(msg.embeddings) + 1)), 1):
            nxt = transit.to_passive(k, msg.round + 1, c)
            inner = messages.to_bytes(messages.encode_for_passive(nxt, dtype=c.wire_dtype))
            blobs[messages.passive_key(k, messages.SEALED)] = sealing.seal(
                _pair_key(store, me, name), inner, _aad(c, msg.round + 1, sealing.FOR_PASSIVE, ACTIVE, name))
    full = messages.full_metrics(reply, passive_metrics)
    if me.server_metrics == FULL:
        metrics = full
    else:
        metrics = messages.progress_metrics(msg.round, len(exchanges.rounds_of(c, msg.round)))
        if me.results_dir:
            ledger.append(me.results_dir, msg.round, full)
            if msg.final:
                _write_active_results(c, me.results_dir)
    return messages.with_sealed(messages.records(metrics=metrics), blobs)


def _write_active_results(c: Config, folder: str) -> None:
    """The active party's own ``results.json`` (metrics policy ``progress``): the same rounds, selection and final
    metrics the server would have written under ``full``, without the server's timings and traffic."""
    from flwr_vproto.privacy import privacy_summary
    from flwr_vproto.results import build_results, write_results

    history, local = active_history(c, ledger.read(folder))
    write_results(Path(folder) / "results.json", build_results(c, history, local_rounds=local, extra={
        **privacy_summary(c, history), **defences.defence_summary(c, history)}), exclusive=True)


def active_history(c: Config, kept: dict[int, dict[str, float]], *, upto: int | None = None
                   ) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Per-exchange and per-round records from the active party's kept metrics (:mod:`flwr_vproto.ledger`), as
    the server builds them under ``full`` (no seconds, no traffic)."""
    history: list[dict[str, float]] = []
    local: list[dict[str, float]] = []
    for rnd in range(1, (upto or exchanges.count(c)) + 1):
        if rnd not in kept:
            break
        reply, passives = decode_full_metrics(c, rnd, kept[rnd])
        proto.add_previous_test(history, reply)
        local.extend(proto.local_records(c, rnd, reply))
        history.append(proto.record(c, rnd, passives, reply, 0.0))
        history[-1].pop("seconds")
    return history, local


def decode_full_metrics(c: Config, rnd: int, metrics: Any) -> tuple[proto.FromActive, list[FromPassive]]:
    """An exchange's ``full`` metrics: the active party's reply (metrics only) and each joint passive's metrics."""
    reply = messages.decode_active_metrics(metrics, f"training of round {rnd}",
                                           earlier=exchanges.rounds_of(c, rnd)[:-1])
    joint = c.dataset.num_passive if proto.is_joint(c) else 0
    passives = [FromPassive(embeddings=np.zeros((0, 0), np.float32), eval_embeddings={}, metrics=m)
                for m in messages.passive_metrics_of(metrics, joint)]
    return reply, passives


def _after_round(store: PartyStore, party: ActiveParty | PassiveParty, c: Config, me: Identity, rnd: int,
                 final: bool) -> None:
    """The party's own files: its checkpoint (before it replies, so the server's file means every party has one)
    and, after the last round, its model."""
    if ck.due(c, rnd):
        facts = {k: store.facts[k] for k in store.facts if k in KEPT_FACTS or k.startswith("seal.")}
        ck.save_party(ck.party_dir(c, me.name, me.checkpoint_dir), rnd, ck.party_checkpoint(c, party, rnd, facts))
    if final and me.model_dir:
        from flwr_vproto.predict import save_party_model

        party.data = party_data(c, me.index)  # the file's encoders and class names go with the model
        save_party_model(party, Path(me.model_dir) / f"{me.name}.pt")  # with config, classes, encoders


# ------------------------------------------------------------------------------------------------ the app
Handler = Callable[[Message, Context, Config, Identity], Message]


def _resolver(cfg: Config | None, model_dir: str | None, secret: bytes | None = None, server_metrics: str = PROGRESS,
              results_dir: str | None = None) -> Callable[[Context], tuple[Config, Identity]]:
    """How a message learns its config and identity: the closure's config (simulation) or the run-config."""

    def resolve(context: Context) -> tuple[Config, Identity]:
        if cfg is not None:
            me = identity(context.node_config, cfg.dataset.num_passive, model_dir=model_dir, secret=secret,
                          server_metrics=server_metrics, results_dir=results_dir)
            return cfg, authorize(cfg, me)
        base, _ = config_from_run_config(context.run_config)
        me = identity(context.node_config, base.dataset.num_passive, model_dir=model_dir)
        if base.dataset.name == "csv":
            if me.data_path is None:
                raise ValueError(f"{me.name}: dataset.name is 'csv' but this node's node-config has no data-path")
            base, _ = config_from_run_config(context.run_config, party_index=me.index, data_path=me.data_path)
        me = authorize(base, me)  # before the node's own data folder replaces the (refused) run-config one
        if base.dataset.name == "fashion_mnist" and me.data_path is not None:
            base = dataclasses.replace(base, dataset=dataclasses.replace(base.dataset, root=me.data_path))
        return base, me

    return resolve


def make_client_app(cfg: Config | None = None, model_dir: str | None = None,
                    active_secret: bytes | None = None, *, server_metrics: str = PROGRESS,
                    results_dir: str | None = None) -> ClientApp:
    """The ClientApp. ``cfg`` given: simulation (config from this closure); ``None``: config from the run-config.

    ``model_dir``: where parties save their final model in simulation (deployment: node-config ``model-dir``).
    ``active_secret``: the active party's 32-byte key of its defences' random draws in simulation (read from
    ``runner.active_secret_file``; deployment: node-config ``active-secret-file``); only the active party's ClientApp
    uses it, and it never enters the run config. ``None``: fresh from the OS at set-up.
    ``server_metrics`` / ``results_dir``: in simulation, the active party's metrics policy (``progress``: nothing
    derived from a label reaches the server; ``full``: every metric) and the folder where it writes what the
    server is not told (``runner.server_metrics``; a deployment's active party reads its node-config
    ``server-metrics`` / ``results-dir``). ``None``: kept in its state only.
    """
    app = ClientApp()
    resolve = _resolver(cfg, model_dir, active_secret, server_metrics, results_dir)

    def handler(fn: Handler) -> Callable[[Message, Context], Message]:
        @functools.wraps(fn)
        def run(msg: Message, context: Context) -> Message:
            return fn(msg, context, *resolve(context))

        return run

    for name, fn in (("discover", discover), ("psi_peer", psi_peer), ("psi_blind", psi_blind),
                     ("psi_finish", psi_finish)):
        app.query(name)(handler(fn))
    app.train()(handler(train))
    register_prediction(app, handler)  # the prediction query round (flwr_vproto.query)
    return app


app = make_client_app()
"""The ClientApp of ``flwr run`` (``[tool.flwr.app.components]``): config from the run-config."""
