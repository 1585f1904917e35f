"""Benchmark flwr_vproto.psi (ECDH-PSI over X25519) against openmined-psi 2.0.6 and the raw X25519 rate.

Each party runs in its own (spawned) process and talks to the parent, which plays the relaying server, over pipes,
so wall time includes message passing and peak RSS is per party. Reported:

* raw X25519 ``exchange`` rate (pre-built public-key objects, nothing else), on one core and on all cores at once,
  measured at the start and at the end of the run (other jobs on a shared machine move it);
* for each size (IDs per party, ``--overlap`` of them shared): wall time, scalar multiplications per second against
  the raw all-core rate, the same per CPU-second against the raw one-core rate (robust to other load on the machine),
  and peak RSS of each party's main process and of its largest worker.

openmined-psi is a benchmark-only dependency (``pip install openmined-psi==2.0.6``): its protocol is one-directional
(the client learns the intersection; the server learns nothing) with P-256 and a RAW (exact) server set; its server
setup and client request are independent, so they run concurrently here, which is the best case for it.

    python benchmarks/bench_psi.py --sizes 10000 100000 --out benchmarks/psi_results.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# --------------------------------------------------------------------------------------------------------------------
# Raw X25519 rate


def _raw_worker(n: int, barrier: Any, out: Any) -> None:
    """Time ``n`` bare ``exchange`` calls on pre-built public keys, after every process is ready."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    key = X25519PrivateKey.generate()
    pubs = [X25519PublicKey.from_public_bytes(hashlib.sha512(b"%d" % i).digest()[:32]) for i in range(n)]
    exchange = key.exchange
    barrier.wait()
    t0 = time.perf_counter()
    for p in pubs:
        exchange(p)
    out.put((n, time.perf_counter() - t0))


def raw_rate(workers: int, n: int) -> float:
    """Exchanges per second summed over ``workers`` processes running at the same time."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_raw_worker, args=(n, barrier, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(k / dt for k, dt in results)


# --------------------------------------------------------------------------------------------------------------------
# Parties (each in its own process; the parent relays)


def make_ids(n: int, overlap: int, party: int, seed: int = 0) -> list[str]:
    """``n`` string IDs, the first ``overlap`` of the universe shared by every party, shuffled per party."""
    shared = np.arange(overlap)
    own = np.arange(overlap + party * (n - overlap), overlap + (party + 1) * (n - overlap))
    values = np.random.default_rng(seed + party).permutation(np.concatenate([shared, own]))
    return [f"user-{v:012d}" for v in values.tolist()]


def _usage() -> dict[str, float]:
    """Peak RSS (MiB) of this process and of its largest reaped child; CPU seconds of both."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "rss_mib": me.ru_maxrss / 1024,
        "worker_rss_mib": kids.ru_maxrss / 1024,
        "cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
    }


def _digest(ids: list[str], rows: Any) -> str:
    """Fingerprint of the IDs in the agreed order, so the parent can check every party agrees without seeing IDs."""
    return hashlib.sha256("\n".join(ids[i] for i in rows).encode()).hexdigest()


def ours_hub(conn: Any, n: int, overlap: int, workers: int | None) -> None:
    from flwr_vproto.psi import PSIHub

    ids = make_ids(n, overlap, 0)
    conn.send("ready")
    conn.recv()  # go
    cpu0, t0 = _usage()["cpu_s"], time.perf_counter()
    hub = PSIHub(ids, order_seed=0, workers=workers)
    conn.send_bytes(hub.blinded_ids())
    t_blind = time.perf_counter() - t0
    reblinded, theirs = conn.recv_bytes(), conn.recv_bytes()
    t1 = time.perf_counter()
    hub.add_peer("p", reblinded, theirs)
    rows, positions = hub.finish()
    conn.send_bytes(positions["p"].tobytes())
    done = time.perf_counter()
    use = _usage()
    conn.send({**use, "cpu_s": use["cpu_s"] - cpu0, "blind_s": t_blind, "match_s": done - t1,
               "size": len(rows), "digest": _digest(ids, rows)})  # fmt: skip


def ours_peer(conn: Any, n: int, overlap: int, workers: int | None) -> None:
    from flwr_vproto.psi import PSIPeer

    ids = make_ids(n, overlap, 1)
    conn.send("ready")
    conn.recv()  # go
    cpu0 = _usage()["cpu_s"]
    peer = PSIPeer(ids, workers=workers)
    hub_points = conn.recv_bytes()
    t0 = time.perf_counter()
    reblinded, own = peer.respond(hub_points)
    t_resp = time.perf_counter() - t0
    conn.send_bytes(reblinded)
    conn.send_bytes(own)
    rows = peer.rows_from_positions(np.frombuffer(conn.recv_bytes(), dtype=np.int64))
    use = _usage()
    conn.send({**use, "cpu_s": use["cpu_s"] - cpu0, "respond_s": t_resp, "size": len(rows),
               "digest": _digest(ids, rows)})  # fmt: skip


def om_server(conn: Any, n: int, overlap: int, workers: int | None) -> None:
    import private_set_intersection.python as psi

    ids = make_ids(n, overlap, 0)
    conn.send("ready")
    n_client = conn.recv()  # go, with the client's set size (public in this protocol)
    cpu0, t0 = _usage()["cpu_s"], time.perf_counter()
    server = psi.server.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(0.0, n_client, ids, psi.DataStructure.RAW)
    conn.send_bytes(setup.SerializeToString())
    t_setup = time.perf_counter() - t0
    request = psi.Request()
    request.ParseFromString(conn.recv_bytes())
    t1 = time.perf_counter()
    conn.send_bytes(server.ProcessRequest(request).SerializeToString())
    t_proc = time.perf_counter() - t1
    use = _usage()
    conn.send({**use, "cpu_s": use["cpu_s"] - cpu0, "setup_s": t_setup, "process_s": t_proc})


def om_client(conn: Any, n: int, overlap: int, workers: int | None) -> None:
    import private_set_intersection.python as psi

    ids = make_ids(n, overlap, 1)
    conn.send("ready")
    conn.recv()  # go
    cpu0, t0 = _usage()["cpu_s"], time.perf_counter()
    client = psi.client.CreateWithNewKey(True)
    conn.send_bytes(client.CreateRequest(ids).SerializeToString())
    t_req = time.perf_counter() - t0
    setup, response = psi.ServerSetup(), psi.Response()
    setup.ParseFromString(conn.recv_bytes())
    response.ParseFromString(conn.recv_bytes())
    t1 = time.perf_counter()
    rows = sorted(client.GetIntersection(setup, response))
    t_int = time.perf_counter() - t1
    use = _usage()
    conn.send({**use, "cpu_s": use["cpu_s"] - cpu0, "request_s": t_req, "intersect_s": t_int, "size": len(rows)})


def _start(target: Any, n: int, overlap: int, workers: int | None) -> tuple[Any, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, n, overlap, workers))
    proc.start()
    assert parent.recv() == "ready"
    return proc, parent


def run_ours(n: int, overlap: int, workers: int | None) -> dict[str, Any]:
    (hp, hub), (pp, peer) = _start(ours_hub, n, overlap, workers), _start(ours_peer, n, overlap, workers)
    t0 = time.perf_counter()
    hub.send("go")
    peer.send("go")
    msg = hub.recv_bytes()
    peer.send_bytes(msg)
    reblinded, own = peer.recv_bytes(), peer.recv_bytes()
    hub.send_bytes(reblinded)
    hub.send_bytes(own)
    peer.send_bytes(hub.recv_bytes())
    h, p = hub.recv(), peer.recv()
    wall = time.perf_counter() - t0
    hp.join()
    pp.join()
    assert h["size"] == p["size"] == overlap and h["digest"] == p["digest"], (h, p)
    return {"wall_s": wall, "mults": 4 * n, "hub": h, "peer": p, "wire_bytes": 3 * n * 32 + 8 * overlap}


def run_openmined(n: int, overlap: int) -> dict[str, Any]:
    (sp, server), (cp, client) = _start(om_server, n, overlap, None), _start(om_client, n, overlap, None)
    t0 = time.perf_counter()
    server.send(n)
    client.send("go")
    setup, request = server.recv_bytes(), client.recv_bytes()
    server.send_bytes(request)
    response = server.recv_bytes()
    client.send_bytes(setup)
    client.send_bytes(response)
    s, c = server.recv(), client.recv()
    wall = time.perf_counter() - t0
    sp.join()
    cp.join()
    assert c["size"] == overlap, c
    return {"wall_s": wall, "mults": 4 * n, "hub": s, "peer": c, "wire_bytes": len(setup) + len(request) + len(response)}


# --------------------------------------------------------------------------------------------------------------------
# Report


def _fmt_size(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def render(res: dict[str, Any]) -> str:
    raw1, rawall = res["raw_single"], res["raw_all"]
    lines = [
        f"Command: `{res['command']}`",
        "",
        f"Machine: {res['machine']}; workers = {res['workers']}; load average before/after: "
        f"{res['load_before']} / {res['load_after']} (other jobs shared these cores).",
        "",
        "Raw X25519 `exchange` (pre-built public keys, nothing else), start / end of run: "
        + f"one core {raw1[0]:,.0f} / {raw1[1]:,.0f} per s; all {res['workers']} cores "
        + f"{rawall[0]:,.0f} / {rawall[1]:,.0f} per s.",
        "",
        "| IDs per party | implementation | wall s | mults/s | vs raw all-core | mults per CPU-s vs raw 1-core "
        "| speed-up vs openmined | peak RSS hub / peer MiB (largest worker) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    raw_all = float(np.mean(rawall))
    raw_one = float(np.mean(raw1))
    for row in res["rows"]:
        n = row["n"]
        for impl in ("ours", "openmined"):
            r = row.get(impl)
            if r is None:
                continue
            rate = r["mults"] / r["wall_s"]
            cpu = r["hub"]["cpu_s"] + r["peer"]["cpu_s"]
            speed = ""
            if impl == "ours" and row.get("openmined"):
                speed = f"{row['openmined']['wall_s'] / r['wall_s']:.1f}x"
            mem = (
                f"{r['hub']['rss_mib']:.0f} ({r['hub']['worker_rss_mib']:.0f}) / "
                f"{r['peer']['rss_mib']:.0f} ({r['peer']['worker_rss_mib']:.0f})"
            )
            lines.append(
                f"| {_fmt_size(n)} | {'flwr_vproto.psi' if impl == 'ours' else 'openmined-psi 2.0.6'} "
                f"| {r['wall_s']:.2f} | {rate:,.0f} | {rate / raw_all:.0%} | {r['mults'] / cpu / raw_one:.0%} "
                f"| {speed} | {mem} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--overlap", type=float, default=0.5, help="share of each party's IDs in the intersection")
    ap.add_argument("--workers", type=int, default=None, help="worker processes per party (default: all cores)")
    ap.add_argument("--skip-openmined", action="store_true")
    ap.add_argument("--raw-n", type=int, default=100_000, help="exchanges per process for the raw rate")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    ap.add_argument("--json", type=Path, default=None, help="write raw numbers here")
    args = ap.parse_args()

    from flwr_vproto.psi._worker import cpu_count

    workers = args.workers or cpu_count()
    res: dict[str, Any] = {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "workers": workers,
        "load_before": "%.2f %.2f %.2f" % os.getloadavg(),
        "rows": [],
    }
    res["raw_single"] = [raw_rate(1, args.raw_n)]
    res["raw_all"] = [raw_rate(workers, args.raw_n)]
    print(f"raw: 1 core {res['raw_single'][0]:,.0f}/s, {workers} cores {res['raw_all'][0]:,.0f}/s", flush=True)
    for n in args.sizes:
        overlap = int(round(n * args.overlap))
        row: dict[str, Any] = {"n": n, "ours": run_ours(n, overlap, args.workers)}
        print(f"{n}: ours {row['ours']['wall_s']:.2f}s", json.dumps(row["ours"]), flush=True)
        if not args.skip_openmined:
            row["openmined"] = run_openmined(n, overlap)
            print(f"{n}: openmined {row['openmined']['wall_s']:.2f}s", json.dumps(row["openmined"]), flush=True)
        res["rows"].append(row)
    res["raw_single"].append(raw_rate(1, args.raw_n))
    res["raw_all"].append(raw_rate(workers, args.raw_n))
    res["load_after"] = "%.2f %.2f %.2f" % os.getloadavg()
    table = render(res)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
