"""``VerticalProtoStrategy``: the server side of vertical federated learning with prototypes (design §4).

It subclasses Flower's message-API :class:`~flwr.serverapp.strategy.Strategy` and overrides :meth:`start`, so a
user runs it like ``FedAvg``: ``strategy.start(grid=grid, initial_arrays=ArrayRecord(), num_rounds=...)`` returns a
:class:`~flwr.serverapp.strategy.Result`. Unlike horizontal FL there is no global model to aggregate: the server
only relays the payloads of :mod:`flwr_vproto.protocol` between parties — encode (:mod:`flwr_vproto.messages`) ->
exchange (:mod:`flwr_vproto.relay`) -> decode — in the order :func:`flwr_vproto.inprocess.run_inprocess` calls the
same steps, so both engines produce the same per-round metrics.

Setup (once, three message round trips): discovery (every node: role, party index, sizes; its blinded IDs ride
along) -> the passives re-blind the active party's points while it blinds theirs -> the active party intersects per
split and builds its learner; each passive's positions in the shared order ride along with its first round. The
server relays only blinded points, never IDs.
Exchanges (pipelined, one message per party each; :mod:`flwr_vproto.exchanges` says which rounds each trains, by
default one, and one in all when no passive could ever receive anything): passives get last exchange's gradients
(and the second prototypes when their third loss uses them) and reply with their embeddings; then the active party
gets all embeddings, trains the exchange's rounds on them, evaluates after evaluation rounds, and replies with every
round's metrics and each passive's next gradients. Each exchange is one Flower round: ``history`` and
``results.json``'s ``rounds`` hold one record per exchange, ``local_rounds`` one per round when they differ.

Every wait has a deadline; an error reply or a missing reply stops the run with :class:`ProtocolError` naming the
party, the phase and the round — or, with ``checkpoint.retries``, continues from the last complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from flwr_vproto import __version__, defences, exchanges, privacy
from flwr_vproto import checkpoint as ck
from flwr_vproto import messages as M
from flwr_vproto import protocol as proto
from flwr_vproto.config import Config, ConfigError
from flwr_vproto.data.types import SPLITS
from flwr_vproto.privacy import privacy_summary
from flwr_vproto.protocol import InTransit, PassiveSetup, Probe, ProtocolError
from flwr_vproto.relay import PartyNode, Relay, Traffic
from flwr_vproto.results import build_results, format_round
from flwr_vproto.run_config import config_fingerprint

log = logging.getLogger("flwr")

RoundCallback = Callable[[dict[str, float]], None]


class VerticalProtoStrategy(Strategy):
    """Drive one vertical federated run (``vproto``, ``vanilla`` or ``local``) over Flower messages.

    ``timeout``: seconds to wait for any one reply; ``wait_for_nodes``: seconds to wait for all ``K + 1``
    SuperNodes to connect; ``on_round``: called with each round's record (e.g. to print progress);
    ``poll_interval`` / ``max_poll_interval``: see :class:`~flwr_vproto.relay.Relay`.
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

    def _aligned(self) -> dict[str, int]:
        return {s: int(self.active.info[M.split_key(M.ALIGNED, s)]) for s in SPLITS}

    # ------------------------------------------------------------------ setup
    def _discover(self, relay: Relay, resume_round: int | None = None) -> dict[str, dict[str, bytes]]:
        """Ask every node who it is; require exactly one active party and passives 1..K (sets ``parties``).

        Returns each party's blinded IDs (PSI step 1, riding with discovery). With ``resume_round`` every party
        instead restores itself from its own checkpoint of that round, and nothing is returned.
        """
        need = self.cfg.dataset.num_passive + 1
        nodes = relay.nodes(need, f"one active party + dataset.num_passive={need - 1} passive parties")
        probe = M.encode_probe(Probe(fingerprint=config_fingerprint(self.cfg), version=__version__,
                                     resume_round=resume_round))
        replies = relay.exchange([(n, M.DISCOVER, probe) for n in nodes], "discovery", tolerate_gone=True)
        if len(replies) < need:
            gone = [n.node_id for n in nodes if n.name not in replies]
            raise ProtocolError(f"only {len(replies)} of {need} SuperNodes answered discovery within "
                                f"{relay.timeout:g} s; nodes {gone} are unavailable or silent")
        found: list[tuple[PartyNode, proto.Discovered, Message]] = []
        for n in (n for n in nodes if n.name in replies):
            info = M.decode_discovered(replies[n.name].content, n.name)
            party = PartyNode(n.node_id, info.role, info.index, {
                "embedding-dim": info.embedding_dim, **{M.split_key(M.ROWS, s): r for s, r in info.rows.items()}})
            found.append((party, info, replies[n.name]))
            self.setup_traffic.add(party.name, probe, replies[n.name].content)
        self.parties = self._identify([p for p, _, _ in found])
        if resume_round is not None:
            return {}
        return {p.name: M.discovered_points(reply.content, info) for p, info, reply in found}

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

    def _psi(self, relay: Relay, points: dict[str, dict[str, bytes]]) -> dict[int, PassiveSetup]:
        """ECDH-PSI per split, relayed: the server forwards blinded points, never IDs.

        Step 2 runs on all parties at once: each passive re-blinds the active party's points while the active party
        blinds every passive's points; step 3 (matching, the shared order) is the active party's alone. Returns each
        passive's PSI step 4, which goes out with its first round.
        """
        active, passives, t = self.active, self.parties[1:], self.setup_traffic
        hub = M.encode_hub_points(points[active.name])
        blind = M.encode_blind_request({p.index: points[p.name] for p in passives})
        step2 = relay.exchange([(p, M.PSI_PEER, hub) for p in passives] + [(active, M.PSI_BLIND, blind)],
                               "PSI (blinding)", traffic=t)
        reblinded = {p.index: M.decode_reblinded(step2[p.name].content, p.name) for p in passives}
        finish = M.encode_finish_request(reblinded, [int(p.info["embedding-dim"]) for p in passives])
        fin = relay.exchange([(active, M.PSI_FINISH, finish)], "PSI (intersection)", traffic=t)[active.name]
        result = M.decode_intersection(fin.content, [p.index for p in passives])
        active.info.update({"num-classes": result.num_classes,
                            **{M.split_key(M.ALIGNED, s): n for s, n in result.aligned.items()}})
        return {k: PassiveSetup(positions=pos, num_classes=result.num_classes) for k, pos in result.positions.items()}

    # ------------------------------------------------------------------ one round
    def _round(self, relay: Relay, rnd: int, transit: InTransit, setups: dict[int, PassiveSetup]) -> dict[str, float]:
        """One pipelined exchange, exactly as ``run_inprocess``: passives first, then the active party. Returns the
        exchange's record (its rounds' records go to ``local_history``); last round's test scores, when they come
        with this exchange, go into ``history[-1]``."""
        cfg, t0, traffic, dtype = self.cfg, time.perf_counter(), Traffic(), self.cfg.wire_dtype
        where, aligned, previous = f"training of round {rnd}", self._aligned(), transit.test_previous
        sends = [(p, M.TRAIN, M.encode_to_passive(transit.to_passive(p.index, rnd, cfg, setup=setups.get(p.index)),
                                                  dtype=dtype))
                 for p in self.joint]
        outs = relay.exchange(sends, "training (passive parties)", rnd, traffic) if sends else {}
        dims = [int(p.info["embedding-dim"]) for p in self.joint]
        splits = proto.eval_splits(cfg, rnd)
        replies = [M.decode_from_passive(outs[p.name].content, p.name, where, rows=aligned, dim=d, splits=splits,
                                     previous=previous, dtype=dtype)
                   for p, d in zip(self.joint, dims, strict=True)]
        msg = proto.to_active(rnd, cfg, replies, test_previous=previous)
        rounds = exchanges.rounds_of(cfg, rnd)
        res = relay.exchange([(self.active, M.TRAIN, M.encode_to_active(msg, dtype=dtype))], "training (active party)",
                             rnd,
                             traffic, work=len(rounds))[self.active.name]
        reply = M.decode_from_active(res.content, where, dims=dims, n_train=aligned["train"], final=msg.final,
                                     num_classes=self.num_classes, shares_prototypes=cfg.method.shares_prototypes,
                                     dtype=dtype, gradients=defences.releases(cfg, rnd),
                                     earlier=rounds[:-1])
        transit.receive(reply)
        proto.add_previous_test(self.history, reply)
        self.local_history.extend(proto.local_records(cfg, rnd, reply))
        return proto.record(rnd, replies, reply, time.perf_counter() - t0, cfg=cfg, extra={
            "messages": traffic.messages, **{f"bytes/{k}": v for k, v in traffic.bytes.items()}})

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

    def _restore(self, saved: dict[str, Any]) -> InTransit:
        """History and party facts from the server's checkpoint; returns the payloads in transit."""
        for p in self.parties:
            p.info.update(saved["party-info"].get(p.name, {}))
        self.history = list(saved["history"])
        self.local_history = list(saved.get(ck.LOCAL_HISTORY, []))
        return InTransit.from_state(self.cfg.dataset.num_passive, ck.transit_of(saved))

    def _save_checkpoint(self, rnd: int, transit: InTransit) -> None:
        """The server's part of round ``rnd``'s checkpoint: history and the payloads the next round relays."""
        info = {p.name: {k: v for k, v in p.info.items() if k.startswith(M.ALIGNED + ".") or k == "num-classes"}
                for p in self.parties}
        ck.save(ck.server_dir(self.cfg), rnd, ck.server_checkpoint(self.cfg, rnd, self.history, transit.state(),
                                                                   **{"party-info": info,
                                                                      ck.LOCAL_HISTORY: self.local_history}))
        self.last_checkpoint = rnd

    def _recover(self, relay: Relay) -> InTransit:
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
        self.summary()
        relay = Relay(grid, timeout=self.timeout, wait_for_nodes=self.wait_for_nodes,
                      poll_interval=self.poll_interval, max_poll_interval=self.max_poll_interval)
        t_setup = time.perf_counter()
        saved = self._checkpoint_to_resume()
        start = self.last_checkpoint
        points = self._discover(relay, start or None)
        self.history, self.local_history = [], []
        if saved is None:
            setups, transit = self._psi(relay, points), InTransit(self.cfg.dataset.num_passive)
        else:  # every party restored itself in discovery; PSI's outcome is part of their state
            setups, transit = {}, self._restore(saved)
            log.info("resumed from the checkpoint of round %d in %s", start, self.cfg.checkpoint.dir)
        setup_seconds = time.perf_counter() - t_setup
        log.info("setup done in %.1f s: %s", setup_seconds,
                 ", ".join(f"{p.name}=node {p.node_id}" for p in self.parties))
        self._train(relay, start + 1, transit, setups)
        self.results = self._results(setup_seconds, start)
        return self._flower_result()

    def _train(self, relay: Relay, first: int, transit: InTransit, setups: dict[int, PassiveSetup]) -> None:
        """Exchanges ``first..``; a failed one is retried from the last checkpoint when allowed."""
        cfg, rnd, retries, recover = self.cfg, first, self.cfg.checkpoint.retries, False
        while rnd <= exchanges.count(cfg):
            try:
                if recover:
                    recover = False
                    transit, rnd = self._recover(relay), self.last_checkpoint + 1
                    continue
                rec = self._round(relay, rnd, transit, setups if rnd == 1 else {})
            except ProtocolError as err:
                retries, recover = self._retry_or_raise(err, retries), True
                continue
            self.history.append(rec)
            if ck.due(cfg, rnd):  # every party wrote its file before it replied: this one completes the checkpoint
                self._save_checkpoint(rnd, transit)
            log.info(format_round(rec, cfg.num_rounds))
            if self.on_round is not None:
                self.on_round(rec)
            rnd += 1

    def _results(self, setup_seconds: float, start: int) -> dict[str, Any]:
        rows = {p.name: {s: int(p.info[M.split_key(M.ROWS, s)]) for s in SPLITS} for p in self.parties}
        found = proto.alignment_record(self._aligned(), rows)
        return build_results(self.cfg, self.history, local_rounds=self.local_history, extra={
            **privacy_summary(self.cfg, self.history), **defences.defence_summary(self.cfg, self.history),
            "alignment": found, "flower": {
                "setup_seconds": setup_seconds,
                **({"resumed_from_round": start} if start else {}),
                "setup_messages": self.setup_traffic.messages,
                "setup_bytes": self.setup_traffic.bytes,
                "parties": [{"name": p.name, "node_id": p.node_id,
                             **{k: v for k, v in p.info.items() if k.startswith((M.ROWS + ".", M.ALIGNED + "."))}}
                            for p in self.parties],
            }})

    def _flower_result(self) -> Result:
        """The history as Flower's :class:`Result` (party metrics per round; evaluation metrics where scored)."""
        result = Result()
        for rec in self.history:
            rnd = int(rec["round"])
            result.train_metrics_clientapp[rnd] = MetricRecord(
                {k: v for k, v in rec.items() if k.startswith(("active/", "passive"))})
            evals = {k: v for k, v in rec.items() if k.startswith(("val/", "test/"))}
            if evals:
                result.evaluate_metrics_clientapp[rnd] = MetricRecord(evals)
        return result
