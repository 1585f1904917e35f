"""ECDH-PSI (flwr_vproto.psi): correctness against plain set intersection, the shared order, errors, and what the
relaying server can see."""

from __future__ import annotations

import hashlib
import uuid

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from flwr_vproto import psi
from flwr_vproto.psi import DOMAIN, PSIError, PSIHub, PSIPeer, canonical_ids, run_local


def _random_parties(
    rng: np.random.Generator, sizes: list[int], common: int, universe: int = 10**9
) -> tuple[list[list[str]], set[str]]:
    """Parties' ID lists (each shuffled) sharing ``common`` IDs plus random extras that may also overlap by chance."""
    pool = rng.choice(universe, size=common + sum(sizes), replace=False)
    shared = [f"id-{v}" for v in pool[:common]]
    parties, k = [], common
    for n in sizes:
        extra = n - common
        ids = shared + [f"id-{v}" for v in pool[k : k + extra]]
        k += extra
        rng.shuffle(ids)
        parties.append(ids)
    truth = set(parties[0]).intersection(*map(set, parties[1:]))
    return parties, truth


def _protocol(hub_ids, peer_ids: dict, order_seed: int = 0, **kw):
    """Run the protocol message by message, returning (hub_rows, peer_rows, messages the server relayed)."""
    hub = PSIHub(hub_ids, order_seed=order_seed, **kw)
    peers = {name: PSIPeer(ids) for name, ids in peer_ids.items()}
    wire = [hub.blinded_ids()]
    for name, peer in peers.items():
        reblinded, own = peer.respond(wire[0])
        wire += [reblinded, own]
        hub.add_peer(name, reblinded, own)
    hub_rows, positions = hub.finish()
    peer_rows = {name: peers[name].rows_from_positions(positions[name]) for name in peers}
    return hub_rows, peer_rows, wire


@pytest.mark.parametrize(("sizes", "common"), [([300, 500], 120), ([400, 200, 300], 50), ([50, 50], 50), ([1, 1], 1)])
def test_matches_plain_intersection_and_shared_order(sizes: list[int], common: int) -> None:
    rng = np.random.default_rng(sum(sizes))
    parties, truth = _random_parties(rng, sizes, common)
    peers = {f"p{k}": ids for k, ids in enumerate(parties[1:], start=1)}
    hub_rows, peer_rows, _ = _protocol(parties[0], peers, order_seed=7)
    hub_ids = [parties[0][i] for i in hub_rows]
    assert set(hub_ids) == truth and len(hub_ids) == len(truth)
    for k, name in enumerate(peers, start=1):
        assert [parties[k][i] for i in peer_rows[name]] == hub_ids  # element-wise: one shared order
        assert peer_rows[name].dtype == np.int64 and hub_rows.dtype == np.int64


def test_order_reproducible_with_fresh_secrets_and_not_trivial() -> None:
    rng = np.random.default_rng(1)
    (a, b), truth = _random_parties(rng, [200, 150], 100)
    runs = [run_local(a, {"p": b}, order_seed=3) for _ in range(2)]
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1]["p"], runs[1][1]["p"])
    hub_rows, peer_rows = runs[0][0], runs[0][1]["p"]
    shared = [a[i] for i in hub_rows]
    # Not any party's row order, nor sorted IDs: a seeded permutation of the sorted intersection.
    assert not np.array_equal(hub_rows, np.sort(hub_rows))
    assert not np.array_equal(peer_rows, np.sort(peer_rows))
    assert shared != sorted(shared)
    # The order depends on the set of IDs and the seed only: other row orders give the same ID order ...
    a2, b2 = list(reversed(a)), sorted(b)
    rows2, peers2 = run_local(a2, {"p": b2}, order_seed=3)
    assert [a2[i] for i in rows2] == shared == [b2[i] for i in peers2["p"]]
    # ... and another seed gives another order.
    rows3, _ = run_local(a, {"p": b}, order_seed=4)
    assert sorted(rows3.tolist()) == sorted(hub_rows.tolist()) and not np.array_equal(rows3, hub_rows)


def test_peer_sends_in_secret_order_and_retry_is_idempotent() -> None:
    ids = [f"user{i}" for i in range(100)]
    hub = PSIHub(ids, order_seed=0)
    peer = PSIPeer(ids)
    sent = hub.blinded_ids()
    r1, own1 = peer.respond(sent)
    r2, own2 = peer.respond(sent)
    assert r1 == r2 and own1 == own2
    hub.add_peer("p", r1, own1)
    hub_rows, positions = hub.finish()
    assert not np.array_equal(positions["p"], hub_rows)  # positions are not the peer's rows
    assert np.array_equal(peer.rows_from_positions(positions["p"]), hub_rows)  # same IDs, same rows here
    assert hub.finish()[0] is hub_rows  # finish is idempotent


def test_x25519_blinding_commutes() -> None:
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    for value in ["alice", "42", "\u00e9"]:
        p = psi.hash_to_point(value)
        ab = b.exchange(X25519PublicKey.from_public_bytes(a.exchange(X25519PublicKey.from_public_bytes(p))))
        ba = a.exchange(X25519PublicKey.from_public_bytes(b.exchange(X25519PublicKey.from_public_bytes(p))))
        assert ab == ba and len(ab) == 32
    assert psi.hash_to_point("x") == hashlib.sha512(DOMAIN + b"x").digest()[:32]


def test_kernels_match_cryptography_x25519() -> None:
    """The worker kernels (libsodium via PyNaCl) give exactly cryptography's (OpenSSL's) RFC 7748 X25519 bytes, so
    parties may run either and a kernel swap cannot silently empty an intersection."""
    from flwr_vproto.psi._worker import blind, hash_blind

    key = X25519PrivateKey.generate()
    secret = key.private_bytes_raw()
    ids = [f"user-{i}" for i in range(50)]
    expected = b"".join(key.exchange(X25519PublicKey.from_public_bytes(psi.hash_to_point(s))) for s in ids)
    assert hash_blind(secret, ids, 0, "t") == expected
    rnd = np.random.default_rng(0).integers(0, 256, size=(50, 32), dtype=np.uint8)
    pts = b"".join(bytes(r) for r in rnd)
    want = b"".join(key.exchange(X25519PublicKey.from_public_bytes(bytes(r))) for r in rnd)
    assert blind(secret, pts, 0, "t") == want


def test_canonical_form() -> None:
    assert canonical_ids([5, np.int64(-7), np.uint8(3)]) == ["5", "-7", "3"]
    assert canonical_ids(np.array([1, 2], dtype=np.int32)) == ["1", "2"]
    assert canonical_ids(["  a ", "b\n", np.str_("c")]) == ["a", "b", "c"]
    assert canonical_ids(["e\u0301"]) == ["\u00e9"]  # NFC: decomposed and composed e-acute are one ID
    assert canonical_ids(["05"]) == ["05"]  # strings are never reinterpreted as numbers
    # int 5 on one side and "5" on the other are the same ID.
    hub_rows, peer_rows = run_local([5, 6, 7], {"p": ["7", " 5", "9"]}, order_seed=0)
    assert sorted(zip(hub_rows.tolist(), peer_rows["p"].tolist(), strict=True)) == [(0, 1), (2, 0)]


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        (["a", 5], r"mix types: position 0 is str \('a'\) but position 1 is int \(5\)"),
        ([1, 2, "3"], r"position 0 is int \(1\) but position 2 is str"),
        ([1, 2.0], r"position 1 has unsupported type float \(2.0\)"),
        (["a", float("nan")], r"position 1 has unsupported type float \(nan\)"),
        ([True, 1], r"position 0 has unsupported type bool"),
        ([np.bool_(False)], r"position 0 has unsupported type bool"),
        (["a", None], r"position 1 has unsupported type NoneType"),
        ([b"a"], r"position 0 has unsupported type bytes"),
        (["a", "  "], r"position 1 is an empty string"),
        (np.array([1.5, 2.5]), r"dtype float64 \(position 0: .*1.5"),
        ("abc", r"single str"),
    ],
)
def test_bad_ids(ids, match: str) -> None:
    with pytest.raises(PSIError, match=match):
        canonical_ids(ids)
    with pytest.raises(PSIError, match="hub: "):
        PSIHub(ids, order_seed=0)
    assert issubclass(PSIError, ValueError)


def test_duplicates_reported_with_count_and_examples() -> None:
    with pytest.raises(
        PSIError,
        match=r"peer: 2 ID\(s\) occur more than once \(3 surplus row\(s\) of 7\).*'a' at "
        r"positions \[0, 2, 5\]; '1' at positions \[1, 3\]",
    ):
        PSIPeer(["a", "1", " a", "1", "b", "a\t", "c"])
    with pytest.raises(PSIError, match=r"hub: 1 ID\(s\).*'5' at positions \[0, 1\]"):
        PSIHub([5, np.int64(5)], order_seed=0)
    with pytest.raises(PSIError, match="no IDs"):
        PSIHub([], order_seed=0)


def test_empty_and_small_intersection() -> None:
    with pytest.raises(PSIError, match=r"intersection is empty \(hub: 3 IDs; 'p': 2 IDs, 0 shared with hub\)"):
        run_local(["a", "b", "c"], {"p": ["x", "y"]}, order_seed=0)
    # Pairwise overlaps exist but the three-way intersection is empty.
    with pytest.raises(PSIError, match=r"empty.*'p1': 2 IDs, 1 shared with hub.*'p2': 2 IDs, 1 shared with hub"):
        run_local(["a", "b"], {"p1": ["a", "x"], "p2": ["b", "y"]}, order_seed=0)
    with pytest.raises(PSIError, match=r"2 IDs, below min_intersection=3"):
        run_local(["a", "b", "c"], {"p": ["a", "b"]}, order_seed=0, min_intersection=3)
    with pytest.raises(PSIError, match="min_intersection"):
        PSIHub(["a"], order_seed=0, min_intersection=0)


def test_malformed_messages() -> None:
    hub = PSIHub([f"u{i}" for i in range(10)], order_seed=0)
    peer = PSIPeer([f"u{i}" for i in range(5)])
    sent = hub.blinded_ids()
    reblinded, own = peer.respond(sent)
    with pytest.raises(PSIError, match=r"peer 'p': re-blinded hub points: 319 bytes is not a multiple of 32"):
        hub.add_peer("p", reblinded[:-1], own)
    with pytest.raises(PSIError, match=r"peer 'p': re-blinded hub points: 9 points, expected 10"):
        hub.add_peer("p", reblinded[:-32], own)
    with pytest.raises(PSIError, match=r"peer 'p': blinded peer points: 161 bytes is not a multiple"):
        hub.add_peer("p", reblinded, own + b"x")
    zero = bytes(32)
    with pytest.raises(PSIError, match=r"peer 'p': blinded peer points: point 5 \(0{64}\) is invalid"):
        hub.add_peer("p", reblinded, own + zero)
    low_order = (1).to_bytes(32, "little")  # u = 1 has order 4 on the twist: blinding gives zero
    with pytest.raises(PSIError, match=r"hub's blinded points: point 2 .* is invalid"):
        peer.respond(sent[:64] + low_order + sent[96:])
    with pytest.raises(PSIError, match=r"identical"):
        hub.add_peer("p", reblinded, own + own[:32])
    with pytest.raises(PSIError, match="expected bytes"):
        peer.respond("not bytes")  # type: ignore[arg-type]
    with pytest.raises(PSIError, match="no points"):
        peer.respond(b"")
    hub.add_peer("p", reblinded, own)  # the good reply still works after the bad ones
    with pytest.raises(PSIError, match="already added"):
        hub.add_peer("p", reblinded, own)
    _, positions = hub.finish()
    with pytest.raises(PSIError, match="out of range"):
        peer.rows_from_positions(np.array([5]))
    with pytest.raises(PSIError, match="duplicates"):
        peer.rows_from_positions(np.array([0, 0]))
    assert len(peer.rows_from_positions(positions["p"])) == 5


def test_server_sees_no_ids_and_no_plain_hashes() -> None:
    ids = [f"user-{uuid.UUID(int=i)}" for i in range(200)]
    hub_ids, peer_ids = ids[:150], ids[50:]
    _, _, wire = _protocol(hub_ids, {"p": peer_ids})
    hashes = set()
    for s in ids:
        raw = s.encode()
        for h in (hashlib.sha512(raw).digest(), hashlib.sha512(DOMAIN + raw).digest(), hashlib.sha256(raw).digest()):
            hashes.update({h, h[:32]})
    for msg in wire:
        assert isinstance(msg, bytes) and len(msg) % 32 == 0
        for s in ids:
            assert s.encode() not in msg and s.encode("utf-16-le") not in msg
        points = {msg[i : i + 32] for i in range(0, len(msg), 32)}
        assert not points & hashes
        assert not any(h in msg for h in hashes if len(h) == 64)
    # Blinded values of the same ID differ between the hub's and the peer's messages (different secrets).
    assert not {wire[0][i : i + 32] for i in range(0, len(wire[0]), 32)} & set(
        wire[2][i : i + 32] for i in range(0, len(wire[2]), 32)
    )


def test_worker_pool_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The multi-process path gives the same answer as the in-process one, and its workers are gone afterwards."""
    import subprocess

    from flwr_vproto.psi import _worker

    monkeypatch.setattr(_worker, "MIN_PARALLEL_POINTS", 0)
    started: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def spy(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        started.append(proc)
        return proc

    monkeypatch.setattr(_worker.subprocess, "Popen", spy)
    rng = np.random.default_rng(5)
    (a, b), truth = _random_parties(rng, [300, 250], 120)
    rows, peers = run_local(a, {"p": b}, order_seed=9, workers=2)
    assert started and all(p.returncode == 0 for p in started)  # reaped, exited cleanly
    assert [a[i] for i in rows] == [b[i] for i in peers["p"]] and set(a[i] for i in rows) == truth
    serial_rows, _ = run_local(a, {"p": b}, order_seed=9, workers=1)
    assert np.array_equal(rows, serial_rows)
    # A bad point found inside a worker is reported like one found in-process.
    hub = PSIHub(a, order_seed=0, workers=2)
    sent = hub.blinded_ids()
    with pytest.raises(PSIError, match=r"point 300 \(0{64}\) is invalid"):
        hub.add_peer("p", PSIPeer(b, workers=1).respond(sent)[0], hub.blinded_ids() + bytes(32))


def test_small_inputs_stay_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr_vproto.psi import _worker

    def no_popen(*args, **kwargs):
        raise AssertionError("a worker process was started for a small input")

    monkeypatch.setattr(_worker.subprocess, "Popen", no_popen)
    ids = [f"u{i}" for i in range(1000)]
    rows, peers = run_local(ids, {"p": ids[::-1]}, order_seed=0, workers=2)
    assert len(rows) == 1000


def test_bad_workers() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(PSIError, match="workers"):
            PSIPeer(["a"], workers=bad)  # type: ignore[arg-type]


def test_two_step_protocol_through_saved_state_matches_one_call_protocol() -> None:
    """The deployment flow: every party blinds its own IDs first, then step 2 runs on all parties at once, and each
    message is handled by a fresh object rebuilt from the party's exported state (a fresh process per message)."""
    rng = np.random.default_rng(11)
    parties, truth = _random_parties(rng, [200, 150, 180], 40)
    hub_ids, peers = parties[0], {"p1": parties[1], "p2": parties[2]}
    hub = PSIHub(hub_ids, order_seed=3)
    sent_hub = hub.blinded_ids()
    peer_objs = {name: PSIPeer(ids) for name, ids in peers.items()}
    sent_own = {name: p.blinded_ids() for name, p in peer_objs.items()}
    hub_state, peer_states = hub.export_state(), {n: p.export_state() for n, p in peer_objs.items()}
    # step 2, on both sides, each from saved state
    reblinded = {n: PSIPeer.from_state(peers[n], st).reblind(sent_hub) for n, st in peer_states.items()}
    hub2 = PSIHub.from_state(hub_ids, hub_state, order_seed=3)
    hub2.blind_peers(sent_own)
    # step 3, in yet another process
    hub3 = PSIHub.from_state(hub_ids, hub2.export_state(), order_seed=3)
    for n, r in reblinded.items():
        hub3.add_peer(n, r)
    rows, positions = hub3.finish()
    assert {hub_ids[i] for i in rows} == truth
    for n, st in peer_states.items():
        own_rows = PSIPeer.from_state(peers[n], st).rows_from_positions(positions[n])
        assert [peers[n][i] for i in own_rows] == [hub_ids[i] for i in rows]
    # same shared order as the one-call protocol with fresh secrets
    one_call, _, _ = _protocol(hub_ids, peers, order_seed=3)
    assert np.array_equal(one_call, rows)


def test_two_step_protocol_errors() -> None:
    hub = PSIHub(["a", "b", "c"], order_seed=0)
    peer = PSIPeer(["b", "c", "d"])
    sent = hub.blinded_ids()
    with pytest.raises(PSIError, match="before its own points were blinded"):
        hub.add_peer("p", peer.reblind(sent))
    hub.blind_peer("p", peer.blinded_ids())
    with pytest.raises(PSIError, match="already blinded"):
        hub.blind_peer("p", peer.blinded_ids())
    hub.blind_peer("q", PSIPeer(["a"]).blinded_ids())
    hub.add_peer("p", peer.reblind(sent))
    with pytest.raises(PSIError, match=r"before add_peer\(\) for \['q'\]"):
        hub.finish()
    with pytest.raises(PSIError, match="not a permutation"):
        PSIPeer.from_state(["x", "y"], {**peer.export_state()})  # state of a 3-row party for a 2-row one
    with pytest.raises(PSIError, match="secret"):
        PSIHub.from_state(["a"], {}, order_seed=0)
    assert PSIPeer.from_state(["b", "c", "d"], peer.export_state()).blinded_ids() == peer.blinded_ids()
