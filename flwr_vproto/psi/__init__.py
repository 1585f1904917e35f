"""ECDH private set intersection over X25519 (design §5). No Flower: the strategy relays the bytes.

Protocol (semi-honest parties; the server relays every message and sees only blinded points):

1. Every party hashes each of its IDs to an X25519 u-coordinate ``H(x)`` and blinds it with its own secret, at the
   same time and independently: the hub (active party, secret ``a``) sends ``[a]H(x)`` in its own row order
   (:meth:`PSIHub.blinded_ids`); each peer (passive party, secret ``b``) sends ``[b]H(y)`` in a fresh random order
   that only it knows (:meth:`PSIPeer.blinded_ids`).
2. Again at the same time: each peer re-blinds the hub's points -> ``[b][a]H(x)``, same order
   (:meth:`PSIPeer.reblind`), and the hub blinds each peer's points -> ``[a][b]H(y)`` (:meth:`PSIHub.blind_peer`).
   X25519 scalar multiplication commutes, so ``x == y`` exactly when the doubly blinded values match.
3. The hub matches (:meth:`PSIHub.add_peer`), intersects over all peers and fixes one shared order of the
   intersection that depends only on the set of IDs and ``order_seed`` (the hub's sorted canonical ID strings, then a
   seeded permutation), so runs with fresh secrets agree (:meth:`PSIHub.finish`). It returns, per peer, positions into
   the order the peer *sent*; only the peer can map them back to its rows (:meth:`PSIPeer.rows_from_positions`).

Every party does half of its multiplications in step 1 and half in step 2, and no step waits for another party's
multiplications of the same step: on separate machines the protocol takes two rounds of ``n`` multiplications per
party instead of three sequential ones. :meth:`PSIPeer.respond` does steps 1 and 2 of a peer in one call.
Between messages (a deployment runs every message in a fresh process) each party keeps its side with
:meth:`PSIHub.export_state` / :meth:`PSIHub.from_state` and the same on :class:`PSIPeer`.

What each side learns: the hub learns the size of each peer's set and of its pairwise intersection with each peer
(it matches per peer); a peer learns the hub's set size and which of its rows are in the final intersection; the
server learns set sizes and the intersection size. Nobody sees another party's row order.

Speed: a scalar multiplication costs ~31 us in libsodium and the per-point Python overhead ~1 us, so large batches
are cut into chunks for worker processes, one per core (the binding holds the GIL: threads do not help); each worker
builds its key once per chunk (see :mod:`flwr_vproto.psi._worker` for why workers are plain subprocesses, not
``fork``). Small batches stay in-process. Points travel and are stored as one ``bytes`` / ``(n, 32) uint8`` array,
never a list of objects, and matching is a vectorised sort/search on a 64-bit prefix with a full 32-byte check.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from flwr_vproto.psi._worker import DOMAIN, POINT_BYTES, Job, KernelError, cpu_count, hash_to_point, run_jobs

__all__ = ["DOMAIN", "POINT_BYTES", "PSIError", "PSIHub", "PSIPeer", "canonical_ids", "hash_to_point", "run_local"]


class PSIError(ValueError):
    """PSI input or message is invalid (bad ID type, duplicates, malformed point, too small an intersection)."""


# --------------------------------------------------------------------------------------------------------------------
# Canonical IDs


def _show(value: Any) -> str:
    """Short repr for error messages: IDs can be long, and one bad ID should not flood a log."""
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def _kind(value: Any) -> str | None:
    """``'str'`` or ``'int'`` for an acceptable ID, else ``None``. ``bool`` is an ``int`` subclass and is refused."""
    if isinstance(value, str):
        return "str"
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return "int"
    return None


def canonical_ids(ids: Iterable[Any]) -> list[str]:
    """The one canonical string form of each ID, the form that is hashed.

    Accepted: all ``str`` or all integers (Python or NumPy) in one party. Integers become their base-10 string (so
    ``5``, ``np.int64(5)`` and ``"5"`` are the same ID); strings are stripped of surrounding whitespace and
    NFC-normalised (so visually identical Unicode spellings match). Strings are never reinterpreted as numbers:
    ``"05"`` and ``5`` differ. Refused with :class:`PSIError` naming the value and its position: a mix of ``str`` and
    integers (usually a parsing bug on one side, which would silently shrink the intersection), floats (``5.0`` vs
    ``5`` is ambiguous, NaN is not an ID), bools, ``None``, bytes, and strings that are empty after stripping.
    Duplicates are not checked here (see :func:`_check_unique`).
    """
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise PSIError(f"IDs must be one-dimensional, got an array of shape {ids.shape}")
        if ids.dtype.kind in "iu":
            return [str(v) for v in ids.tolist()]  # fast path: tolist() yields Python ints
        if ids.dtype.kind not in "UO":
            bad = ids[0] if len(ids) else None
            raise PSIError(f"IDs must be str or int; got an array of dtype {ids.dtype} (position 0: {_show(bad)})")
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)):
        raise PSIError(f"IDs must be a sequence of IDs, got a single {type(ids).__name__}")
    out: list[str] = []
    first_kind: str | None = None
    first_pos = -1
    normalize = unicodedata.normalize
    for pos, value in enumerate(ids):
        kind = _kind(value)
        if kind is None:
            raise PSIError(
                f"ID at position {pos} has unsupported type {type(value).__name__} ({_show(value)}); "
                "IDs must be all str or all int"
            )
        if first_kind is None:
            first_kind, first_pos = kind, pos
        elif kind != first_kind:
            first_val = out[first_pos] if first_kind == "int" else repr(out[first_pos])
            raise PSIError(
                f"IDs mix types: position {first_pos} is {first_kind} ({first_val}) but position {pos} is "
                f"{kind} ({_show(value)}); convert all IDs to one type first"
            )
        if kind == "int":
            out.append(str(int(value)))
        else:
            s = normalize("NFC", value.strip())
            if type(s) is not str:  # np.str_ and other subclasses: plain str pickles and hashes fastest
                s = str(s)
            if not s:
                raise PSIError(f"ID at position {pos} is an empty string ({_show(value)})")
            out.append(s)
    return out


def _check_unique(ids: list[str], who: str) -> None:
    """Refuse duplicate IDs: one ID on two rows cannot be aligned to one row of another party."""
    if len(set(ids)) == len(ids):
        return
    positions: dict[str, list[int]] = {}
    for pos, value in enumerate(ids):
        positions.setdefault(value, []).append(pos)
    dups = {v: p for v, p in positions.items() if len(p) > 1}
    surplus = sum(len(p) - 1 for p in dups.values())
    examples = "; ".join(f"{_show(v)} at positions {p[:5]}" for v, p in list(dups.items())[:3])
    raise PSIError(
        f"{who}: {len(dups)} ID(s) occur more than once ({surplus} surplus row(s) of {len(ids)}) after "
        f"canonicalisation (strip, NFC, int->str), e.g. {examples}"
    )


def _prepare(ids: Iterable[Any], who: str) -> list[str]:
    """Canonicalise and check one party's IDs; the error names the party."""
    try:
        canon = canonical_ids(ids)
    except PSIError as exc:
        raise PSIError(f"{who}: {exc}") from None
    if not canon:
        raise PSIError(f"{who}: no IDs")
    _check_unique(canon, who)
    return canon


def _resolve_workers(workers: int | None) -> int:
    """``None`` = every core this process may use."""
    if workers is None:
        return cpu_count()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise PSIError(f"workers must be a positive int or None, got {_show(workers)}")
    return workers


def _run(jobs: list[Job], workers: int) -> list[bytes]:
    """Run the batches; a bad point surfaces as :class:`PSIError` whether it failed in-process or in a worker."""
    try:
        return run_jobs(jobs, workers)
    except KernelError as exc:
        raise PSIError(str(exc)) from None


def _new_secret() -> bytes:
    """A fresh X25519 secret for one party and one run (OS randomness)."""
    return X25519PrivateKey.generate().private_bytes_raw()


def _as_points(buf: Any, what: str, expected: int | None = None) -> bytes:
    """Validate a received message of packed points: bytes-like, a multiple of 32 bytes, optionally a given count."""
    if isinstance(buf, np.ndarray):
        if buf.dtype != np.uint8:
            raise PSIError(f"{what}: expected uint8 points, got an array of dtype {buf.dtype}")
        buf = buf.tobytes()
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise PSIError(f"{what}: expected bytes of packed 32-byte points, got {type(buf).__name__}")
    buf = bytes(buf)
    if len(buf) % POINT_BYTES:
        raise PSIError(f"{what}: {len(buf)} bytes is not a multiple of {POINT_BYTES} (malformed or truncated)")
    n = len(buf) // POINT_BYTES
    if expected is not None and n != expected:
        raise PSIError(f"{what}: {n} points, expected {expected}")
    if n == 0:
        raise PSIError(f"{what}: no points")
    return buf


def _to_array(buf: bytes) -> np.ndarray:
    """Packed points as an ``(n, 32) uint8`` view (no copy)."""
    return np.frombuffer(buf, dtype=np.uint8).reshape(-1, POINT_BYTES)


def _check_distinct(table: np.ndarray, what: str) -> None:
    """Refuse a message with two identical points: distinct IDs always blind to distinct points."""
    key = np.ascontiguousarray(table).view(np.uint64)[:, 0]
    order = np.argsort(key, kind="stable")
    same = np.flatnonzero(key[order][1:] == key[order][:-1])
    for i in same:  # equal 64-bit prefixes (~n^2/2^65 by chance): compare the whole points
        a, b = order[i], order[i + 1]
        if np.array_equal(table[a], table[b]):
            raise PSIError(f"{what}: points {min(a, b)} and {max(a, b)} are identical (duplicate points in the "
                           "message)")


def _match(queries: np.ndarray, table: np.ndarray) -> np.ndarray:
    """For each query row, the index of the equal row of ``table`` (distinct rows), or -1.

    Vectorised: sort the table by its first 8 bytes, binary-search the queries, then compare all 32 bytes of each
    candidate. Blinded points are uniformly random, so equal prefixes within the table (probability ~n^2/2^65) are
    handled by an exact dict fallback rather than risk a missed match.
    """
    tkey = np.ascontiguousarray(table).view(np.uint64)[:, 0]
    qkey = np.ascontiguousarray(queries).view(np.uint64)[:, 0]
    order = np.argsort(tkey, kind="stable")
    sorted_keys = tkey[order]
    if np.any(sorted_keys[1:] == sorted_keys[:-1]):
        index = {row.tobytes(): j for j, row in enumerate(table)}
        return np.fromiter((index.get(q.tobytes(), -1) for q in queries), dtype=np.int64, count=len(queries))
    idx = np.minimum(np.searchsorted(sorted_keys, qkey), len(sorted_keys) - 1)
    cand = order[idx]
    hit = sorted_keys[idx] == qkey
    hit[hit] = np.all(queries[hit] == table[cand[hit]], axis=1)
    return np.where(hit, cand, -1).astype(np.int64)


# --------------------------------------------------------------------------------------------------------------------
# Parties


class PSIHub:
    """The active party: blinds its IDs, matches every peer's reply, and fixes the shared order of the intersection."""

    def __init__(self, ids: Iterable[Any], *, order_seed: int, min_intersection: int = 1, workers: int | None = None):
        self._ids = _prepare(ids, "hub")
        if isinstance(min_intersection, bool) or not isinstance(min_intersection, int) or min_intersection < 1:
            raise PSIError(f"min_intersection must be an int >= 1, got {_show(min_intersection)}")
        self._order_seed = int(order_seed)
        self._min = min_intersection
        self._workers = _resolve_workers(workers)
        self._secret = _new_secret()
        self._blinded: bytes | None = None
        self._double: dict[str, bytes] = {}  # peer -> [a][b]H(y), in the peer's sent order
        self._matches: dict[str, np.ndarray] = {}  # peer -> for each hub row, position in the peer's sent order or -1
        self._peer_sizes: dict[str, int] = {}
        self._result: tuple[np.ndarray, dict[str, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self._ids)

    def blinded_ids(self) -> bytes:
        """This party's points ``[a]H(x)``, 32 bytes each, in its own row order (computed once, then cached)."""
        if self._blinded is None:
            (self._blinded,) = _run([Job("hash_blind", self._secret, self._ids, "hub: own IDs")], self._workers)
        return self._blinded

    def blind_peers(self, peers: dict[str, bytes]) -> None:
        """Blind each peer's own points ``[b]H(y)`` -> ``[a][b]H(y)`` (step 2), all peers in one batch of work.

        Needs nothing from the peers' step 2, so it runs while they re-blind this party's points.
        """
        if self._result is not None:
            raise PSIError("hub: blind_peers() after finish()")
        checked = {}
        for peer, points in peers.items():
            if peer in self._double:
                raise PSIError(f"hub: peer {peer!r}'s points were already blinded")
            checked[peer] = _as_points(points, f"peer {peer!r}: blinded peer points")
        jobs = [Job("blind", self._secret, pts, f"peer {peer!r}: blinded peer points") for peer, pts in checked.items()]
        for peer, double in zip(checked, _run(jobs, self._workers), strict=True):
            table = _to_array(double)
            _check_distinct(table, f"peer {peer!r}: blinded peer points")
            self._double[peer] = double
            self._peer_sizes[peer] = len(table)

    def blind_peer(self, peer: str, peer_blinded: bytes) -> None:
        """:meth:`blind_peers` for one peer."""
        self.blind_peers({peer: peer_blinded})

    def add_peer(self, peer: str, reblinded_hub: bytes, peer_blinded: bytes | None = None) -> None:
        """Match one peer's re-blinded hub points (step 2) against its blinded points.

        ``peer_blinded``: the peer's own points, when they were not given to :meth:`blind_peer` already.
        """
        if self._result is not None:
            raise PSIError(f"hub: add_peer({peer!r}) after finish()")
        if peer in self._matches:
            raise PSIError(f"hub: peer {peer!r} was already added")
        if self._blinded is None:
            raise PSIError(f"hub: add_peer({peer!r}) before blinded_ids() was sent")
        reblinded = _as_points(reblinded_hub, f"peer {peer!r}: re-blinded hub points", expected=len(self._ids))
        if peer_blinded is not None:
            self.blind_peer(peer, peer_blinded)
        if peer not in self._double:
            raise PSIError(f"hub: add_peer({peer!r}) before its own points were blinded (blind_peer)")
        self._matches[peer] = _match(_to_array(reblinded), _to_array(self._double[peer]))

    def finish(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The intersection over all peers in the shared order.

        Returns ``(hub_rows, {peer: positions})``: hub row indices, and for each peer positions into the order that
        peer *sent* its points in, element-wise the same IDs. The order is the hub's canonical ID strings sorted, then
        permuted by ``np.random.default_rng(order_seed)``: it depends only on the set of IDs and the seed, never on
        the secrets or any party's row order, so reruns with fresh secrets give the same order.
        """
        if self._result is not None:
            return self._result
        if not self._matches:
            raise PSIError("hub: finish() before any add_peer()")
        missing = sorted(set(self._double) - set(self._matches))
        if missing:
            raise PSIError(f"hub: finish() before add_peer() for {missing}")
        in_all = np.ones(len(self._ids), dtype=bool)
        for pos in self._matches.values():
            in_all &= pos >= 0
        rows = np.flatnonzero(in_all)
        if len(rows) < self._min:
            sizes = ", ".join(
                f"{p!r}: {self._peer_sizes[p]} IDs, {int((m >= 0).sum())} shared with hub"
                for p, m in self._matches.items()
            )
            what = "empty" if len(rows) == 0 else f"{len(rows)} IDs, below min_intersection={self._min}"
            raise PSIError(f"intersection is {what} (hub: {len(self._ids)} IDs; {sizes})")
        ids = self._ids
        canonical = np.array(sorted(rows.tolist(), key=ids.__getitem__), dtype=np.int64)
        shared = canonical[np.random.default_rng(self._order_seed).permutation(len(canonical))]
        self._result = (shared, {p: m[shared] for p, m in self._matches.items()})
        return self._result

    def export_state(self) -> dict[str, bytes]:
        """What a later message's process needs to continue (secret, sent points, blinded peer points): keep it with
        this party only (e.g. Flower's ``context.state``), never send it."""
        state = {"secret": self._secret}
        if self._blinded is not None:
            state["blinded"] = self._blinded
        state.update({f"double.{p}": d for p, d in self._double.items()})
        return state

    @classmethod
    def from_state(
        cls, ids: Iterable[Any], state: dict[str, bytes], *, order_seed: int, min_intersection: int = 1,
        workers: int | None = None,
    ) -> PSIHub:
        """The hub of an earlier process, from the same IDs and its :meth:`export_state`."""
        hub = cls(ids, order_seed=order_seed, min_intersection=min_intersection, workers=workers)
        if len(state.get("secret", b"")) != POINT_BYTES:
            raise PSIError("hub state: no 32-byte secret")
        hub._secret = bytes(state["secret"])
        if "blinded" in state:
            hub._blinded = _as_points(state["blinded"], "hub state: sent points", expected=len(hub._ids))
        for key, double in state.items():
            if key.startswith("double."):
                peer = key[len("double."):]
                hub._double[peer] = _as_points(double, f"hub state: blinded points of {peer!r}")
                hub._peer_sizes[peer] = len(hub._double[peer]) // POINT_BYTES
        return hub


class PSIPeer:
    """A passive party: blinds its own IDs in a private order (so the hub never sees its row order) and re-blinds the
    hub's points."""

    def __init__(self, ids: Iterable[Any], *, workers: int | None = None):
        self._ids = _prepare(ids, "peer")
        self._workers = _resolve_workers(workers)
        self._secret = _new_secret()
        # Fresh random order of this party's points; only this party can map positions back to rows.
        self._perm = np.random.default_rng(int.from_bytes(os.urandom(16), "little")).permutation(len(self._ids))
        self._own_blinded: bytes | None = None

    def __len__(self) -> int:
        return len(self._ids)

    def _own_job(self) -> Job:
        shuffled = [self._ids[i] for i in self._perm.tolist()]
        return Job("hash_blind", self._secret, shuffled, "peer: own IDs")

    def blinded_ids(self) -> bytes:
        """``[b]H(y)`` in this party's secret order (step 1; computed once, so a retried message gets the same points
        and order and positions stay valid)."""
        if self._own_blinded is None:
            (self._own_blinded,) = _run([self._own_job()], self._workers)
        return self._own_blinded

    def reblind(self, hub_blinded: bytes) -> bytes:
        """``[b][a]H(x)`` for the hub's points, in the order received (step 2)."""
        hub = _as_points(hub_blinded, "hub's blinded points")
        (out,) = _run([Job("blind", self._secret, hub, "hub's blinded points")], self._workers)
        return out

    def respond(self, hub_blinded: bytes) -> tuple[bytes, bytes]:
        """Steps 1 and 2 in one call: ``([b][a]H(x)`` in the order received, ``[b]H(y)`` in the secret order).

        Both batches share one pool of workers when the own points are not computed yet.
        """
        if self._own_blinded is not None:
            return self.reblind(hub_blinded), self._own_blinded
        hub = _as_points(hub_blinded, "hub's blinded points")
        reblinded, self._own_blinded = _run(
            [Job("blind", self._secret, hub, "hub's blinded points"), self._own_job()], self._workers
        )
        return reblinded, self._own_blinded

    def rows_from_positions(self, positions: np.ndarray) -> np.ndarray:
        """Positions into the order this party sent (from the hub's :meth:`PSIHub.finish`) -> own row indices."""
        pos = np.asarray(positions)
        if pos.ndim != 1 or (pos.size and pos.dtype.kind not in "iu"):
            raise PSIError(f"positions must be a 1-D integer array, got shape {pos.shape} dtype {pos.dtype}")
        pos = pos.astype(np.int64, copy=False)
        if pos.size and (pos.min() < 0 or pos.max() >= len(self._perm)):
            raise PSIError(f"positions out of range [0, {len(self._perm)}): min {pos.min()}, max {pos.max()}")
        if len(np.unique(pos)) != len(pos):
            raise PSIError("positions contain duplicates")
        return self._perm[pos]

    def export_state(self) -> dict[str, bytes]:
        """Secret, private order and sent points, for a later message's process; never sent anywhere."""
        state = {"secret": self._secret, "perm": self._perm.astype(np.int64).tobytes()}
        if self._own_blinded is not None:
            state["blinded"] = self._own_blinded
        return state

    @classmethod
    def from_state(cls, ids: Iterable[Any], state: dict[str, bytes], *, workers: int | None = None) -> PSIPeer:
        """The peer of an earlier process, from the same IDs and its :meth:`export_state`."""
        peer = cls(ids, workers=workers)
        if len(state.get("secret", b"")) != POINT_BYTES:
            raise PSIError("peer state: no 32-byte secret")
        perm = np.frombuffer(bytes(state.get("perm", b"")), dtype=np.int64)
        if len(perm) != len(peer._ids) or not np.array_equal(np.sort(perm), np.arange(len(perm))):
            raise PSIError(f"peer state: the saved order is not a permutation of this party's {len(peer._ids)} rows")
        peer._secret, peer._perm = bytes(state["secret"]), perm.copy()
        if "blinded" in state:
            peer._own_blinded = _as_points(state["blinded"], "peer state: sent points", expected=len(peer._ids))
        return peer


def run_local(
    hub_ids: Iterable[Any],
    peer_ids: dict[str, Iterable[Any]],
    *,
    order_seed: int,
    min_intersection: int = 1,
    workers: int | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The whole protocol in one process (tests, in-process engine): hub rows and each peer's own rows, shared order."""
    hub = PSIHub(hub_ids, order_seed=order_seed, min_intersection=min_intersection, workers=workers)
    peers = {name: PSIPeer(ids, workers=workers) for name, ids in peer_ids.items()}
    sent = hub.blinded_ids()
    for name, peer in peers.items():
        hub.add_peer(name, *peer.respond(sent))
    hub_rows, positions = hub.finish()
    return hub_rows, {name: peers[name].rows_from_positions(positions[name]) for name in peers}
