"""Sending messages to parties over a Flower :class:`~flwr.serverapp.Grid` and waiting for their replies.

Used by the training strategy and by the prediction query round alike. Every wait has a deadline; an error reply
or a missing reply becomes a :class:`~flwr_vproto.protocol.ProtocolError` naming the party, the phase and the
round. Replies are matched by message ID, never by sender: a SuperLink answers for a dead node from its own node ID.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from flwr_vproto.messages import payload_bytes
from flwr_vproto.protocol import ProtocolError, party_name

log = logging.getLogger("flwr")


@dataclass
class PartyNode:
    """A node and the party it plays, as it answered discovery (``role="node"`` until it has answered)."""

    node_id: int
    role: str = "node"
    index: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"node {self.node_id}" if self.role == "node" else party_name(self.role, self.index)

    @property
    def label(self) -> str:
        """How errors name it: ``passive1 (node 101)``, or ``node 101`` before discovery."""
        return self.name if self.role == "node" else f"{self.name} (node {self.node_id})"


@dataclass
class Traffic:
    """Messages and payload bytes of one phase, per party (``<party>/up`` = party to server)."""

    messages: int = 0
    bytes: dict[str, float] = field(default_factory=dict)

    def add(self, party: str, down: RecordDict, up: RecordDict) -> None:
        self.messages += 1
        self.bytes[f"{party}/down"] = self.bytes.get(f"{party}/down", 0.0) + payload_bytes(down)
        self.bytes[f"{party}/up"] = self.bytes.get(f"{party}/up", 0.0) + payload_bytes(up)


Send = tuple[PartyNode, str, RecordDict]  # to whom, message type, content


def make_message(party: PartyNode, mtype: str, content: RecordDict, *, group: str | int, timeout: float) -> Message:
    """A message to ``party`` of type ``mtype`` in group ``group`` (the round, or the phase of a setup step), kept by
    the SuperLink a minute longer than its reply's deadline ``timeout``."""
    return Message(content, party.node_id, mtype, group_id=str(group), ttl=timeout + 60.0)


class Relay:
    """One run's messaging over ``grid``.

    ``timeout``: seconds to wait for any one reply; ``wait_for_nodes``: seconds to wait for the nodes to connect.
    Replies are polled every ``poll_interval`` seconds, backing off to ``max_poll_interval``: each poll is a call to
    the SuperLink in a deployment, but only a read of in-memory state in simulation, where a short cap saves tens of
    milliseconds per message.
    """

    def __init__(self, grid: Grid, *, timeout: float, wait_for_nodes: float, poll_interval: float = 0.005,
                 max_poll_interval: float = 0.1) -> None:
        self.grid, self.timeout, self.wait_for_nodes = grid, float(timeout), float(wait_for_nodes)
        self.poll_interval, self.max_poll_interval = poll_interval, max_poll_interval

    def nodes(self, need: int, why: str) -> list[PartyNode]:
        """All connected nodes, once at least ``need`` are there (deployments connect at their own pace)."""
        deadline = time.monotonic() + self.wait_for_nodes
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= need:
                return [PartyNode(n) for n in nodes]
            if time.monotonic() > deadline:
                raise ProtocolError(f"only {len(nodes)} of {need} SuperNodes connected within "
                                    f"{self.wait_for_nodes:g} s ({why})")
            time.sleep(0.5)

    def message(self, party: PartyNode, mtype: str, content: RecordDict, *, group: str | int, work: int = 1
                ) -> Message:
        """A message to ``party`` that lives as long as its reply may take (``work`` rounds of ``timeout``)."""
        return make_message(party, mtype, content, group=group, timeout=self.timeout * max(work, 1))

    def exchange(self, sends: list[Send], phase: str, *, rnd: int | None = None, traffic: Traffic | None = None,
                 tolerate_gone: bool = False, work: int = 1) -> dict[str, Message]:
        """Send one message to each party and wait for every reply; return replies by party name.

        ``work``: how many rounds of training the message asks for; the deadline is ``timeout`` per round.

        ``tolerate_gone``: a node the SuperLink reports unavailable, or that stays silent until the deadline, is
        left out of the replies instead of stopping the run (discovery: a killed SuperNode stays listed as online
        until its heartbeats expire, up to a minute, next to the one restarted in its place).
        """
        group = rnd if rnd is not None else phase
        return self.send_and_receive([self.message(p, mtype, content, group=group, work=work)
                                      for p, mtype, content in sends], [p for p, _, _ in sends], phase, rnd=rnd,
                                     traffic=traffic, tolerate_gone=tolerate_gone, work=work)

    def send_and_receive(self, messages: Iterable[Message], parties: Iterable[PartyNode], phase: str, *,
                         rnd: int | None = None, traffic: Traffic | None = None, tolerate_gone: bool = False,
                         work: int = 1) -> dict[str, Message]:
        """:meth:`exchange` for messages already built (a strategy's ``configure_*`` hooks): each goes to the party
        of ``parties`` with its destination node; return replies by party name."""
        where = phase + (f" of round {rnd}" if rnd is not None else "")
        timeout = self.timeout * max(work, 1)
        by_node = {p.node_id: p for p in parties}
        msgs = list(messages)
        unknown = sorted({m.metadata.dst_node_id for m in msgs} - set(by_node))
        if unknown:
            raise ProtocolError(f"{where}: messages addressed to nodes {unknown}, which are not parties of this run")
        pending = self._push(msgs, [by_node[m.metadata.dst_node_id] for m in msgs], where)
        replies: dict[str, Message] = {}
        deadline = time.monotonic() + timeout
        delay = self.poll_interval
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                sent = pending.pop(reply.metadata.reply_to_message_id, None)
                if sent is not None and self._accept(reply, sent[0], where, tolerate_gone):
                    replies[sent[0].name] = reply
                    if traffic is not None:
                        traffic.add(sent[0].name, sent[1], reply.content)
            if pending and time.monotonic() > deadline:
                self._overdue([p for p, _ in pending.values()], where, tolerate_gone, timeout)
                break
            if pending:
                time.sleep(delay)
                delay = min(delay * 1.5, self.max_poll_interval)
        return replies

    def _push(self, msgs: list[Message], parties: list[PartyNode], where: str
              ) -> dict[str, tuple[PartyNode, RecordDict]]:
        contents = [m.content for m in msgs]  # before sending: a Grid may take the message over
        ids = list(self.grid.push_messages(msgs))
        if len(ids) != len(msgs) or not all(ids):
            lost = ([p.name for p, i in zip(parties, ids, strict=True) if not i] if len(ids) == len(msgs)
                    else [p.name for p in parties])
            raise ProtocolError(f"could not deliver the {where} message to {', '.join(lost)}")
        return {mid: (p, content) for mid, p, content in zip(ids, parties, contents, strict=True)}

    @staticmethod
    def _accept(reply: Message, party: PartyNode, where: str, tolerate_gone: bool) -> bool:
        """A good reply is kept; an error reply stops the run, unless a gone node may be left out."""
        if not reply.has_error():
            return True
        if tolerate_gone and reply.metadata.src_node_id != party.node_id:
            log.warning("%s: the SuperLink reports node %d unavailable (%s); leaving it out", where, party.node_id,
                        reply.error.reason)
            return False
        raise ProtocolError(f"{party.label} failed during {where}: {reply.error.reason} (error code "
                            f"{reply.error.code})")

    def _overdue(self, missing: list[PartyNode], where: str, tolerate_gone: bool, timeout: float) -> None:
        if tolerate_gone:
            log.warning("%s: no reply from node(s) %s within %g s; leaving them out", where,
                        [p.node_id for p in missing], timeout)
            return
        raise ProtocolError(f"no reply from {', '.join(p.label for p in missing)} during {where} within "
                            f"{timeout:g} s (raise the timeout if a party needs longer)")
