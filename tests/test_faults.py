"""Faults: a corrupt or mis-shaped payload from a party is refused naming the party and the round.

The real strategy and the real ClientApp talk through :class:`test_flower_sim.InlineGrid`; ``TamperGrid`` alters
one party's reply on its way back, as a buggy or malicious party (or a corrupted transfer) would send it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from conftest import InlineGrid, reseal, sim_nodes, small_cfg, unseal
from flwr.app import Array, ConfigRecord, Message

from flwr_vproto import messages, sealing
from flwr_vproto.client_app import make_client_app
from flwr_vproto.messages import ProtocolError
from flwr_vproto.strategy import VerticalProtoStrategy


class TamperGrid(InlineGrid):
    """``tamper(reply, party_index, request)`` may change a reply in place before the strategy pulls it."""

    def __init__(self, app, node_configs, tamper: Callable[[Message, int, Message], None]) -> None:
        super().__init__(app, node_configs)
        self.tamper = tamper

    def push_messages(self, outgoing):
        outgoing = list(outgoing)
        ids = super().push_messages(outgoing)
        for mid, msg in zip(ids, outgoing, strict=True):
            reply = self.replies.get(mid)
            if reply is not None and not reply.has_error():
                self.tamper(reply, self.index[msg.metadata.dst_node_id], msg)
        return ids


def _round(msg: Message) -> int | None:
    return msg.content[messages.CONFIG].get("round") if messages.CONFIG in msg.content else None


def _run(tamper, method_extra=None, **cfg_extra):
    cfg = small_cfg(rounds=3, method_extra=method_extra, **cfg_extra)
    strategy = VerticalProtoStrategy(cfg, timeout=30, wait_for_nodes=1)
    grid = TamperGrid(make_client_app(cfg), sim_nodes(cfg), tamper)
    grid.cfg = cfg
    GRID[:] = [grid]
    return strategy.start(grid=grid)


GRID: list[TamperGrid] = []  # the grid of the run under way (its parties' keys play the tampering party)


class _Inner:
    """A sealed payload opened, in the shape the ``change`` functions take (``.content``)."""

    def __init__(self, content) -> None:
        self.content = content


def _as_party(change, rnd: int, phase: str, sender: str, receiver: str, key: str):
    """``change`` applied by the sending party itself, inside its sealed payload ``key`` (what a buggy or
    malicious party can do; anyone else's change does not open at all)."""
    def tamper(grid, reply):
        arrays = reply.content[messages.ARRAYS]
        blob = messages.array_to_bytes(arrays[key].numpy())
        inner = _Inner(unseal(grid, grid.cfg, blob, rnd, phase, sender, receiver))
        change(inner)
        arrays[key] = Array.from_numpy_ndarray(messages.bytes_to_array(
            reseal(grid, grid.cfg, inner.content, rnd, phase, sender, receiver)))
    return tamper


def _set(key: str, value) -> Callable[[Message], None]:
    def change(reply: Message) -> None:
        arrays = reply.content[messages.ARRAYS]
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value if isinstance(value, Array) else Array.from_numpy_ndarray(value(arrays[key].numpy()))
    return change


GARBAGE = Array(dtype="float32", shape=(3,), stype="numpy.ndarray", data=b"\x00garbage bytes")


@pytest.mark.parametrize(("change", "match"), [
    (_set("embeddings", lambda z: z[:-1]), r"array 'embeddings' has shape \(\d+, 64\), expected \(\d+, 64\)"),
    (_set("embeddings", lambda z: z.astype(np.float64)), "array 'embeddings' has dtype float64, expected float32"),
    (_set("embeddings", lambda z: np.where(np.arange(z.shape[1]) == 3, np.nan, z).astype(np.float32)),
     r"array 'embeddings' holds \d+ NaN/inf"),
    (_set("embeddings", None), r"arrays \['embeddings'\] missing"),
    (_set("embeddings", GARBAGE), "array 'embeddings' does not decode"),
    (lambda r: r.content[messages.ARRAYS].__setitem__("raw-features",
                                                     Array.from_numpy_ndarray(np.zeros(3, np.float32))),
     r"unexpected arrays \['raw-features'\]"),
])
def test_a_corrupt_passive_payload_is_refused_naming_party_and_round(change, match):
    """The active party checks what it opened (the server sees only a sealed blob)."""
    sealed_change = _as_party(change, 2, sealing.EMBEDDINGS, "passive1", "active", messages.SEALED)

    def tamper(reply, party, request):
        if party == 1 and _round(request) == 2:
            sealed_change(GRID[0], reply)

    with pytest.raises(ProtocolError, match=r"passive1 sent a bad reply during training of round 2: " + match):
        _run(tamper)


def _bad_prototypes(reply):
    conf = reply.content[messages.CONFIG]
    conf["prototypes.data"] = conf["prototypes.data"][:-4]


def _nan_gradients(reply):
    arrays = reply.content[messages.ARRAYS]
    g = arrays["gradients"].numpy()
    g[0, 0] = np.inf
    arrays["gradients"] = Array.from_numpy_ndarray(g)


@pytest.mark.parametrize(("change", "match"), [
    (_bad_prototypes, r"'prototypes' has shape \[10, 64\] and 2556 bytes, expected \[10, 64\] float32"),
    (_nan_gradients, r"array 'gradients' holds 1 NaN/inf"),
    (lambda r: r.content[messages.CONFIG].__setitem__("prototype-mask", [True]), "'prototype-mask' is not 10 booleans"),
])
def test_a_corrupt_active_payload_is_refused_naming_the_round(change, match):
    """A passive checks what the active party sealed for it, when it opens it in the next round."""
    sealed_change = _as_party(change, 2, sealing.FOR_PASSIVE, "active", "passive1", "passive1.sealed")

    def tamper(reply, party, request):
        if party == 0 and _round(request) == 1:
            sealed_change(GRID[0], reply)

    with pytest.raises(ProtocolError, match=r"passive1 \(node 101\) failed during training \(passive parties\) of "
                                            r"round 2: .*active sent a bad reply during training of round 2: " + match):
        _run(tamper, method_extra={"lambda_passive": 1.0},  # the passives' third loss: prototypes travel
             privacy={"clear_prototypes": True})


def test_an_active_reply_without_metrics_is_refused_naming_the_round():
    def tamper(reply, party, request):
        if party == 0 and _round(request) == 1:
            reply.content.__delitem__(messages.METRICS)

    with pytest.raises(ProtocolError, match=r"active sent a bad reply during training of round 1: no 'metrics' "
                                            r"metric record"):
        _run(tamper)


def test_corrupt_setup_replies_are_refused():
    def no_role(reply, party, request):
        if party == 1 and request.metadata.message_type == messages.DISCOVER:
            del reply.content[messages.CONFIG]["role"]

    with pytest.raises(ProtocolError, match=r"node 101 sent a bad reply during discovery: 'role' is None"):
        _run(no_role)

    def bad_own(reply, party, request):
        if party == 1 and request.metadata.message_type == messages.DISCOVER:
            reply.content[messages.ARRAYS]["own.train"] = Array.from_numpy_ndarray(np.zeros(4, np.float32))

    with pytest.raises(ProtocolError, match=r"passive1 sent a bad reply during discovery: array 'own.train' has "
                                            r"dtype float32, expected uint8"):
        _run(bad_own)

    def bad_psi(reply, party, request):
        if party == 1 and request.metadata.message_type == messages.PSI_PEER:
            reply.content[messages.ARRAYS]["reblinded.val"] = Array.from_numpy_ndarray(np.zeros(4, np.float32))

    with pytest.raises(ProtocolError, match=r"passive1 sent a bad reply during PSI \(blinding\): array "
                                            r"'reblinded.val' has dtype float32, expected uint8"):
        _run(bad_psi)

    def no_classes(reply, party, request):
        if party == 0 and request.metadata.message_type == messages.PSI_FINISH:
            reply.content[messages.CONFIG] = ConfigRecord({k: v for k, v in reply.content[messages.CONFIG].items()
                                                    if k != "num-classes"})

    with pytest.raises(ProtocolError, match=r"active sent a bad reply during PSI \(intersection\): 'num-classes'"):
        _run(no_classes)


@pytest.mark.parametrize("how", ["superlink-error", "drop"])
def test_discovery_leaves_out_a_dead_node_still_listed_next_to_its_replacement(how):
    """A killed SuperNode stays listed until its heartbeats expire; the restarted one answers in its place."""
    cfg = small_cfg(rounds=2)
    nodes = [*sim_nodes(cfg), {"partition-id": 1}]  # node 102: the dead passive1, still listed

    def fault(msg, party):
        return how if party == 2 else None

    strategy = VerticalProtoStrategy(cfg, timeout=1.0 if how == "drop" else 30, wait_for_nodes=1)
    strategy.start(grid=InlineGrid(make_client_app(cfg), nodes, fault=fault))
    assert [(p.name, p.node_id) for p in strategy.parties] == [("active", 100), ("passive1", 101)]
    assert len(strategy.history) == 2

    def all_gone(msg, party):
        return "superlink-error" if party >= 1 else None

    with pytest.raises(ProtocolError, match=r"only 1 of 2 SuperNodes answered discovery .* nodes \[101, 102\]"):
        VerticalProtoStrategy(cfg, timeout=30, wait_for_nodes=1).start(
            grid=InlineGrid(make_client_app(cfg), nodes, fault=all_gone))


def test_a_failed_round_is_retried_from_the_last_checkpoint_when_configured(tmp_path):
    """``checkpoint.retries``: the run re-discovers the nodes, every party restores its round-2 file, and the run
    ends with the numbers of an uninterrupted one; once the retries are spent it stops naming the checkpoint."""
    from flwr_vproto.inprocess import run_inprocess

    failures = []

    def fault(msg, party):  # the active party fails its round 3 once (the passive already trained round 3)
        rnd = msg.content[messages.CONFIG].get("round") if messages.CONFIG in msg.content else None
        if party == 0 and rnd == 3 and not failures:
            failures.append(rnd)
            return "error"
        return None

    cfg = small_cfg(rounds=4, checkpoint={"dir": str(tmp_path / "a"), "every": 1, "retries": 1})
    strategy = VerticalProtoStrategy(cfg, timeout=30, wait_for_nodes=1, active_results=tmp_path / "active")
    grid = InlineGrid(make_client_app(cfg, results_dir=str(tmp_path / "active")), sim_nodes(cfg), fault=fault)
    strategy.start(grid=grid)
    assert failures == [3]
    assert [m.metadata.message_type for m in grid.sent].count(messages.DISCOVER) == 2 * 2  # setup + the retry
    reference = run_inprocess(small_cfg(rounds=4))["rounds"]
    got = [{k: v for k, v in r.items() if k in ref and k != "seconds"} for r, ref in
           zip(strategy.history, reference, strict=True)]
    assert got == [{k: v for k, v in r.items() if k != "seconds"} for r in reference]

    def always(msg, party):
        rnd = msg.content[messages.CONFIG].get("round") if messages.CONFIG in msg.content else None
        return "error" if party == 0 and rnd == 3 else None

    cfg = small_cfg(rounds=4, checkpoint={"dir": str(tmp_path / "b"), "every": 1, "retries": 1})
    with pytest.raises(ProtocolError, match=r"active \(node 100\) failed during training \(active party\) of round 3"
                                            r".*last complete checkpoint is round 2"):
        VerticalProtoStrategy(cfg, timeout=30, wait_for_nodes=1).start(
            grid=InlineGrid(make_client_app(cfg), sim_nodes(cfg), fault=always))
