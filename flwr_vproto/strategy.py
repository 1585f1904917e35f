"""``VerticalProtoStrategy``: the server side of vertical federated learning with prototypes (design §4).

It subclasses Flower's message-API :class:`~flwr.serverapp.strategy.Strategy` and overrides :meth:`start`, so a
user runs it like ``FedAvg``: ``strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=...)`` returns a
:class:`~flwr.serverapp.strategy.Result`. Unlike horizontal FL there is no global model to aggregate: the server
only relays payloads between parties, in the same order of calls as :func:`flwr_vproto.inprocess.run_inprocess`,
so both engines produce the same per-round metrics.

Setup (once, three message round trips): discovery (every node: role, party index, sizes; the active party's
blinded IDs ride along) -> the passives re-blind them and blind their own -> the active party intersects per split
and builds its learner; each passive's positions in the shared order ride along with its first round. The server
relays only blinded points, never IDs.
Rounds (pipelined, one message per party per round): passives get last round's gradients and the second
prototypes and reply with this round's embeddings; then the active party gets all embeddings, trains, evaluates on
evaluation rounds, and replies with each passive's next gradients and prototypes.

Every wait has a deadline; an error reply or a missing reply stops the run with :class:`ProtocolError` naming the
party, the phase and the round. Replies are matched by message ID, never by sender: a SuperLink answers for a dead
node from its own node ID.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from flwr_vproto import __version__, privacy
from flwr_vproto import checkpoint as ck
from flwr_vproto import messages as M
from flwr_vproto.config import Config, ConfigError
from flwr_vproto.data.types import SPLITS
from flwr_vproto.inprocess import eval_splits, server_checkpoint
from flwr_vproto.messages import ProtocolError
from flwr_vproto.privacy import privacy_summary
from flwr_vproto.results import build_results, format_round, round_record

log = logging.getLogger("flwr")

RoundCallback = Callable[[dict[str, float]], None]


@dataclass
class PartyNode:
    """A node and the party it plays, as it answered discovery."""

    node_id: int
    role: str
    index: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        if self.role == "node":
            return f"node {self.node_id}"
        return "active" if self.role == "active" else f"passive{self.index}"


@dataclass
class Traffic:
    """Messages and payload bytes of one phase, per party (``<party>/up`` = party to server)."""

    messages: int = 0
    bytes: dict[str, float] = field(default_factory=dict)

    def add(self, party: str, down: RecordDict, up: RecordDict) -> None:
        self.messages += 1
        self.bytes[f"{party}/down"] = self.bytes.get(f"{party}/down", 0.0) + M.payload_bytes(down)
        self.bytes[f"{party}/up"] = self.bytes.get(f"{party}/up", 0.0) + M.payload_bytes(up)


@dataclass
class Relayed:
    """What the server holds between messages: payloads in transit, kept as received (never decoded)."""

    positions: ArrayRecord  # each passive's PSI positions, for its first round
    num_classes: int
    gradients: dict[str, Any] = field(default_factory=dict)  # passive name -> Array of its embedding gradients
    prototypes: ConfigRecord = field(default_factory=ConfigRecord)  # second prototypes of every passive + mask

    def to_passive(self, name: str, rnd: int, flags: dict[str, Any]) -> RecordDict:
        """Passive ``name``'s round message: last round's gradients and its second prototypes, plus the flags."""
        conf = ConfigRecord(flags)
        if f"{name}.prototypes.data" in self.prototypes:
            conf["prototypes.data"] = self.prototypes[f"{name}.prototypes.data"]
            conf["prototypes.shape"] = self.prototypes[f"{name}.prototypes.shape"]
            conf["prototype-mask"] = self.prototypes["prototype-mask"]
        if f"{name}.pseudo-threshold" in self.prototypes:  # method.pseudo_gate
            conf["pseudo-threshold"] = self.prototypes[f"{name}.pseudo-threshold"]
        arrays = ArrayRecord({"gradients": self.gradients[name]} if name in self.gradients else {})
        if rnd == 1:  # PSI step 4 rides along with the first round: the passive's positions, and the classes
            for s in SPLITS:
                arrays[f"positions.{s}"] = self.positions[f"{name}.positions.{s}"]
            conf["num-classes"] = self.num_classes
        return RecordDict({M.CONFIG: conf, M.ARRAYS: arrays})


class VerticalProtoStrategy(Strategy):
    """Drive one vertical federated run (``vproto``, ``vanilla`` or ``local``) over Flower messages.

    ``timeout``: seconds to wait for any one reply; ``wait_for_nodes``: seconds to wait for all ``K + 1``
    SuperNodes to connect; ``on_round``: called with each round's record (e.g. to print progress).
    Replies are polled every ``poll_interval`` seconds, backing off to ``max_poll_interval``: each poll is a call to
    the SuperLink in a deployment, but only a read of in-memory state in simulation, where a short cap saves
    tens of milliseconds per message.
    After :meth:`start`, ``history`` holds the per-round records and ``results`` the content of ``results.json``.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        timeout: float = 600.0,
        wait_for_nodes: float = 120.0,
        on_round: RoundCallback | None = None,
        poll_interval: float = 0.005,
        max_poll_interval: float = 0.1,
    ) -> None:
        if cfg.method.name == "centralized":
            raise ConfigError("method 'centralized' needs every party's raw data in one place; it exists only "
                              "in simulation: run it with engine=inprocess")
        if timeout <= 0 or wait_for_nodes <= 0:
            raise ConfigError("timeout and wait_for_nodes must be > 0 seconds")
        if not 0 < poll_interval <= max_poll_interval:
            raise ConfigError("need 0 < poll_interval <= max_poll_interval (seconds)")
        privacy.noise_multiplier(cfg)  # an unreachable privacy.target_epsilon fails here, before any message
        self.cfg = cfg
        self.timeout = float(timeout)
        self.wait_for_nodes = float(wait_for_nodes)
        self.on_round = on_round
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.history: list[dict[str, float]] = []
        self.results: dict[str, Any] | None = None
        self.parties: list[PartyNode] = []
        self.setup_traffic = Traffic()
        self.last_checkpoint = 0  # round of the last complete checkpoint (0: none)

    # ------------------------------------------------------------------ Flower's abstract API (not used by start)
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        raise NotImplementedError("VerticalProtoStrategy runs its own message protocol in start()")

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        raise NotImplementedError("VerticalProtoStrategy runs its own message protocol in start()")

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        raise NotImplementedError("VerticalProtoStrategy runs its own message protocol in start()")

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        raise NotImplementedError("VerticalProtoStrategy runs its own message protocol in start()")

    def summary(self) -> None:
        c = self.cfg
        log.info("VerticalProtoStrategy: method=%s dataset=%s passives=%d aligned_fraction=%s rounds=%d",
                 c.method.name, c.dataset.name, c.dataset.num_passive, c.dataset.aligned_fraction, c.num_rounds)

    # ------------------------------------------------------------------ messaging
    def _exchange(
        self, grid: Grid, sends: list[tuple[PartyNode, str, RecordDict]], phase: str, rnd: int | None = None,
        traffic: Traffic | None = None, tolerate_gone: bool = False,
    ) -> dict[str, Message]:
        """Send one message to each party and wait for every reply; return replies by party name.

        ``tolerate_gone``: a node the SuperLink reports unavailable, or that stays silent until the deadline, is
        left out of the replies instead of stopping the run (discovery: a killed SuperNode stays listed as online
        until its heartbeats expire, up to a minute, next to the one restarted in its place).
        """
        where = f"{phase}" + (f" of round {rnd}" if rnd is not None else "")
        msgs = [Message(content, p.node_id, mtype, group_id=str(rnd if rnd is not None else phase),
                        ttl=self.timeout + 60.0) for p, mtype, content in sends]
        ids = list(grid.push_messages(msgs))
        if len(ids) != len(msgs) or not all(ids):
            lost = ([p.name for (p, _, _), i in zip(sends, ids, strict=True) if not i] if len(ids) == len(msgs)
                    else [p.name for p, _, _ in sends])
            raise ProtocolError(f"could not deliver the {where} message to {', '.join(lost)}")
        pending = {mid: (p, content) for mid, (p, _, content) in zip(ids, sends, strict=True)}
        replies: dict[str, Message] = {}
        deadline = time.monotonic() + self.timeout
        delay = self.poll_interval
        while pending:
            for reply in grid.pull_messages(list(pending)):
                sent = pending.pop(reply.metadata.reply_to_message_id, None)
                if sent is None:
                    continue
                party, content = sent
                if reply.has_error() and tolerate_gone and reply.metadata.src_node_id != party.node_id:
                    log.warning("%s: the SuperLink reports node %d unavailable (%s); leaving it out", where,
                                party.node_id, reply.error.reason)
                    continue
                if reply.has_error():
                    who = party.name if party.role == "node" else f"{party.name} (node {party.node_id})"
                    raise ProtocolError(f"{who} failed during {where}: "
                                        f"{reply.error.reason} (error code {reply.error.code})")
                replies[party.name] = reply
                if traffic is not None:
                    traffic.add(party.name, content, reply.content)
            if not pending:
                break
            if time.monotonic() > deadline and tolerate_gone:
                log.warning("%s: no reply from node(s) %s within %g s; leaving them out", where,
                            [p.node_id for p, _ in pending.values()], self.timeout)
                break
            if time.monotonic() > deadline:
                missing = ", ".join(p.name if p.role == "node" else f"{p.name} (node {p.node_id})"
                                    for p, _ in pending.values())
                raise ProtocolError(f"no reply from {missing} during {where} within {self.timeout:g} s "
                                    f"(raise the timeout if a party needs longer)")
            time.sleep(delay)
            delay = min(delay * 1.5, self.max_poll_interval)
        log.debug("%s: %d message(s) in %.2f s", where, len(sends), time.monotonic() - deadline + self.timeout)
        return replies

    def _nodes(self, grid: Grid) -> list[int]:
        """All connected nodes, once at least K + 1 are there (deployments connect at their own pace)."""
        need = self.cfg.dataset.num_passive + 1
        deadline = time.monotonic() + self.wait_for_nodes
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= need:
                return nodes
            if time.monotonic() > deadline:
                raise ProtocolError(f"only {len(nodes)} of {need} SuperNodes connected within "
                                    f"{self.wait_for_nodes:g} s (one active party + dataset.num_passive="
                                    f"{need - 1} passive parties)")
            time.sleep(0.5)

    # ------------------------------------------------------------------ setup
    def _discover(self, grid: Grid, resume_round: int | None = None
                  ) -> tuple[PartyNode, list[PartyNode], dict[str, Message]]:
        """Ask every node who it is; require exactly one active party and passives 1..K.

        Returns the replies by party name too: they already carry each party's blinded IDs (PSI step 1). With
        ``resume_round`` every party instead restores itself from its own checkpoint of that round.
        """
        nodes = [PartyNode(n, "node", n) for n in self._nodes(grid)]  # named by node ID until they answer
        probe_conf = ConfigRecord({"fingerprint": M.config_fingerprint(self.cfg), "version": __version__})
        if resume_round is not None:
            probe_conf["resume-round"] = resume_round
        probe = RecordDict({M.CONFIG: probe_conf})
        sends = [(n, M.DISCOVER, probe) for n in nodes]
        replies = self._exchange(grid, sends, "discovery", tolerate_gone=True)
        need = self.cfg.dataset.num_passive + 1
        if len(replies) < need:
            gone = [n.node_id for n in nodes if n.name not in replies]
            raise ProtocolError(f"only {len(replies)} of {need} SuperNodes answered discovery within "
                                f"{self.timeout:g} s; nodes {gone} are unavailable or silent")
        nodes = [n for n in nodes if n.name in replies]
        parties = []
        for n in nodes:
            M.check_config(replies[n.name].content.get(M.CONFIG), {"role": str, "party-index": int,
                                                                  "embedding-dim": int}, n.name, "discovery")
            info = dict(replies[n.name].content[M.CONFIG])
            parties.append(PartyNode(n.node_id, str(info["role"]), int(info["party-index"]), info))  # type: ignore
            self.setup_traffic.add(parties[-1].name, probe, replies[n.name].content)
        actives = [p for p in parties if p.role == "active"]
        if len(actives) != 1:
            raise ProtocolError(f"exactly one active party is required (node-config role=\"active\"), found "
                                f"{len(actives)}: nodes {[p.node_id for p in actives]}")
        passives = sorted((p for p in parties if p.role == "passive"), key=lambda p: p.index)
        want = list(range(1, self.cfg.dataset.num_passive + 1))
        if [p.index for p in passives] != want:
            raise ProtocolError(f"expected passive parties with party-index {want} (dataset.num_passive="
                                f"{len(want)}), found {[p.index for p in passives]} on nodes "
                                f"{[p.node_id for p in passives]}")
        self.parties = [actives[0], *passives]
        want_dim = self.cfg.model.embedding_dim
        for p in self.parties:
            dim = p.info.get("embedding-dim")
            if dim != want_dim:
                raise ProtocolError(f"{p.name} (node {p.node_id}) reports embedding dimension {dim!r}, but "
                                    f"model.embedding_dim={want_dim}; every party must run with the same model config")
        by_name = {p.name: replies[f"node {p.node_id}"] for p in self.parties}
        if resume_round is None:
            M.check_arrays(by_name["active"].content.get(M.ARRAYS), {f"hub.{s}": ("uint8", (-1,)) for s in SPLITS},
                           "active", "discovery")
            for p in passives:
                M.check_arrays(by_name[p.name].content.get(M.ARRAYS), {f"own.{s}": ("uint8", (-1,)) for s in SPLITS},
                               p.name, "discovery")
        return actives[0], passives, by_name

    def _psi(self, active: PartyNode, passives: list[PartyNode], replies: dict[str, Message], grid: Grid
             ) -> ArrayRecord:
        """ECDH-PSI per split, relayed: the server forwards blinded points, never IDs.

        Every party blinded its own IDs during discovery (step 1). Step 2 runs on all parties at once: each passive
        re-blinds the active party's points while the active party blinds every passive's points; step 3 (matching,
        the shared order) is the active party's alone. Returns each passive's positions into its own sent order,
        which go out with its first round.
        """
        t = self.setup_traffic
        hub = replies[active.name].content[M.ARRAYS]
        own = ArrayRecord()
        for p in passives:
            for key, arr in replies[p.name].content[M.ARRAYS].items():
                own[f"{p.name}.{key}"] = arr
        conf = ConfigRecord({"passives": [p.index for p in passives]})
        step2 = self._exchange(
            grid,
            [(p, M.PSI_PEER, RecordDict({M.ARRAYS: hub})) for p in passives]
            + [(active, M.PSI_BLIND, RecordDict({M.ARRAYS: own, M.CONFIG: conf}))],
            "PSI (blinding)", traffic=t,
        )
        relay = ArrayRecord()
        for p in passives:
            M.check_arrays(step2[p.name].content.get(M.ARRAYS), {f"reblinded.{s}": ("uint8", (-1,)) for s in SPLITS},
                           p.name, "PSI (blinding)")
            for key, arr in step2[p.name].content[M.ARRAYS].items():
                relay[f"{p.name}.{key}"] = arr
        conf = ConfigRecord({"passives": [p.index for p in passives],
                             "passive-dims": [int(p.info["embedding-dim"]) for p in passives]})  # type: ignore
        fin = self._exchange(grid, [(active, M.PSI_FINISH, RecordDict({M.ARRAYS: relay, M.CONFIG: conf}))],
                             "PSI (intersection)", traffic=t)["active"]
        M.check_config(fin.content.get(M.CONFIG), {"num-classes": int, **{f"aligned.{s}": int for s in SPLITS}},
                       "active", "PSI (intersection)")
        M.check_arrays(fin.content.get(M.ARRAYS), {f"{p.name}.positions.{s}": ("int64", (-1,)) for p in passives
                                                   for s in SPLITS}, "active", "PSI (intersection)")
        active.info.update(dict(fin.content[M.CONFIG]))
        return fin.content[M.ARRAYS]  # type: ignore[return-value]

    @property
    def _joint(self) -> bool:
        return self.cfg.method.name in ("vproto", "vanilla")

    # ------------------------------------------------------------------ one round
    def _round(self, grid: Grid, rnd: int, active: PartyNode, joint: list[PartyNode], relayed: Relayed
               ) -> dict[str, float]:
        """One pipelined round, exactly as ``run_inprocess``: passives first, then the active party."""
        cfg = self.cfg
        t0 = time.perf_counter()
        traffic = Traffic()
        final = rnd == cfg.num_rounds
        flags = {"round": rnd, "eval": bool(eval_splits(cfg, rnd)), "final": final}
        sends = [(p, M.TRAIN, relayed.to_passive(p.name, rnd, flags)) for p in joint]
        outs = self._exchange(grid, sends, "training (passive parties)", rnd, traffic) if sends else {}
        splits = eval_splits(cfg, rnd)
        n = {s: int(active.info[f"aligned.{s}"]) for s in SPLITS}
        where = f"training of round {rnd}"
        for p in joint:
            d = int(p.info["embedding-dim"])
            M.check_arrays(outs[p.name].content.get(M.ARRAYS), {"embeddings": ("float32", (n["train"], d)), **{
                f"embeddings.{s}": ("float32", (n[s], d)) for s in splits}}, p.name, where)
            self._check_metrics(outs[p.name], p.name, where)
        embeddings = ArrayRecord()
        for p in joint:
            for key, arr in outs[p.name].content[M.ARRAYS].items():
                embeddings[f"{p.name}.{key}"] = arr
        content = RecordDict({M.CONFIG: ConfigRecord(flags), M.ARRAYS: embeddings})
        res = self._exchange(grid, [(active, M.TRAIN, content)], "training (active party)", rnd, traffic)["active"]
        self._check_active_reply(res, joint, n["train"], final, where)
        if not final:
            relayed.gradients = {p.name: res.content[M.ARRAYS][f"{p.name}.gradients"] for p in joint}
            relayed.prototypes = res.content[M.CONFIG]  # type: ignore[assignment]
        metrics = res.content[M.METRICS]
        return round_record(
            rnd, M.metrics_of(metrics, "train."), [M.metrics_of(outs[p.name].content[M.METRICS]) for p in joint],
            M.metrics_of(metrics, "val.") or None, M.metrics_of(metrics, "test.") or None, time.perf_counter() - t0,
            extra={**{f"privacy/{k}": v for k, v in M.metrics_of(metrics, "privacy.").items()},
                   "messages": traffic.messages, **{f"bytes/{k}": v for k, v in traffic.bytes.items()}},
        )

    @staticmethod
    def _check_metrics(reply: Message, who: str, where: str) -> None:
        if not isinstance(reply.content.get(M.METRICS), MetricRecord):
            raise ProtocolError(f"{who} sent a bad reply during {where}: no '{M.METRICS}' metric record")

    def _check_active_reply(self, res: Message, joint: list[PartyNode], n_train: int, final: bool, where: str) -> None:
        """Gradients and second prototypes of the right size for every passive, all finite (none after the last)."""
        self._check_metrics(res, "active", where)
        expected = {} if final else {f"{p.name}.gradients": ("float32", (n_train, int(p.info["embedding-dim"])))
                                     for p in joint}
        M.check_arrays(res.content.get(M.ARRAYS), expected, "active", where)
        if final or not joint or not self.cfg.method.shares_prototypes:
            return
        classes = int(self.parties[0].info["num-classes"])
        conf = res.content.get(M.CONFIG)
        for p in joint:
            M.check_matrix(conf, f"{p.name}.prototypes", (classes, int(p.info["embedding-dim"])), "active", where)
        mask = conf.get("prototype-mask")  # type: ignore[union-attr]
        if not isinstance(mask, list) or len(mask) != classes or not all(isinstance(b, bool) for b in mask):
            raise ProtocolError(f"active sent a bad reply during {where}: 'prototype-mask' is not {classes} booleans")
        for p in joint:
            gate = conf.get(f"{p.name}.pseudo-threshold")  # type: ignore[union-attr]
            if gate is not None and (not isinstance(gate, float) or not 0.0 <= gate <= 1.0):
                raise ProtocolError(f"active sent a bad reply during {where}: '{p.name}.pseudo-threshold' is not a "
                                    f"number in [0, 1]")

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_to_resume(self) -> tuple[int, dict[str, Any] | None]:
        """``(round, server state)`` of the last complete checkpoint when resuming, else ``(0, None)``."""
        self.last_checkpoint = 0
        if self.cfg.checkpoint.every and self.cfg.checkpoint.dir is None:
            raise ConfigError("checkpoint.every > 0 needs checkpoint.dir (the server's files go to <dir>/server)")
        if not self.cfg.resume:
            return 0, None
        rnd = ck.latest_server_round(self.cfg)
        saved = ck.load(ck.server_dir(self.cfg), rnd, "server")
        ck.check_same_run(saved["config"], self.cfg, "server", ck.server_dir(self.cfg))
        self.last_checkpoint = rnd
        return rnd, saved

    def _restore(self, saved: dict[str, Any], relayed: Relayed) -> None:
        """History, party facts and the payloads in transit from the server's checkpoint file."""
        for p in self.parties:
            p.info.update(saved["party-info"].get(p.name, {}))
        self.history = list(saved["history"])
        relayed.gradients = {k: Array.from_numpy_ndarray(ck.array(v)) for k, v in saved["gradients"].items()}
        for name, proto in saved["prototypes"].items():
            M.put_matrix(relayed.prototypes, f"{name}.prototypes", ck.array(proto))
        if saved["prototype-mask"] is not None:
            relayed.prototypes["prototype-mask"] = [bool(b) for b in ck.array(saved["prototype-mask"])]
        for k, gate in enumerate(saved.get("pseudo-gates") or [], start=1):
            relayed.prototypes[f"passive{k}.pseudo-threshold"] = float(gate)

    def _save_checkpoint(self, rnd: int, relayed: Relayed) -> None:
        """The server's part of round ``rnd``'s checkpoint: history and the payloads the next round relays."""
        names = [p.name for p in self.parties if p.role == "passive"]
        protos = {n: M.get_matrix(relayed.prototypes, f"{n}.prototypes") for n in names}
        mask = relayed.prototypes.get("prototype-mask")
        gates = [relayed.prototypes.get(f"{n}.pseudo-threshold") for n in names]
        extra = {"pseudo-gates": [float(g) for g in gates]} if gates and all(g is not None for g in gates) else {}
        info = {p.name: {k: v for k, v in p.info.items() if k.startswith("aligned.") or k == "num-classes"}
                for p in self.parties}
        ck.save(ck.server_dir(self.cfg), rnd, server_checkpoint(
            self.cfg, rnd, self.history, {n: g.numpy() for n, g in relayed.gradients.items()}, protos,
            None if mask is None else np.asarray(mask, dtype=bool), **{"party-info": info}, **extra))
        self.last_checkpoint = rnd

    # ------------------------------------------------------------------ the run
    def start(  # type: ignore[override]
        self,
        grid: Grid,
        initial_arrays: ArrayRecord | None = None,
        num_rounds: int | None = None,
        timeout: float | None = None,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Set up (discovery, PSI) and train ``num_rounds`` rounds (default ``cfg.num_rounds``).

        ``initial_arrays``, ``train_config``, ``evaluate_config`` and ``evaluate_fn`` exist for signature
        compatibility with Flower's strategies: in vertical FL each party initialises and keeps its own model and
        the server holds no model to evaluate, so they must be left unset.
        """
        if initial_arrays or train_config or evaluate_config or evaluate_fn is not None:
            raise ValueError("VerticalProtoStrategy has no global model: leave initial_arrays, train_config, "
                             "evaluate_config and evaluate_fn unset (configure the run through Config)")
        if num_rounds is not None and num_rounds != self.cfg.num_rounds:
            self.cfg = dataclasses.replace(self.cfg, num_rounds=int(num_rounds))
        if timeout is not None:
            self.timeout = float(timeout)
        cfg = self.cfg
        self.summary()
        t_setup = time.perf_counter()
        start, saved = self._checkpoint_to_resume()
        active, passives, replies = self._discover(grid, start or None)
        if saved is None:
            positions = self._psi(active, passives, replies, grid)
        else:  # every party restored itself in discovery; PSI's outcome is part of their state
            positions = ArrayRecord()
            for p in self.parties:
                p.info.update(saved["party-info"].get(p.name, {}))  # num-classes, before Relayed needs it
        setup_seconds = time.perf_counter() - t_setup
        log.info("setup done in %.1f s: %s", setup_seconds,
                 ", ".join(f"{p.name}=node {p.node_id}" for p in self.parties))

        result = Result()
        joint = passives if self._joint else []
        relayed = Relayed(positions=positions, num_classes=int(active.info["num-classes"]))  # type: ignore[arg-type]
        self.history = []
        if saved is not None:
            self._restore(saved, relayed)
            log.info("resumed from the checkpoint of round %d in %s", start, cfg.checkpoint.dir)
        retries, recover, rnd = cfg.checkpoint.retries, False, start + 1
        while rnd <= cfg.num_rounds:
            try:
                if recover:  # re-discover the nodes (a restarted SuperNode is a new node) and restore everyone
                    recover, rnd = False, self.last_checkpoint + 1
                    saved = ck.load(ck.server_dir(cfg), self.last_checkpoint, "server")
                    active, passives, _ = self._discover(grid, self.last_checkpoint)
                    joint = passives if self._joint else []
                    relayed = Relayed(positions=ArrayRecord(), num_classes=relayed.num_classes)
                    self._restore(saved, relayed)
                    continue
                rec = self._round(grid, rnd, active, joint, relayed)
            except ProtocolError as err:
                if self.last_checkpoint and retries > 0:
                    retries -= 1
                    recover = True
                    log.warning("%s; continuing from the checkpoint of round %d (%d retr%s left)", err,
                                self.last_checkpoint, retries, "y" if retries == 1 else "ies")
                    time.sleep(min(5.0, self.wait_for_nodes))  # give a restarted SuperNode a moment to connect
                    continue
                if self.last_checkpoint:
                    raise ProtocolError(f"{err}. The last complete checkpoint is round {self.last_checkpoint} in "
                                        f"{cfg.checkpoint.dir}: rerun with resume=true to continue from it") from None
                raise
            self.history.append(rec)
            if ck.due(cfg, rnd):  # every party wrote its file before it replied: this one completes the checkpoint
                self._save_checkpoint(rnd, relayed)
            log.info(format_round(rec, cfg.num_rounds))
            if self.on_round is not None:
                self.on_round(rec)
            rnd += 1
        for rec in self.history:
            rnd = int(rec["round"])
            result.train_metrics_clientapp[rnd] = MetricRecord(
                {k: v for k, v in rec.items() if k.startswith(("active/", "passive"))})
            evals = {k: v for k, v in rec.items() if k.startswith(("val/", "test/"))}
            if evals:
                result.evaluate_metrics_clientapp[rnd] = MetricRecord(evals)

        self.results = build_results(cfg, self.history, extra={**privacy_summary(cfg, self.history), "flower": {
            "setup_seconds": setup_seconds,
            **({"resumed_from_round": start} if start else {}),
            "setup_messages": self.setup_traffic.messages,
            "setup_bytes": self.setup_traffic.bytes,
            "parties": [{"name": p.name, "node_id": p.node_id,
                         **{k: v for k, v in p.info.items() if k.startswith(("rows.", "aligned."))}}
                        for p in self.parties],
        }})
        return result
