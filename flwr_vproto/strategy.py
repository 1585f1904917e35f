"""``VerticalProtoStrategy``: the server side of vertical federated learning with prototypes (design §4).

It subclasses Flower's message-API :class:`~flwr.serverapp.strategy.Strategy`, so a user runs it like ``FedAvg``:
``strategy.start(grid=grid)`` returns a :class:`~flwr.serverapp.strategy.Result`. Unlike horizontal FL there is no
global model to aggregate: the server relays the payloads of :mod:`flwr_vproto.protocol` between parties — encode
(:mod:`flwr_vproto.messages`) -> send and receive (:mod:`flwr_vproto.relay`) -> decode — in the order
:func:`flwr_vproto.inprocess.run_inprocess` calls the same steps, so both engines produce the same per-round metrics.

Every step is a public hook a subclass can override or wrap, ``configure_*`` (build the messages of a phase) and
``aggregate_*`` (decode and check its replies), called in turn by the strategy's own loop as FedAvg's round calls
``configure_train`` -> send/receive -> ``aggregate_train``. Flower's ``configure_train`` / ``aggregate_train`` /
``configure_evaluate`` / ``aggregate_evaluate`` are refused in one line naming these hooks (and a Flower strategy
wrapper, which has no global model to work on, in one line naming the wrapper).

Setup (once, three message round trips): discovery (every node: role, party index, sizes; its blinded IDs ride
along) -> the passives re-blind the active party's points while it blinds theirs -> the active party intersects per
split and builds its learner; each passive's positions in the shared order ride along with its first exchange. The
server relays only blinded points, never IDs.
Exchanges (pipelined, one message per party each; :mod:`flwr_vproto.exchanges` says which rounds each trains, by
default one, and one in all when no passive could ever receive anything): passives get last exchange's gradients
(and the second prototypes when their third loss uses them) and reply with their embeddings; then the active party
gets all embeddings, trains the exchange's rounds on them, evaluates after evaluation rounds, and replies with every
round's metrics and each passive's next gradients (``configure_passives`` / ``aggregate_passives``, then
``configure_active`` / ``aggregate_active``, then ``exchange_record``). Each exchange is one Flower round:
``history`` and ``results.json``'s ``rounds`` hold one record per exchange, ``local_rounds`` one per round when they
differ.

What one party sends another is sealed end to end (:mod:`flwr_vproto.sealing`): the server forwards the passives'
sealed embeddings to the active party and the active party's sealed gradients / prototypes / gates to each passive,
checking only that each blob is there; its checkpoint holds ciphertext. It sees the active party's metrics as that
party's policy allows (node-config ``server-metrics``: ``progress``, the default, reports nothing derived from a
label; in simulation ``active_results`` reads the active party's own record back, design §2).

Every wait has a deadline; an error reply or a missing reply stops the run with :class:`ProtocolError` naming the
party, the phase and the round — or, with ``checkpoint.retries``, continues from the last complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from flwr_vproto import __version__, defences, exchanges, ledger, messages, optional, privacy, sealing
from flwr_vproto import checkpoint as ck
from flwr_vproto import protocol as proto
from flwr_vproto.config import INPROCESS_ONLY, REPLY_TIMEOUT, WAIT_FOR_NODES, Config, ConfigError
from flwr_vproto.data.types import SPLITS
from flwr_vproto.privacy import privacy_summary
from flwr_vproto.protocol import FromActive, FromPassive, PassiveSetup, Probe, ProtocolError
from flwr_vproto.relay import PartyNode, Relay, Traffic, make_message
from flwr_vproto.results import build_results, format_round
from flwr_vproto.run_config import config_fingerprint

log = logging.getLogger("flwr")

RoundCallback = Callable[[dict[str, float]], None]
Replies = Mapping[str, Message]  # replies by party name (``active``, ``passive1``, ...; ``node <id>`` before discovery)
PHASES = {proto.PASSIVE: "training (passive parties)", proto.ACTIVE: "training (active party)"}  # as errors name them


@dataclass
class Exchange:
    """The exchange under way (``strategy.current``): what its phases hand each other, for hooks to read.

    ``passives`` is ``None`` until :meth:`~VerticalProtoStrategy.aggregate_passives` returns; ``active``,
    ``passive_metrics`` and ``sealed`` are set by :meth:`~VerticalProtoStrategy.aggregate_active`.
    """

    round: int
    started: float = field(default_factory=time.perf_counter)
    traffic: Traffic = field(default_factory=Traffic)
    passives: dict[int, bytes] | None = None  # each joint passive's sealed reply (to the active party), by index
    active: FromActive | None = None  # the active party's reply as far as its metrics policy lets the server see it
    passive_metrics: list[FromPassive] = field(default_factory=list)  # passives' metrics, via the active party
    sealed: dict[int, bytes] = field(default_factory=dict)  # what the active party sealed for each passive


class VerticalProtoStrategy(Strategy):
    """Drive one vertical federated run (``vproto``, ``vanilla`` or ``local``) over Flower messages.

    ``timeout``: seconds to wait for any one reply; ``wait_for_nodes``: seconds to wait for all ``K + 1``
    SuperNodes to connect; ``on_round``: called with each exchange's record (e.g. to print progress);
    ``poll_interval`` / ``max_poll_interval``: see :class:`~flwr_vproto.relay.Relay`; ``active_results``: in
    simulation (the researcher owns every node), the active party's results folder, read back each exchange when it
    reports only ``progress`` to the server, so ``history`` and ``results`` hold every metric as under ``full``.
    After :meth:`start`, ``history`` holds the per-exchange records and ``results`` the content of ``results.json``.

    **Hooks.** :meth:`start` calls these, in this order; override or wrap any of them (``super()`` first) to add
    metrics, inspect or change messages, or log. ``configure_*`` return Flower messages (build them with
    :meth:`message`), ``aggregate_*`` get the replies by party name and return decoded, checked payloads;
    ``current`` (an :class:`Exchange`) holds what the exchange's phases have handed each other so far.

    ========================  =========================================================================
    set-up (once)             ``configure_discovery`` / ``aggregate_discovery`` (sets ``parties``),
                              ``configure_psi`` / ``aggregate_psi`` (PSI step 2),
                              ``configure_intersection`` / ``aggregate_intersection`` (PSI step 3)
    passive phase (each       ``configure_passives(server_round)``: one ``train`` message per joint passive
    exchange, a Flower        (none for ``local``) -> send/receive -> ``aggregate_passives(server_round,
    round, ``server_round``)  replies)``: each passive's sealed reply, by passive index
    active phase              ``configure_active(server_round, passives)``: one ``train`` message to the
                              active party with every passive's sealed reply -> send/receive ->
                              ``aggregate_active(server_round, replies)``: its metrics (a ``FromActive``;
                              the passives' next payloads, sealed, go to ``current.sealed``)
    the exchange's record     ``exchange_record(server_round, exchange)``: the flat record (``active/``,
                              ``passive<k>/``, ``val/``, ``test/``, ``privacy/``, traffic keys) that
                              ``history``, ``on_round``, ``results.json`` and ``Result`` get
    evaluation                rides with the active phase: on evaluation rounds the passives embed their
                              val/test rows in their ``train`` reply and the active party scores them in
                              its own; the record's ``val/`` and ``test/`` metrics are also Flower's
                              ``Result.evaluate_metrics_clientapp``
    ========================  =========================================================================

    Flower's ``configure_train`` / ``aggregate_train`` / ``configure_evaluate`` / ``aggregate_evaluate`` raise a
    one-line ``TypeError`` naming the hooks above: Flower's loop makes one round trip around a global model per
    round, an exchange makes two and has none. So a Flower strategy wrapper (e.g.
    ``DifferentialPrivacyClientSideFixedClipping``) is refused when its ``start`` first calls this strategy
    (:meth:`summary`), in one line naming it, before any message is sent.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        timeout: float = REPLY_TIMEOUT,
        wait_for_nodes: float = WAIT_FOR_NODES,
        on_round: RoundCallback | None = None,
        poll_interval: float = 0.005,
        max_poll_interval: float = 0.1,
        active_results: str | Path | None = None,
    ) -> None:
        if cfg.method.name in INPROCESS_ONLY:
            raise ConfigError(f"method '{cfg.method.name}' needs every party's raw data in one place; it exists only "
                              "in simulation: run it with engine=inprocess")
        if timeout <= 0 or wait_for_nodes <= 0:
            raise ConfigError("timeout and wait_for_nodes must be > 0 seconds")
        if not 0 < poll_interval <= max_poll_interval:
            raise ConfigError("need 0 < poll_interval <= max_poll_interval (seconds)")
        optional.check_accounting(cfg)  # a missing Opacus (the dp extra) fails here, in one line
        privacy.noise_multiplier(cfg)  # an unreachable privacy.target_epsilon fails here, before any message
        privacy.gradient_noise_multiplier(cfg)  # ... and an unreachable defence.target_epsilon
        self.cfg = cfg
        self.timeout, self.wait_for_nodes = float(timeout), float(wait_for_nodes)
        self.on_round = on_round
        self.poll_interval, self.max_poll_interval = poll_interval, max_poll_interval
        self.history: list[dict[str, float]] = []
        self.local_history: list[dict[str, float]] = []  # one record per round when an exchange trains several
        self.results: dict[str, Any] | None = None
        self.parties: list[PartyNode] = []  # the active party first, then passives 1..K
        self.setup_traffic = Traffic()
        self.last_checkpoint = 0  # round of the last complete checkpoint (0: none)
        self.transit: dict[int, bytes] = {}  # what the last active reply sealed for each passive's next exchange
        self.active_results = None if active_results is None else Path(active_results)
        self.server_metrics = "full"  # the active party's metrics policy, as it says at discovery
        self.setups: dict[int, PassiveSetup] = {}  # PSI step 4 of each passive, sent with the first exchange
        self.current: Exchange | None = None

    def summary(self) -> None:
        """Log the run's settings; the first call a Flower strategy wrapper makes (its ``start``), so it is
        refused there, before any message is sent."""
        if _wrapper_calling(self, "summary") is not None:
            raise _refuse(self, "summary")
        c = self.cfg
        overlap = ("aligned users: as PSI finds them in the files" if c.dataset.name == "csv"
                   else f"aligned_fraction={c.dataset.aligned_fraction}")
        log.info("VerticalProtoStrategy: method=%s dataset=%s passives=%d %s rounds=%d in %d exchange(s)",
                 c.method.name, c.dataset.name, c.dataset.num_passive, overlap, c.num_rounds, exchanges.count(c))

    # ------------------------------------------------------------------ who is who
    @property
    def active(self) -> PartyNode:
        return self.parties[0]

    @property
    def joint(self) -> list[PartyNode]:
        """The passives that train with the active party (none for ``local``)."""
        return self.parties[1:] if proto.is_joint(self.cfg) else []

    @property
    def num_classes(self) -> int:
        return int(self.active.info["num-classes"])

    def aligned(self) -> dict[str, int]:
        """Users every party holds, per split (known after PSI)."""
        return {s: int(self.active.info[messages.split_key(messages.ALIGNED, s)]) for s in SPLITS}

    def message(self, party: PartyNode, mtype: str, content: Any, *, group: str | int, work: int = 1) -> Message:
        """A message to ``party`` whose lifetime covers its deadline (``work`` rounds of ``timeout``)."""
        return make_message(party, mtype, content, group=group, timeout=self.timeout * max(work, 1))

    def party_of(self, reply: Message) -> PartyNode:
        """The party a reply came from (by its source node)."""
        for p in self.parties:
            if p.node_id == reply.metadata.src_node_id:
                return p
        raise ProtocolError(f"a reply from node {reply.metadata.src_node_id}, which is no party of this run")

    # ------------------------------------------------------------------ set-up hooks
    def configure_discovery(self, nodes: list[PartyNode], resume_round: int | None) -> list[Message]:
        """Ask every node who it is (and, to resume, to restore its checkpoint of ``resume_round``)."""
        probe = messages.encode_probe(Probe(fingerprint=config_fingerprint(self.cfg), version=__version__,
                                            resume_round=resume_round))
        return [self.message(n, messages.DISCOVER, probe, group="discovery") for n in nodes]

    def aggregate_discovery(self, nodes: list[PartyNode], replies: Replies, resume_round: int | None
                            ) -> dict[str, dict[str, bytes]]:
        """Require exactly one active party and passives 1..K (sets ``parties``); return each party's blinded IDs
        (PSI step 1, riding with discovery; none when resuming)."""
        need = self.cfg.dataset.num_passive + 1
        if len(replies) < need:
            gone = [n.node_id for n in nodes if n.name not in replies]
            raise ProtocolError(f"only {len(replies)} of {need} SuperNodes answered discovery within "
                                f"{self.timeout:g} s; nodes {gone} are unavailable or silent")
        found: list[tuple[PartyNode, proto.Discovered, Message]] = []
        for n in (n for n in nodes if n.name in replies):
            info = messages.decode_discovered(replies[n.name].content, n.name)
            public, static = messages.keys_in(replies[n.name].content)
            party = PartyNode(n.node_id, info.role, info.index, {
                "embedding-dim": info.embedding_dim,
                **{messages.split_key(messages.ROWS, s): r for s, r in info.rows.items()},
                **{k: v for k, v in ((messages.SEAL_KEY, public), (messages.SEAL_STATIC, static)) if v is not None}})
            found.append((party, info, replies[n.name]))
        self.parties = self._identify([p for p, _, _ in found])
        active_reply = next(r for p, _, r in found if p.role == proto.ACTIVE)
        self.server_metrics = str(messages.config_in(active_reply.content).get(messages.SERVER_METRICS, "full"))
        if resume_round is not None:
            return {}
        return {p.name: messages.discovered_points(reply.content, info) for p, info, reply in found}

    def configure_psi(self, points: dict[str, dict[str, bytes]]) -> list[Message]:
        """PSI step 2, on all parties at once: each passive re-blinds the active party's points while the active
        party blinds every passive's."""
        active, passives = self.active, self.parties[1:]
        hub = messages.encode_hub_points(points[active.name], _keys(active))
        blind = messages.encode_blind_request({p.index: points[p.name] for p in passives},
                                              {p.index: _keys(p) for p in passives})
        return [*(self.message(p, messages.PSI_PEER, hub, group="PSI (blinding)") for p in passives),
                self.message(active, messages.PSI_BLIND, blind, group="PSI (blinding)")]

    def aggregate_psi(self, replies: Replies) -> dict[int, dict[str, bytes]]:
        """Each passive's re-blinding of the active party's points, by passive index."""
        return {p.index: messages.decode_reblinded(replies[p.name].content, p.name) for p in self.parties[1:]}

    def configure_intersection(self, reblinded: dict[int, dict[str, bytes]]) -> list[Message]:
        """PSI step 3, to the active party: every passive's re-blinding and embedding dimension."""
        finish = messages.encode_finish_request(reblinded, [int(p.info["embedding-dim"]) for p in self.parties[1:]])
        return [self.message(self.active, messages.PSI_FINISH, finish, group="PSI (intersection)")]

    def aggregate_intersection(self, replies: Replies) -> dict[int, PassiveSetup]:
        """The active party's intersection (its classes and aligned counts go to ``active.info``); returns each
        passive's PSI step 4, which goes out with its first exchange."""
        result = messages.decode_intersection(replies[self.active.name].content, [p.index for p in self.parties[1:]])
        self.active.info.update({"num-classes": result.num_classes,
                                 **{messages.split_key(messages.ALIGNED, s): n for s, n in result.aligned.items()}})
        return {k: PassiveSetup(positions=pos, num_classes=result.num_classes) for k, pos in result.positions.items()}

    def _identify(self, parties: list[PartyNode]) -> list[PartyNode]:
        """Exactly one active party, passives 1..K, everyone with the configured embedding size."""
        actives = [p for p in parties if p.role == proto.ACTIVE]
        if len(actives) != 1:
            raise ProtocolError(f"exactly one active party is required (node-config role=\"active\"), found "
                                f"{len(actives)}: nodes {[p.node_id for p in actives]}")
        passives = sorted((p for p in parties if p.role == proto.PASSIVE), key=lambda p: p.index)
        want = list(range(1, self.cfg.dataset.num_passive + 1))
        if [p.index for p in passives] != want:
            raise ProtocolError(f"expected passive parties with party-index {want} (dataset.num_passive="
                                f"{len(want)}), found {[p.index for p in passives]} on nodes "
                                f"{[p.node_id for p in passives]}")
        want_dim = self.cfg.model.embedding_dim
        for p in [actives[0], *passives]:
            if p.info["embedding-dim"] != want_dim:
                raise ProtocolError(f"{p.label} reports embedding dimension {p.info['embedding-dim']!r}, but "
                                    f"model.embedding_dim={want_dim}; every party must run with the same model config")
        return [actives[0], *passives]

    def _discover(self, relay: Relay, resume_round: int | None = None) -> dict[str, dict[str, bytes]]:
        need = self.cfg.dataset.num_passive + 1
        nodes = relay.nodes(need, f"one active party + dataset.num_passive={need - 1} passive parties")
        sent = self.configure_discovery(nodes, resume_round)
        replies = relay.send_and_receive(sent, nodes, "discovery", tolerate_gone=True)
        points = self.aggregate_discovery(nodes, replies, resume_round)
        down = {m.metadata.dst_node_id: m.content for m in sent}
        up = {n.node_id: replies[n.name].content for n in nodes if n.name in replies}
        for p in self.parties:
            self.setup_traffic.add(p.name, down[p.node_id], up[p.node_id])
        return points

    def _psi(self, relay: Relay, points: dict[str, dict[str, bytes]]) -> dict[int, PassiveSetup]:
        """ECDH-PSI per split, relayed: the server forwards blinded points, never IDs."""
        t = self.setup_traffic
        step2 = relay.send_and_receive(self.configure_psi(points), self.parties, "PSI (blinding)", traffic=t)
        reblinded = self.aggregate_psi(step2)
        fin = relay.send_and_receive(self.configure_intersection(reblinded), self.parties, "PSI (intersection)",
                                     traffic=t)
        return self.aggregate_intersection(fin)

    # ------------------------------------------------------------------ exchange hooks
    def configure_passives(self, server_round: int) -> list[Message]:
        """The passive phase: every joint passive's message: the round's flags (its PSI step 4 in exchange 1) and
        what the active party sealed for it last exchange (gradients, prototypes, gate, test-rows flag)."""
        setups = self.setups if server_round == 1 else {}
        out = []
        for p in self.joint:
            flags = proto.ToPassive(round=server_round, splits=proto.eval_splits(self.cfg, server_round),
                                    final=server_round == exchanges.count(self.cfg), setup=setups.get(p.index))
            sealed = {messages.SEALED: self.transit[p.index]} if p.index in self.transit else {}
            content = messages.with_sealed(messages.encode_to_passive(flags), sealed)
            out.append(self.message(p, messages.TRAIN, content, group=server_round))
        return out

    def aggregate_passives(self, server_round: int, replies: Replies) -> dict[int, bytes]:
        """Every joint passive's sealed reply (its embeddings and metrics, for the active party's eyes only), by
        passive index; the server can check only that it is there."""
        where = f"training of round {server_round}"
        return {p.index: messages.sealed_in(replies[p.name].content, [messages.SEALED], p.name, where,
                                            overhead=sealing.OVERHEAD)[messages.SEALED] for p in self.joint}

    def configure_active(self, server_round: int, passives: dict[int, bytes]) -> list[Message]:
        """The active phase: the round's flags and every passive's sealed reply; its deadline is ``timeout`` per
        round the exchange trains."""
        flags = proto.ToActive(round=server_round, splits=proto.eval_splits(self.cfg, server_round),
                               final=server_round == exchanges.count(self.cfg), embeddings=[], eval_embeddings=[])
        content = messages.with_sealed(messages.encode_to_active(flags),
                                       {messages.passive_key(k, messages.SEALED): b for k, b in passives.items()})
        return [self.message(self.active, messages.TRAIN, content, group=server_round,
                             work=len(exchanges.rounds_of(self.cfg, server_round)))]

    def aggregate_active(self, server_round: int, replies: Replies) -> FromActive:
        """The active party's reply: the metrics its policy reports (``progress``: none derived from a label; in
        simulation, with ``active_results``, the rest is read back from the active party's own record). What each
        passive gets next exchange, sealed, and the passives' metrics go to ``current.sealed`` and
        ``current.passive_metrics`` (the exchange's loop then keeps the former in ``transit``)."""
        cfg, where = self.cfg, f"training of round {server_round}"
        content = replies[self.active.name].content
        final = server_round == exchanges.count(cfg)
        keys = [] if final else [messages.passive_key(p.index, messages.SEALED) for p in self.joint]
        sealed = messages.sealed_in(content, keys, proto.ACTIVE, where, overhead=sealing.OVERHEAD)
        metrics = dict(messages.check_metrics(content, proto.ACTIVE, where))
        if self.server_metrics != "full" and self.active_results is not None:
            kept = ledger.read(self.active_results).get(server_round)
            if kept is None:
                raise ProtocolError(f"active: no record of round {server_round} in {self.active_results} "
                                    f"(runner's read-back of the active party's results)")
            metrics.update(kept)
        reply = messages.decode_active_metrics(metrics, where, earlier=exchanges.rounds_of(cfg, server_round)[:-1])
        joint = len(self.joint)
        passive_metrics = [FromPassive(embeddings=np.zeros((0, 0), np.float32), eval_embeddings={}, metrics=m)
                           for m in messages.passive_metrics_of(metrics, joint)]
        if self.current is not None and self.current.round == server_round:
            self.current.passive_metrics = passive_metrics
            self.current.sealed = {p.index: sealed[messages.passive_key(p.index, messages.SEALED)]
                                   for p in self.joint if not final}
        return reply

    def exchange_record(self, server_round: int, exchange: Exchange) -> dict[str, float]:
        """Exchange ``server_round``'s record, once both phases are aggregated: flat ``active/``, ``passive<k>/``,
        ``val/``, ``test/``, ``privacy/`` and traffic keys, the same as the in-process engine's plus the traffic.
        What ``history``, ``on_round``, ``results.json`` and Flower's ``Result`` get: add a metric here."""
        assert exchange.active is not None, "exchange_record runs after aggregate_active"
        return proto.record(self.cfg, server_round, exchange.passive_metrics, exchange.active,
                            time.perf_counter() - exchange.started,
                            extra={"messages": exchange.traffic.messages,
                                   **{f"bytes/{k}": v for k, v in exchange.traffic.bytes.items()}})

    # ------------------------------------------------------------------ Flower's hooks: refused
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Refused: an exchange is two phases, not Flower's one train round (see :func:`_refuse`)."""
        raise _refuse(self, "configure_train")

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Refused, as :meth:`configure_train`."""
        raise _refuse(self, "aggregate_train")

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Refused: evaluation rides with the active phase (its ``val/`` and ``test/`` metrics are in the
        exchange's record, and in ``Result.evaluate_metrics_clientapp``)."""
        raise _refuse(self, "configure_evaluate")

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Refused, as :meth:`configure_evaluate`."""
        raise _refuse(self, "aggregate_evaluate")

    # ------------------------------------------------------------------ one exchange
    def _exchange(self, relay: Relay, rnd: int) -> dict[str, float]:
        """One pipelined exchange, exactly as ``run_inprocess``: the passive phase, then the active phase, each
        configure -> send/receive -> aggregate; then its record. The exchange's rounds go to ``local_history``;
        last exchange's test scores, when they come with this one, go into ``history[-1]``."""
        ex = self.current = Exchange(rnd)
        replies = self._send(relay, self.configure_passives(rnd), proto.PASSIVE, ex)
        ex.passives = self.aggregate_passives(rnd, replies)
        replies = self._send(relay, self.configure_active(rnd, ex.passives), proto.ACTIVE, ex)
        ex.active = self.aggregate_active(rnd, replies)
        record = self.exchange_record(rnd, ex)
        self.transit = ex.sealed
        proto.add_previous_test(self.history, ex.active)
        self.local_history.extend(proto.local_records(self.cfg, rnd, ex.active))
        return record

    def _send(self, relay: Relay, sent: list[Message], phase: str, ex: Exchange) -> dict[str, Message]:
        """Send one phase's messages and wait for every reply (by party name); the active phase's deadline is
        ``timeout`` per round the exchange trains. No messages (``local``'s passive phase): no replies."""
        if not sent:
            return {}
        work = len(exchanges.rounds_of(self.cfg, ex.round)) if phase == proto.ACTIVE else 1
        return relay.send_and_receive(sent, self.parties, PHASES[phase], rnd=ex.round, traffic=ex.traffic, work=work)

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_to_resume(self) -> dict[str, Any] | None:
        """The server state of the last complete checkpoint when resuming (sets ``last_checkpoint``), else None."""
        self.last_checkpoint = 0
        if self.cfg.checkpoint.every and self.cfg.checkpoint.dir is None:
            raise ConfigError("checkpoint.every > 0 needs checkpoint.dir (the server's files go to <dir>/server)")
        if not self.cfg.resume:
            return None
        self.last_checkpoint = ck.latest_server_round(self.cfg)
        return ck.load_server_state(self.cfg, self.last_checkpoint)

    def _restore(self, saved: dict[str, Any]) -> dict[int, bytes]:
        """History and party facts from the server's checkpoint; returns the sealed payloads in transit."""
        for p in self.parties:
            p.info.update(saved["party-info"].get(p.name, {}))
        self.history = list(saved["history"])
        self.local_history = list(saved.get(ck.LOCAL_HISTORY, []))
        index = {proto.party_name(proto.PASSIVE, k): k for k in range(1, self.cfg.dataset.num_passive + 1)}
        return {index[n]: ck.array(t).tobytes() for n, t in saved.get(SEALED_IN_TRANSIT, {}).items()}

    def _save_checkpoint(self, rnd: int, transit: dict[int, bytes]) -> None:
        """The server's part of round ``rnd``'s checkpoint: history and the sealed payloads the next round relays."""
        info = {p.name: {k: v for k, v in p.info.items() if k.startswith(messages.ALIGNED + ".") or k == "num-classes"}
                for p in self.parties}
        sealed = {proto.party_name(proto.PASSIVE, k): ck.tensor(messages.bytes_to_array(b).copy())
                  for k, b in transit.items()}
        ck.save(ck.server_dir(self.cfg), rnd, ck.server_checkpoint(self.cfg, rnd, self.history, NOTHING_IN_CLEAR,
                                                                   **{"party-info": info, SEALED_IN_TRANSIT: sealed,
                                                                      ck.LOCAL_HISTORY: self.local_history}))
        self.last_checkpoint = rnd

    def _recover(self, relay: Relay) -> dict[int, bytes]:
        """After a failed round: re-discover the nodes (a restarted SuperNode is a new node) and restore everyone."""
        saved = ck.load(ck.server_dir(self.cfg), self.last_checkpoint, ck.SERVER)
        self._discover(relay, self.last_checkpoint)
        return self._restore(saved)

    def _retry_or_raise(self, err: ProtocolError, retries: int) -> int:
        """Use one retry from the last checkpoint (returns the retries left), or stop naming that checkpoint."""
        if self.last_checkpoint and retries > 0:
            log.warning("%s; continuing from the checkpoint of round %d (%d retr%s left)", err, self.last_checkpoint,
                        retries - 1, "y" if retries == 2 else "ies")
            time.sleep(min(5.0, self.wait_for_nodes))  # give a restarted SuperNode a moment to connect
            return retries - 1
        if self.last_checkpoint:
            raise ProtocolError(f"{err}. The last complete checkpoint is round {self.last_checkpoint} in "
                                f"{self.cfg.checkpoint.dir}: rerun with resume=true to continue from it") from None
        raise err

    # ------------------------------------------------------------------ the run
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord | None = None,
        num_rounds: int | None = None,
        timeout: float | None = None,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Set up (discovery, PSI) and train ``num_rounds`` rounds (default ``cfg.num_rounds``) in their exchanges.

        Flower's own signature, widened: ``initial_arrays`` may be left out and ``num_rounds`` / ``timeout`` default
        to the config's and the constructor's (a type-compatible override). ``initial_arrays``, ``train_config``,
        ``evaluate_config`` and ``evaluate_fn`` exist for compatibility with Flower's strategies: in vertical FL each
        party initialises and keeps its own model and the server holds no model to evaluate, so they must be left
        unset (or empty).
        """
        if initial_arrays or train_config or evaluate_config or evaluate_fn is not None:
            raise ValueError("VerticalProtoStrategy has no global model: leave initial_arrays, train_config, "
                             "evaluate_config and evaluate_fn unset (configure the run through Config)")
        if num_rounds is not None and num_rounds != self.cfg.num_rounds:
            self.cfg = dataclasses.replace(self.cfg, num_rounds=int(num_rounds))
        if timeout is not None:
            self.timeout = float(timeout)
        self.summary()
        relay = Relay(grid, timeout=self.timeout, wait_for_nodes=self.wait_for_nodes,
                      poll_interval=self.poll_interval, max_poll_interval=self.max_poll_interval)
        t_setup = time.perf_counter()
        saved = self._checkpoint_to_resume()
        start = self.last_checkpoint
        points = self._discover(relay, start or None)
        self.history, self.local_history, self.current = [], [], None
        if saved is None:
            self.setups, self.transit = self._psi(relay, points), {}
        else:  # every party restored itself in discovery; PSI's outcome is part of their state
            self.setups, self.transit = {}, self._restore(saved)
            log.info("resumed from the checkpoint of round %d in %s", start, self.cfg.checkpoint.dir)
        setup_seconds = time.perf_counter() - t_setup
        log.info("setup done in %.1f s: %s", setup_seconds,
                 ", ".join(f"{p.name}=node {p.node_id}" for p in self.parties))
        self._train(relay, start + 1)
        self.results = self._results(setup_seconds, start)
        return self._flower_result()

    def _train(self, relay: Relay, first: int) -> None:
        """Exchanges ``first..``; a failed one is retried from the last checkpoint when allowed."""
        cfg, rnd, retries, recover = self.cfg, first, self.cfg.checkpoint.retries, False
        while rnd <= exchanges.count(cfg):
            try:
                if recover:
                    recover = False
                    self.transit, rnd = self._recover(relay), self.last_checkpoint + 1
                    continue
                rec = self._exchange(relay, rnd)
            except ProtocolError as err:
                retries, recover = self._retry_or_raise(err, retries), True
                continue
            self.history.append(rec)
            if ck.due(cfg, rnd):  # every party wrote its file before it replied: this one completes the checkpoint
                self._save_checkpoint(rnd, self.transit)
            log.info(format_round(rec, cfg.num_rounds))
            if self.on_round is not None:
                self.on_round(rec)
            rnd += 1

    def _results(self, setup_seconds: float, start: int) -> dict[str, Any]:
        rows = {p.name: {s: int(p.info[messages.split_key(messages.ROWS, s)]) for s in SPLITS} for p in self.parties}
        found = proto.alignment_record(self.aligned(), rows)
        return build_results(self.cfg, self.history, local_rounds=self.local_history, extra={
            **privacy_summary(self.cfg, self.history), **defences.defence_summary(self.cfg, self.history),
            "alignment": found, "flower": {
                "server_metrics": self.server_metrics,  # the active party's policy: under progress, no scores here
                "setup_seconds": setup_seconds,
                **({"resumed_from_round": start} if start else {}),
                "setup_messages": self.setup_traffic.messages,
                "setup_bytes": self.setup_traffic.bytes,
                "parties": [{"name": p.name, "node_id": p.node_id,
                             **{k: v for k, v in p.info.items()
                                if k.startswith((messages.ROWS + ".", messages.ALIGNED + "."))}}
                            for p in self.parties],
            }})

    def _flower_result(self) -> Result:
        """The history as Flower's :class:`Result`: each exchange's party metrics, and its ``val/`` and ``test/``
        metrics where it scored any (test scores that came with the next exchange, ``eval_test=best``, included)."""
        result = Result()
        for rec in self.history:
            rnd = int(rec["round"])
            result.train_metrics_clientapp[rnd] = MetricRecord(
                {k: v for k, v in rec.items() if k.startswith(("active/", "passive"))})
            evals = {k: v for k, v in rec.items() if k.startswith(("val/", "test/"))}
            if evals:
                result.evaluate_metrics_clientapp[rnd] = MetricRecord(evals)  # type: ignore[arg-type]
        return result


SEALED_IN_TRANSIT = "sealed"  # the server's checkpoint: each passive's sealed payload for the next exchange
# The checkpoint's clear transit: nothing (the payloads in transit are sealed).
NOTHING_IN_CLEAR: dict[str, Any] = {"gradients": {}, "prototypes": {}, "prototype-mask": None}


def _keys(party: PartyNode) -> dict[str, bytes]:
    """A party's public keys as it sent them at discovery, to relay to its peers."""
    return {k: party.info[k] for k in (messages.SEAL_KEY, messages.SEAL_STATIC) if k in party.info}


HOOKS = ("configure_passives / aggregate_passives (the passive phase), configure_active / aggregate_active (the "
         "active phase) or exchange_record (the exchange's record)")


def _refuse(strategy: VerticalProtoStrategy, hook: str) -> TypeError:
    """The one-line refusal of Flower's ``hook``, naming the strategy wrapper that called it, if one did.

    Why refuse: Flower's ``configure_train`` -> send/receive -> ``aggregate_train`` is one round trip around a
    global model; an exchange here is two round trips (the passives, then the active party) and no party sends
    arrays to aggregate, so Flower's loop cannot drive it and a wrapper (differential privacy's clipping, say) has
    nothing to clip. :meth:`VerticalProtoStrategy.start` runs the exchange hooks itself.
    """
    wrapper = _wrapper_calling(strategy, hook)
    if wrapper is not None:
        return TypeError(f"{type(wrapper).__name__} cannot wrap {type(strategy).__name__}: it works on a global "
                         "model's arrays, and in vertical FL there is none (each party keeps its own model, the "
                         "server relays sealed embeddings); call strategy.start(grid=grid) on the strategy itself "
                         "and protect labels with its defence.* / privacy.* options")
    return TypeError(f"{type(strategy).__name__} does not use Flower's {hook}: an exchange is a passive phase then "
                     f"an active phase, run by start(); override {HOOKS} instead")


def _wrapper_calling(strategy: VerticalProtoStrategy, hook: str) -> Strategy | None:
    """The Flower strategy whose method called ``strategy.<hook>`` (past ``super()`` chains of ``hook``): a wrapper
    delegating to it (``self.strategy.configure_train(...)``); ``None`` when the caller is no other strategy (this
    strategy's own :meth:`~VerticalProtoStrategy.start`, your code, or a strategy of yours that calls ``start``)."""
    frame, inside = inspect.currentframe(), False
    while frame is not None:
        own = frame.f_locals.get("self") is strategy and frame.f_code.co_name == hook
        if inside and not own:
            caller = frame.f_locals.get("self")
            return caller if isinstance(caller, Strategy) and caller is not strategy else None
        inside = inside or own
        frame = frame.f_back
    return None
