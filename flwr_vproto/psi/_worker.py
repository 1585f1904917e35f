"""Hashing and X25519 scalar multiplication in bulk, in-process or in a pool of worker processes.

This file imports only the standard library and PyNaCl and also runs as a script (the worker), so that:

* workers start fast (~0.15 s): no NumPy, no package ``__init__`` (which may pull in PyTorch);
* no ``fork``: parties run inside Flower/Ray/gRPC/PyTorch processes full of threads, and forking such a process can
  deadlock the child; Python 3.12+ warns about it and 3.14 stopped defaulting to it;
* no ``spawn``/``forkserver`` either: those re-run the user's ``__main__`` in every worker and break scripts without an
  ``if __name__ == "__main__"`` guard.

Workers are plain subprocesses of ``python -P this_file`` talking length-prefixed pickles over their stdin and a
private copy of their stdout; they exit on EOF, so they never outlive the pool (nor a crashed parent).
The scalar multiplication is libsodium's ``crypto_scalarmult`` (X25519 of RFC 7748, through PyNaCl, the Python
Cryptographic Authority's binding). It gives exactly the bytes of ``cryptography``'s ``X25519PrivateKey.exchange``
(a test checks this) but takes the peer's point as raw bytes: ``cryptography`` needs a ``X25519PublicKey`` object per
point, whose construction costs ~2.2 us on top of the ~31 us multiplication, 7 % of the whole protocol's CPU.
Both hold the GIL, so threads would not help; processes are the only way to use every core.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any

from nacl.bindings import crypto_scalarmult
from nacl.exceptions import CryptoError

DOMAIN: bytes = b"flwr_vproto/psi/v1\x00"
"""Domain separator hashed in front of every ID, so our points never coincide with another protocol's hashes."""

POINT_BYTES = 32

MIN_PARALLEL_POINTS = 20_000
"""Below this many scalar multiplications per call, work stays in-process: starting workers costs ~0.2 s, about what
one core needs for 6k multiplications, so a pool only pays off well above that."""

CHUNKS_PER_WORKER = 4
"""Several chunks per worker keep cores busy when one is shared with another process, at negligible dispatch cost."""

MAX_CHUNK = 20_000
"""Chunk size cap: bounds a worker's memory (~10 MiB) whatever the input size, and the time a core may idle at the
end of a batch while another finishes its last chunk (~0.6 s of work per chunk)."""


class KernelError(ValueError):
    """A point could not be multiplied (low-order or all-zero); the message names the message and position."""


# --------------------------------------------------------------------------------------------------------------------
# Kernels: one key per chunk, one list comprehension of C calls per point, one bytes result.


def hash_to_point(canonical_id: str) -> bytes:
    """X25519 u-coordinate of one canonical ID: the first 32 bytes of SHA-512(DOMAIN || utf-8 ID).

    Every 32-byte string is a valid X25519 input (a point of the curve or of its twist, both with a small cofactor),
    and clamped scalars are multiples of that cofactor, so blinding commutes for every hashed point.
    """
    return hashlib.sha512(DOMAIN + canonical_id.encode("utf-8")).digest()[:POINT_BYTES]


def _locate_failure(secret: bytes, points: Sequence[bytes], offset: int, what: str) -> KernelError:
    """Slow path after a batch failed: find the first bad point so the error names its position."""
    for i, p in enumerate(points):
        try:
            crypto_scalarmult(secret, p)
        except CryptoError:
            return KernelError(f"{what}: point {offset + i} ({p.hex()}) is invalid, e.g. low-order or zero")
    return KernelError(f"{what}: scalar multiplication failed")


def hash_blind(secret: bytes, ids: list[str], offset: int, what: str) -> bytes:
    """``[k]H(id)`` for each ID, packed 32 bytes each, in input order."""
    mult = crypto_scalarmult
    sha512 = hashlib.sha512
    dom = DOMAIN
    try:
        return b"".join([mult(secret, sha512(dom + s.encode()).digest()[:32]) for s in ids])
    except CryptoError:  # a hashed point is low-order with probability ~2^-250; explicit rather than impossible
        raise _locate_failure(secret, [hash_to_point(s) for s in ids], offset, what) from None


def blind(secret: bytes, points: bytes, offset: int, what: str) -> bytes:
    """``[k]P`` for each packed 32-byte point ``P`` received from another party, in input order."""
    mult = crypto_scalarmult
    try:
        return b"".join([mult(secret, points[i : i + 32]) for i in range(0, len(points), 32)])
    except CryptoError:  # libsodium refuses low-order input points (and an all-zero result)
        pts = [points[i : i + 32] for i in range(0, len(points), 32)]
        raise _locate_failure(secret, pts, offset, what) from None


# a kernel: (secret, items, offset of the first item, what) -> packed points; items are IDs or packed points
Kernel = Callable[[bytes, Any, int, str], bytes]
KERNELS: dict[str, Kernel] = {"hash_blind": hash_blind, "blind": blind}


# --------------------------------------------------------------------------------------------------------------------
# Jobs and the pool


class Job:
    """One batch: a kernel name, the secret, the items (``list[str]`` IDs or packed ``bytes`` points) and a label."""

    def __init__(self, kernel: str, secret: bytes, items: list[str] | bytes, what: str):
        self.kernel, self.secret, self.items, self.what = kernel, secret, items, what
        self.n = len(items) // POINT_BYTES if isinstance(items, bytes) else len(items)

    def run(self) -> bytes:
        """The whole batch in this process."""
        return KERNELS[self.kernel](self.secret, self.items, 0, self.what)

    def chunks(self, size: int) -> list[tuple[str, bytes, Any, int, str]]:
        """Picklable tasks of at most ``size`` items, each with the index of its first item (for error messages)."""
        step = POINT_BYTES if isinstance(self.items, bytes) else 1
        return [
            (self.kernel, self.secret, self.items[i * step : (i + size) * step], i, self.what)
            for i in range(0, self.n, size)
        ]


def cpu_count() -> int:
    """Cores this process may use: the affinity mask where the OS has one (containers, taskset), else cpu_count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_jobs(jobs: list[Job], workers: int) -> list[bytes]:
    """Results of every job, computed across ``workers`` processes when the batch is large enough.

    One pool serves all jobs of a call (a peer's two batches share it) and is closed before returning.
    """
    total = sum(j.n for j in jobs)
    # Frozen or embedded interpreters have no ``python`` to start workers with: stay in-process there.
    if workers <= 1 or total < MIN_PARALLEL_POINTS or not sys.executable or getattr(sys, "frozen", False):
        return [j.run() for j in jobs]
    size = min(MAX_CHUNK, max(1024, math.ceil(total / (workers * CHUNKS_PER_WORKER))))
    tasks = [t for j in jobs for t in j.chunks(size)]
    with WorkerPool(min(workers, len(tasks))) as pool:
        results = pool.map(tasks)
    out, k = [], 0
    for j in jobs:
        m = math.ceil(j.n / size)
        out.append(b"".join(results[k : k + m]))
        k += m
    return out


def _write(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(len(data).to_bytes(8, "little"))
    stream.write(data)
    stream.flush()


def _read(stream: IO[bytes]) -> Any:
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError
    size = int.from_bytes(header, "little")
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)  # only ever from our own parent/worker process


class WorkerPool:
    """``n`` worker subprocesses, fed by one parent thread each (pipe I/O releases the GIL)."""

    def __init__(self, n: int):
        env = dict(os.environ)
        # The worker must import the same PyNaCl as the parent, even if the parent's sys.path was edited.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        cmd = [sys.executable, "-P", os.path.abspath(__file__), "--psi-worker"]
        self._procs: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(n):
                self._procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(kill=exc_type is not None)

    def map(self, tasks: list[tuple[str, bytes, Any, int, str]]) -> list[bytes]:
        """Results in task order; tasks are handed out one at a time to whichever worker is free."""
        results: list[bytes | None] = [None] * len(tasks)
        errors: list[BaseException] = []
        lock = threading.Lock()
        next_task = iter(range(len(tasks)))

        def feed(proc: subprocess.Popen[bytes]) -> None:
            assert proc.stdin is not None and proc.stdout is not None
            while not errors:
                with lock:
                    i = next(next_task, None)
                if i is None:
                    return
                try:
                    _write(proc.stdin, tasks[i])
                    ok, value = _read(proc.stdout)
                except (EOFError, OSError, ValueError) as exc:  # ValueError: pipe closed under us by close()
                    errors.append(RuntimeError(f"PSI worker {proc.pid} died (exit code {proc.poll()}): {exc!r}"))
                    return
                if ok:
                    results[i] = value
                else:
                    errors.append(KernelError(value))
                    return

        threads = [threading.Thread(target=feed, args=(p,), daemon=True) for p in self._procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results  # type: ignore[return-value]

    def close(self, kill: bool = False) -> None:
        """EOF tells each worker to exit; one that does not within a few seconds is killed. Always reaps.

        ``kill=True`` (the caller is unwinding an error or Ctrl-C) kills at once: results are no longer wanted, and a
        worker blocked writing a result nobody reads would otherwise hold the caller for the grace period.
        """
        for p in self._procs:
            if kill and p.poll() is None:
                p.kill()
        for p in self._procs:
            try:
                if p.stdin is not None:
                    p.stdin.close()
            except OSError:
                pass
        for p in self._procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        self._procs = []


def _worker_main() -> None:
    """Serve tasks from stdin until EOF. Results go to a private copy of stdout so that stray prints cannot corrupt
    the stream; Ctrl-C is left to the parent, which closes the pipes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    while True:
        try:
            kernel, secret, items, offset, what = _read(inp)
        except EOFError:
            return
        reply: tuple[bool, bytes | str]
        try:
            reply = (True, KERNELS[kernel](secret, items, offset, what))
        except KernelError as exc:
            reply = (False, str(exc))
        _write(out, reply)


if __name__ == "__main__" and sys.argv[1:] == ["--psi-worker"]:
    _worker_main()
