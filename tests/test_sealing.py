"""The server learns nothing it does not need (issue 27 item 1): party-to-party payloads are sealed end to end,
the active party reports only label-free progress by default, and a payload the server tampers with, replays or
re-routes does not open.

Playing the server: :class:`Recording` keeps every message the strategy sends and every reply it receives, and the
tests search those bytes for what the parties actually computed (recorded inside the active party's ClientApp).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import InlineGrid, assert_same_history, run_inline, sim_nodes, small_cfg, unseal
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

from flwr_vproto import messages, sealing
from flwr_vproto import protocol as proto
from flwr_vproto.client_app import make_client_app
from flwr_vproto.inprocess import run_inprocess
from flwr_vproto.protocol import ProtocolError
from flwr_vproto.strategy import VerticalProtoStrategy


class Recording(InlineGrid):
    """An InlineGrid that keeps every reply the server pulls, next to ``sent`` (everything it pushed)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.received: list = []

    def pull_messages(self, message_ids):
        got = list(super().pull_messages(message_ids))
        self.received.extend(got)
        return got


def _server_bytes(grid: Recording) -> bytes:
    """Everything the server handled, as bytes: array data, config values, metric keys and values."""
    parts: list[bytes] = []
    for msg in [*grid.sent, *grid.received]:
        if msg.has_error():
            parts.append(msg.error.reason.encode())
            continue
        for record in msg.content.values():
            if isinstance(record, ArrayRecord):
                parts += [a.data for a in record.values()]
            elif isinstance(record, ConfigRecord):
                for value in record.values():
                    for v in value if isinstance(value, list) else [value]:
                        parts.append(v if isinstance(v, bytes) else str(v).encode())
            elif isinstance(record, MetricRecord):
                parts += [f"{k}={v!r}".encode() for k, v in record.items()]
    return b"\x00".join(parts)


def test_the_server_sees_no_embedding_gradient_prototype_or_label_derived_metric(monkeypatch):
    """Default policy (progress): the passives' embeddings, the gradient rows and second prototypes the active party
    computed, and every label-derived metric are nowhere in what the server handled; the numbers do not move."""
    # third loss: second prototypes travel too, in clear to the passive, so the server's bytes can be searched
    cfg = small_cfg(rounds=3, method_extra={"lambda_passive": 1.0}, privacy={"clear_prototypes": True})
    seen: list[tuple[proto.ToActive, proto.FromActive]] = []
    step = proto.active_step

    def recorded(party, msg, **kwargs):  # inside the active party's ClientApp: what it received and released
        reply = step(party, msg, **kwargs)
        seen.append((msg, reply))
        return reply

    monkeypatch.setattr(proto, "active_step", recorded)
    strategy = VerticalProtoStrategy(cfg, timeout=30, wait_for_nodes=1)
    grid = Recording(make_client_app(cfg), sim_nodes(cfg))
    strategy.start(grid=grid)
    wire = _server_bytes(grid)

    secrets = []
    for msg, reply in seen:
        secrets += [msg.embeddings[0][0], msg.eval_embeddings[0].get("val", msg.embeddings[0])[0]]
        secrets += [g[0] for g in reply.gradients] + [p[1] for p in reply.prototypes]
    assert len(secrets) >= 3 * 2 + 2 * 2  # embeddings every round; gradients and prototypes after rounds 1, 2
    for row in secrets:
        assert np.asarray(row, np.float32).tobytes() not in wire
    # positive control: the same search finds them once the payload is opened (what only the active party can do)
    passive_reply = next(m for m in grid.received if m.metadata.src_node_id == 101
                         and m.metadata.message_type == messages.TRAIN)
    opened = messages.to_bytes(unseal(grid, cfg, messages.array_to_bytes(
        passive_reply.content[messages.ARRAYS][messages.SEALED].numpy()), 1, sealing.EMBEDDINGS, "passive1", "active"))
    assert np.asarray(seen[0][0].embeddings[0][0], np.float32).tobytes() in opened

    metric_keys = {k for m in grid.received if messages.METRICS in m.content for k in m.content[messages.METRICS]}
    assert metric_keys == {"progress.exchange", "progress.rounds"}  # the whole label-free set, nothing else
    assert all(not k.startswith(("val/", "test/", "active/", "passive", "privacy/")) for r in strategy.history
               for k in r)
    assert "val/accuracy" in run_inprocess(cfg)["rounds"][1]  # ... which the run did compute, on the active side


def test_full_policy_reports_everything_and_progress_reads_back_to_the_same_results(tmp_path):
    cfg = small_cfg(rounds=3)
    reference = run_inprocess(cfg)
    full, _, _ = run_inline(cfg, server_metrics="full")
    assert_same_history(full.history, reference["rounds"])
    progress, _, _ = run_inline(cfg)  # the runner reads the active party's own record back
    assert_same_history(progress.history, reference["rounds"])
    assert progress.results["final"] == full.results["final"] == reference["final"]
    own = Path(progress.active_results) / "results.json"  # the active party's results.json, on its own side
    mine = json.loads(own.read_text())
    assert mine["final"] == reference["final"] and len(mine["rounds"]) == 3


def _run_tampered(strategy_cls, cfg):
    strategy = strategy_cls(cfg, timeout=30, wait_for_nodes=1)
    with pytest.raises(ProtocolError) as err:
        strategy.start(grid=InlineGrid(make_client_app(cfg), sim_nodes(cfg)))
    assert "\n" not in str(err.value)
    return str(err.value)


class FlipsAByte(VerticalProtoStrategy):
    def aggregate_passives(self, server_round, replies):
        blobs = super().aggregate_passives(server_round, replies)
        if server_round == 2:
            b = bytearray(blobs[1])
            b[len(b) // 2] ^= 1
            blobs[1] = bytes(b)
        return blobs


class ReplaysLastRound(VerticalProtoStrategy):
    def configure_passives(self, server_round):
        if server_round == 2:
            self.kept = dict(self.transit)
        if server_round == 3:
            self.transit = self.kept  # round 2's sealed gradients, sent again in round 3
        return super().configure_passives(server_round)


class SwapsSenders(VerticalProtoStrategy):
    def configure_active(self, server_round, passives):
        if server_round == 2:
            passives = {1: passives[2], 2: passives[1]}  # passive2's embeddings presented as passive1's
        return super().configure_active(server_round, passives)


class ReRoutes(VerticalProtoStrategy):
    def configure_passives(self, server_round):
        if server_round == 2:
            self.transit = {1: self.transit[2], 2: self.transit[1]}  # passive2's gradients to passive1
        return super().configure_passives(server_round)


@pytest.mark.parametrize(("strategy_cls", "match"), [
    (FlipsAByte, r"active: the sealed embeddings payload from passive1 for round 2 does not open \(tampered"),
    (ReplaysLastRound, r"passive\d: the sealed gradients payload from active for round 3 does not open"),
    (SwapsSenders, r"active: the sealed embeddings payload from passive1 for round 2 does not open"),
    (ReRoutes, r"passive1: the sealed gradients payload from active for round 2 does not open"),
])
def test_a_tampered_replayed_or_rerouted_payload_fails_in_one_line(strategy_cls, match):
    message = _run_tampered(strategy_cls, small_cfg(rounds=3, num_passive=2))
    assert __import__("re").search(match, message), message


def test_a_replayed_whole_message_is_refused():
    """The server sends a passive round 2's message (flags and sealed payload, which do open) a second time."""

    class Resends(VerticalProtoStrategy):
        def configure_passives(self, server_round):
            out = super().configure_passives(server_round)
            if server_round == 2:
                self.again = out
            return self.again if server_round == 3 else out

    message = _run_tampered(Resends, small_cfg(rounds=3))
    assert "passive1: a message of round 2 after round 2: refused" in message


def _key_file(folder: Path, name: str) -> tuple[str, str]:
    path = folder / name
    return str(path), sealing.write_key_file(path).hex()


def test_pinned_keys_are_checked_and_a_mismatch_is_refused_naming_the_party_and_key(tmp_path):
    cfg = small_cfg(rounds=2)
    (active_key, active_pub), (passive_key, passive_pub) = _key_file(tmp_path, "a"), _key_file(tmp_path, "p")
    _, stranger = _key_file(tmp_path, "x")
    out = str(tmp_path / "results")

    def nodes(pin_active: str, pin_passive: str) -> list[dict]:
        return [{"role": "active", "party-index": 0, "key-file": active_key, "pin-passive-1-key": pin_passive,
                 "results-dir": out},
                {"role": "passive", "party-index": 1, "key-file": passive_key, "pin-active-key": pin_active}]

    strategy = VerticalProtoStrategy(cfg, timeout=30, wait_for_nodes=1)
    strategy.start(grid=InlineGrid(make_client_app(cfg), nodes(active_pub, passive_pub)))
    assert len(strategy.history) == 2
    for pins, who, key in (((stranger, passive_pub), "passive1", "pin-active-key"),
                           ((active_pub, stranger), "active", "pin-passive-1-key")):
        with pytest.raises(ProtocolError, match=rf"{who}: \w+'s long-term public key [0-9a-f]+\.\.\. is not the one "
                                                rf"pinned by node-config {key}"):
            VerticalProtoStrategy(cfg, timeout=30, wait_for_nodes=1).start(
                grid=InlineGrid(make_client_app(cfg), nodes(*pins)))


def test_keygen_writes_an_owner_only_key_file_and_never_overwrites(tmp_path, capsys):
    path = tmp_path / "node.key"
    assert sealing.main(["keygen", str(path)]) == 0
    public = capsys.readouterr().out.strip()
    assert public == sealing.public_of(sealing.read_key_file(path, "key-file")).hex()
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert sealing.main(["keygen", str(path)]) == 1
    with pytest.raises(sealing.KeyFileError, match="key-file='.*': expected 64 hex digits"):
        sealing.read_key_file(Path(tempfile.mkstemp()[1]), "key-file")


def test_every_bound_field_and_the_key_matter_and_padding_hides_the_length():
    a, b = sealing.new_private(), sealing.new_private()
    key = sealing.pair_key(a, sealing.public_of(b), "run")
    assert key == sealing.pair_key(b, sealing.public_of(a), "run")  # the same on both sides
    assert key != sealing.pair_key(a, sealing.public_of(b), "another config")
    bound = ("run", 3, sealing.EMBEDDINGS, "passive1", "active")
    blob = sealing.seal(key, b"rows", sealing.associated_data(*bound), size=64)
    assert len(blob) == len(sealing.seal(key, b"rows and more rows", sealing.associated_data(*bound), size=64))
    assert blob != sealing.seal(key, b"rows", sealing.associated_data(*bound), size=64)  # a fresh nonce each time
    who = {"receiver": "active", "sender": "passive1", "phase": sealing.EMBEDDINGS, "rnd": 3}
    assert sealing.open_sealed(key, blob, sealing.associated_data(*bound), **who) == b"rows"
    for i, other in enumerate(("other run", 4, sealing.FOR_PASSIVE, "passive2", "passive1")):
        changed = list(bound)
        changed[i] = other
        with pytest.raises(ProtocolError, match="does not open"):
            sealing.open_sealed(key, blob, sealing.associated_data(*changed), **who)
    with pytest.raises(ProtocolError, match="does not open"):
        sealing.open_sealed(sealing.pair_key(a, sealing.public_of(sealing.new_private()), "run"), blob,
                            sealing.associated_data(*bound), **who)
