"""How many threads the in-process engine and the tools use (README "Threads").

PyTorch (and the BLAS/OpenMP libraries under numpy and scikit-learn) start one thread per core. The models here are
small: a batch's matrix products are too short to gain from being split across cores, and on a machine another job
shares, every split op waits for its slowest thread, which waits for a core. Measured on 2 cores (README "Threads"),
``engine=inprocess dataset=adult num_rounds=5`` ran as fast on 1 thread as on 2 when idle and faster on 1 with one
busy process beside it, with the same accuracy; so the default is :data:`DEFAULT_THREADS`.

The rule, in order:

1. an explicit number (``runner.threads=N``, or a parallel launcher's share: :func:`flwr_vproto.sweeps.job_threads`);
2. ``OMP_NUM_THREADS`` set by the user: their number stands, nothing is changed;
3. otherwise :data:`DEFAULT_THREADS`.

``engine=flower`` is left alone: Ray already gives each simulated party ``runner.client_num_cpus`` threads. A
ServerApp of your own launched with Flower's ``run_simulation`` gets the same from :func:`simulation_backend`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

DEFAULT_THREADS = 1
"""Threads of the in-process engine and the tools unless told otherwise (measured: README "Threads")."""

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
"""Read by OpenMP, MKL and OpenBLAS when they load, here and in every child process (Ray workers)."""

_SET: dict[str, str] = {}  # what bound_threads wrote, so that the next job of a sweep in this process is not
#                            mistaken for a user's OMP_NUM_THREADS


def default_threads(environ: Mapping[str, str] | None = None) -> int | None:
    """The policy's number when nothing explicit was asked for: ``None`` if the user set ``OMP_NUM_THREADS`` (their
    choice stands), else :data:`DEFAULT_THREADS`."""
    env = os.environ if environ is None else environ
    users = env.get("OMP_NUM_THREADS", "").strip()
    return None if users and users != _SET.get("OMP_NUM_THREADS") else DEFAULT_THREADS


def bound_threads(threads: int) -> int:
    """Hold this process to ``threads`` threads: torch's intra-op pool, the BLAS/OpenMP pools already loaded (numpy's
    OpenBLAS, scikit-learn's OpenMP, through threadpoolctl) and, through the environment, every library loaded later
    and every child process. Returns ``threads``.

    torch is not imported here (a second or more): if it is not loaded yet, it reads ``OMP_NUM_THREADS`` when it is.
    """
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    threads = int(threads)
    for var in THREAD_VARS:
        os.environ[var] = _SET[var] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    if "numpy" in sys.modules or "sklearn" in sys.modules:  # their pools were sized when they loaded
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)
    return threads


def apply_default_threads(environ: Mapping[str, str] | None = None) -> int | None:
    """Apply :func:`default_threads` (the tools and the in-process engine call this first); returns the number set,
    or ``None`` when the user's ``OMP_NUM_THREADS`` stands."""
    threads = default_threads(environ)
    return None if threads is None else bound_threads(threads)


def torch_threads() -> int | None:
    """torch's intra-op threads as they are now, or ``None`` if torch is not loaded (for results.json's record)."""
    torch = sys.modules.get("torch")
    return None if torch is None else int(torch.get_num_threads())


def simulation_backend(threads: int | None = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``backend_config`` for Flower's ``run_simulation`` with this package's ClientApp: each SuperNode a Ray actor
    of ``threads`` CPUs and no GPU, ``threads`` by this module's rule (an explicit number, else the user's
    ``OMP_NUM_THREADS``, its outer level when nested, else :data:`DEFAULT_THREADS`).

    Why: Flower's default gives each actor 2 CPUs, so on a 2-core machine one actor runs the parties in turn, each
    on 2 threads; one exchange of ``examples/own_server_app.py`` took minutes instead of seconds (BENCHMARKS.md
    "Your own ServerApp")::

        run_simulation(server_app=app, client_app=client_app, num_supernodes=2, backend_config=simulation_backend())
    """
    if threads is None:
        threads = default_threads(environ)
    if threads is None:  # the user's OMP_NUM_THREADS stands
        users = (os.environ if environ is None else environ)["OMP_NUM_THREADS"]
        try:
            threads = int(users.split(",")[0])
        except ValueError:
            raise ValueError(f"OMP_NUM_THREADS={users!r} is not a number of threads") from None
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return {"client_resources": {"num_cpus": int(threads), "num_gpus": 0.0}}
