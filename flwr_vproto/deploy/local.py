"""A real Flower deployment on loopback: one SuperLink, one SuperNode per party, ``flwr run``, then stop it all.

    flwr-vproto deploy local bank.csv shop.csv --run-config "num_rounds=2"   # your files, the active party's first
    flwr-vproto deploy local --passives 2                # digits cut into per-party CSV files, a try-out
    flwr-vproto deploy local bank.csv shop.csv --serve   # keep it running; submit runs from another shell
    flwr-vproto deploy local --tls                       # TLS + SuperNode authentication (certificates from certs)

One run (``--run-config`` as ``flwr run``'s, over the app's defaults and ``dataset.name="csv"``) goes from ``flwr
run`` to ``results.json`` in ``<workdir>/results``; the run's rounds and summary are printed, and a failed run exits 1
with its last log line (its one-line error). With ``--serve`` nothing is run: the SuperLink and SuperNodes stay up
until Ctrl-C, and the command prints how to submit to them. The app is the Flower app folder written by
:func:`flwr_vproto.deploy.app.write_app` into the workdir: the installed package, no checkout.

Every process gets its own ``FLWR_HOME``; telemetry, update checks and runtime dependency installation are off
(``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` plus ``--disable-runtime-dependency-installation`` on the
SuperLink; SuperNodes install nothing unless given ``--allow-runtime-dependency-installation``), so the apps run
in this Python environment (its ``bin`` first on ``PATH``, where the SuperLink and SuperNodes look for
``flwr-serverapp``/``flwr-clientapp``). Processes are stopped by the PIDs this module started, never by name.
Used by ``tests/test_deployment.py`` and ``benchmarks/bench_engines.py`` too.

Each SuperNode's ``--node-config`` says who it is (see ``flwr_vproto/client_app.py``)::

    role="active" party-index=0 data-path="/data/bank.csv" model-dir="/models"
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flwr_vproto.deploy import flower_bin

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "PYTHONWARNINGS": "ignore",
}
STATUS_EVERY = 30.0  # seconds between two `flwr ls` calls while the SuperLink's log shows no end (LocalDeployment.wait)
ENDED_EVERY = 2.0  # ... and once it shows the end but `flwr ls` does not report it yet


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_party_csvs(folder: Path, num_passive: int = 1, seed: int = 0, max_train_users: int | None = None,
                     dataset: str = "digits") -> list[str]:
    """Each party's rows of a simulated dataset as its own CSV (ID column, features; label on the active party).

    This is the format a real user brings (``dataset.name=csv``); train/val/test rows go into one file, since the
    CSV loader splits users by a keyed hash of their ID.
    """
    import pandas as pd

    from flwr_vproto.config import config_from_dict
    from flwr_vproto.data import load_vertical_dataset

    cfg = config_from_dict({"seed": seed, "dataset": {"name": dataset, "num_passive": num_passive,
                                                      "max_train_users": max_train_users}})
    ds = load_vertical_dataset(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for party in ds.parties:
        parts = [party.split(s) for s in ("train", "val", "test")]
        frame = pd.DataFrame(np.concatenate([p.x for p in parts]),
                             columns=[f"{party.name}_f{j}" for j in range(parts[0].x.shape[1])])
        frame.insert(0, "id", np.concatenate([p.ids for p in parts]))
        if party.role == "active":
            labels = np.concatenate([p.y for p in parts]).astype(object)
            labels[labels < 0] = ""  # unknown label: empty cell
            frame["label"] = labels
        path = folder / f"{party.name}.csv"
        frame.to_csv(path, index=False)
        paths.append(str(path))
    return paths


class RunFailed(RuntimeError):
    """A run that ended without results; ``line`` is its log's last line (for flwr_vproto: its one-line error)."""

    def __init__(self, run_id: int, status: str, log: str) -> None:
        self.run_id, self.status, self.log = run_id, status, log
        said = [ln for ln in (re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in log.splitlines())
                if re.sub(r"^[A-Z]+\s*:", "", ln).strip()]
        self.line = re.sub(r"^[A-Z]+\s*:\s*", "", said[-1]) if said else "(empty log)"
        super().__init__(f"run {run_id} ended ({status or 'status unknown'}) without results: {self.line}\n"
                         f"ServerApp log:\n{log[-4000:]}")


@dataclass
class LocalDeployment:
    """SuperLink + SuperNodes on loopback under ``workdir``; use as a context manager (stops everything).

    ``tls``: a folder made by :func:`flwr_vproto.deploy.certs.make_certs` (``flwr-vproto deploy certs``). The
    SuperLink then serves TLS only (``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile``) with SuperNode
    authentication (``--enable-supernode-auth``); SuperNode ``i`` authenticates with ``node_keys[i]`` (its
    ``.pub`` next to it is registered with ``flwr supernode register`` before it starts) and trusts ``ca.pem``, as
    does the CLI.
    """

    workdir: Path
    node_configs: list[str]
    tls: Path | None = None
    node_keys: list[Path] | None = None
    env: dict[str, str] = field(default_factory=dict)  # extra environment for every process, e.g. OMP_NUM_THREADS
    started: list[subprocess.Popen] = field(default_factory=list)
    supernodes: dict[int, subprocess.Popen] = field(default_factory=dict)
    port: int = 0
    last_run_id: int | None = None  # the run the latest submit() started (its log: self.log(self.last_run_id))
    app: Path | None = None  # the Flower app ``flwr run`` sends; default: written into ``<workdir>/app`` at start

    def _env(self, home: str) -> dict[str, str]:
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {**os.environ, **QUIET_ENV, "PATH": path, **self.env, "FLWR_HOME": str(self.workdir / home)}
        (self.workdir / home).mkdir(parents=True, exist_ok=True)
        return env

    def _spawn(self, args: list[str], home: str, log: str) -> subprocess.Popen:
        out = open(self.workdir / log, "wb")  # noqa: SIM115 - closed with the process in stop()
        proc = subprocess.Popen(args, env=self._env(home), stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir,
                                start_new_session=True)
        self.started.append(proc)
        return proc

    def _superlink_security(self) -> list[str]:
        if self.tls is None:
            return ["--insecure"]
        return ["--ssl-ca-certfile", str(self.tls / "ca.pem"), "--ssl-certfile", str(self.tls / "superlink.pem"),
                "--ssl-keyfile", str(self.tls / "superlink.key"), "--enable-supernode-auth"]

    def supernode_args(self, node_config: str, key: Path | None = None, insecure: bool | None = None) -> list[str]:
        """A ``flower-supernode`` command for this SuperLink: TLS and ``key`` when ``tls`` is set (or forced)."""
        plain = self.tls is None if insecure is None else insecure
        security = ["--insecure"] if plain else ["--root-certificates", str(self.tls / "ca.pem")]  # type: ignore
        if key is not None:
            security += ["--auth-supernode-private-key", str(key)]
        return [flower_bin("flower-supernode"), *security, "--superlink", f"127.0.0.1:{self.port}",
                "--port", str(free_port()), "--node-config", node_config]

    def start(self, timeout: float = 60.0) -> LocalDeployment:
        """Start the SuperLink, wait until it answers, register the SuperNodes' keys (TLS), start the SuperNodes."""
        import httpx

        from flwr_vproto.deploy.app import write_app

        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.app is None:
            self.app = write_app(self.workdir / "app")
        self.port = free_port()
        self._spawn([flower_bin("flower-superlink"), *self._superlink_security(), "--host", "127.0.0.1",
                     "--port", str(self.port), "--disable-runtime-dependency-installation"],
                    "superlink", "superlink.log")
        scheme, verify = ("http", True) if self.tls is None else (
            "https", ssl.create_default_context(cafile=str(self.tls / "ca.pem")))
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                if httpx.get(f"{scheme}://127.0.0.1:{self.port}/health", timeout=1.0, verify=verify).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"SuperLink did not start within {timeout:g} s; see {self.workdir}/superlink.log")
            time.sleep(0.2)
        cli = self.workdir / "cli"
        cli.mkdir(exist_ok=True)
        security = "insecure = true" if self.tls is None else f'root-certificates = "{self.tls / "ca.pem"}"'
        (cli / "config.toml").write_text(
            f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{self.port}"\n'
            f"{security}\n")
        for key in self.node_keys or []:
            self.register(key.with_suffix(".pub"))
        for i in range(len(self.node_configs)):
            self.start_supernode(i)
        return self

    def register(self, public_key: Path) -> int:
        """``flwr supernode register``: allow the SuperNode holding ``public_key``'s private key; its node ID."""
        res = self.flwr("supernode", "register", str(public_key), "loopback", "--format", "json")
        if res.returncode != 0:
            raise RuntimeError(f"flwr supernode register {public_key} failed:\n{res.stdout}\n{res.stderr}")
        return int(json.loads(res.stdout[res.stdout.index("{"):])["node-id"])

    def start_supernode(self, i: int) -> subprocess.Popen:
        """Start (or restart, after :meth:`kill_supernode`) the SuperNode of ``node_configs[i]``."""
        key = self.node_keys[i] if self.node_keys else None
        proc = self._spawn(self.supernode_args(self.node_configs[i], key), f"supernode{i}", f"supernode{i}.log")
        self.supernodes[i] = proc
        return proc

    def try_supernode(self, name: str, args: list[str], timeout: float = 60.0) -> tuple[int, str]:
        """Run a SuperNode expected to be refused (give it ``--max-wait-time``): its exit code and log.

        Not counted among the deployment's processes; killed by its PID if it outlives ``timeout``.
        """
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, env=self._env(name), stdout=out, stderr=subprocess.STDOUT,
                                    cwd=self.workdir, start_new_session=True)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                code = proc.returncode
        return code, log.read_text(errors="replace")

    def kill_supernode(self, i: int) -> None:
        """``SIGKILL`` SuperNode ``i`` and the ClientApp processes it started (its process group): a crash."""
        proc = self.supernodes.pop(i)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        self.started.remove(proc)

    def _check_alive(self) -> None:
        for proc in self.started:
            if proc.poll() is not None:
                exe = proc.args[0] if isinstance(proc.args, list) else proc.args
                raise RuntimeError(f"{Path(str(exe)).name} exited with code {proc.returncode}; logs in "
                                   f"{self.workdir}")

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run the ``flwr`` CLI against this SuperLink (connection ``loopback``)."""
        return subprocess.run([flower_bin("flwr"), *args], env=self._env("cli"), capture_output=True, text=True,
                              timeout=timeout, cwd=self.workdir)

    def run_app(self, run_config: dict[str, Any], results_dir: Path, timeout: float = 300.0,
                app: Path | None = None) -> dict[str, Any]:
        """``flwr run`` an app (default: :attr:`app`, flwr_vproto's) with ``run_config`` overrides; return its
        ``results.json``.

        The app must write ``results.json`` into the run-config's ``app.output-dir``.
        """
        run_id = self.submit(run_config, results_dir, app)
        target = results_dir / "results.json"
        status = self.wait(run_id, timeout, until=target.exists)
        if not target.exists():
            time.sleep(1.0)  # the file is written just before the run finishes; give the filesystem a beat
            if not target.exists():
                raise RunFailed(run_id, status, self.log(run_id))
        return json.loads(target.read_text())

    def submit(self, run_config: dict[str, Any], results_dir: Path, app: Path | None = None) -> int:
        """Start ``flwr run`` with ``run_config`` overrides (``app.output-dir`` = ``results_dir``); its run ID."""
        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in
                             {**run_config, "app.output-dir": str(results_dir)}.items())
        res = self.flwr("run", str(app or self.app), "loopback", "--run-config", overrides, "--format", "json")
        if res.returncode != 0:
            raise RuntimeError(f"flwr run failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        self.last_run_id = int(json.loads(res.stdout[res.stdout.index("{"):])["run-id"])
        return self.last_run_id

    def wait(self, run_id: int, timeout: float, until: Any = None, status_every: float = STATUS_EVERY) -> str:
        """Poll until run ``run_id`` finishes (or ``until()`` is true); its status (``finished:completed`` ...).

        Cheap checks every 0.5 s: ``until`` (e.g. a file's existence) and the SuperLink's log, where Flower writes
        ``Finished task … of run <id>`` once it has recorded the run's end; then ``flwr ls`` gives the status (asked
        again every :data:`ENDED_EVERY` s should it not say finished yet). Without that line ``flwr ls`` is asked only
        every ``status_every`` seconds (a run whose ServerApp died unheard, or other log wording), since each call
        starts the ``flwr`` CLI, over two seconds of CPU: asked every 5 s, the three deployments the tests then ran side
        by side made 57 calls, about an eighth of two cores' time, and 32 with this loop (BENCHMARKS, "Threads on a
        shared machine, and the test suite's wall time").
        """
        deadline = time.monotonic() + timeout
        next_status = time.monotonic()
        status, ended, read = "", False, 0
        while True:
            self._check_alive()
            if until is not None and until():
                return self.run_status(run_id)
            if not ended:
                ended, read = self._ended_in_log(run_id, read)
                if ended:
                    next_status = time.monotonic()
            if time.monotonic() >= next_status:
                status = self.run_status(run_id)
                if status.startswith("finished"):
                    return status
                next_status = time.monotonic() + (ENDED_EVERY if ended else status_every)
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run_id} did not finish within {timeout:g} s (status {status}); logs in "
                                   f"{self.workdir}; ServerApp log:\n{self.log(run_id)[-3000:]}")
            time.sleep(0.5)

    def _ended_in_log(self, run_id: int, read: int) -> tuple[bool, int]:
        """Whether the SuperLink's log, past byte ``read``, says it finished run ``run_id``'s task, and the byte its
        next unread line starts at: each poll reads only the lines written since the last (a file read, no process)."""
        try:
            with open(self.workdir / "superlink.log", "rb") as log:
                log.seek(read)
                added = log.read()
        except OSError:
            return False, read
        lines = added[:added.rfind(b"\n") + 1]  # whole lines only: a line half written is read next time
        return re.search(rb"Finished task \d+ of run %d\b" % run_id, lines) is not None, read + len(lines)

    def log(self, run_id: int) -> str:
        """The run's logs (ServerApp output, errors included)."""
        return self.flwr("log", str(run_id), "loopback", "--show").stdout

    def run_status(self, run_id: int) -> str:
        res = self.flwr("ls", "loopback", "--run-id", str(run_id), "--format", "json")
        try:
            runs = json.loads(res.stdout[res.stdout.index("{"):]).get("runs", [])
            return str(runs[0].get("status", "")) if runs else ""
        except (ValueError, KeyError):
            return ""

    def stop(self) -> None:
        """Stop every process this deployment started, by PID (process group), gently then firmly."""
        for proc in reversed(self.started):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10.0
        for proc in reversed(self.started):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        self.started.clear()

    def __enter__(self) -> LocalDeployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def node_configs(paths: list[str], model_dir: Path | None = None, checkpoint_root: Path | None = None) -> list[str]:
    """``--node-config`` strings: party 0 active, the others passive, each with its own CSV.

    ``checkpoint_root``: each party keeps its checkpoints in its own ``<root>/party<i>`` (node-config
    ``checkpoint-dir``), as separate organisations would.
    """
    out = []
    for i, path in enumerate(paths):
        role = "active" if i == 0 else "passive"
        extra = f' model-dir="{model_dir}"' if model_dir else ""
        extra += f' checkpoint-dir="{checkpoint_root / f"party{i}"}"' if checkpoint_root else ""
        out.append(f'role="{role}" party-index={i} data-path="{path}"{extra}')
    return out


def parse_run_config(values: list[str]) -> dict[str, Any]:
    """``--run-config`` strings (Flower's syntax: ``key=value`` pairs, TOML values) as one dict."""
    from flwr.common.config import parse_config_args

    try:
        return dict(parse_config_args(values))
    except Exception as err:  # noqa: BLE001 - Flower raises several kinds; one line names the option
        raise ValueError(f"--run-config {' '.join(values)!r}: {err}") from None


def serve(dep: LocalDeployment, csvs: list[str]) -> None:
    """Print how to submit runs to ``dep`` (already started), then wait until Ctrl-C or ``SIGTERM``."""
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    previous = signal.signal(signal.SIGTERM, on_signal)
    cli_home = dep.workdir / "cli"
    print(f"SuperLink on 127.0.0.1:{dep.port} ({'TLS' if dep.tls else 'insecure'}), {len(dep.node_configs)} "
          f"SuperNodes ({', '.join(Path(c).name for c in csvs)}); logs in {dep.workdir}", flush=True)
    print(f"connection 'loopback' in {cli_home / 'config.toml'}; from another shell:", flush=True)
    print(f"  FLWR_HOME={cli_home} flwr-vproto deploy submit {dep.app} loopback --run-config "
          f"\"dataset.name='csv' dataset.num_passive={len(csvs) - 1}\"", flush=True)
    print("Ctrl-C stops them all.", flush=True)
    try:
        while not stop["now"]:
            dep._check_alive()
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_local(csvs: list[str], passives: int = 1, run_config: list[str] | None = None, workdir: Path | None = None,
              tls: bool = False, keep_serving: bool = False) -> int:
    """``flwr-vproto deploy local``: start, run once (or serve), stop; 0 when the run completed, 1 (its last log line
    on stderr) when it failed."""
    work = Path(workdir or "vproto-local").expanduser().resolve()
    missing = [p for p in csvs if not Path(p).is_file()]
    if missing:
        raise ValueError(f"{missing[0]}: CSV file not found")
    if len(csvs) == 1:
        raise ValueError("give every party's CSV file (the active party's first), at least two, or none for digits")
    overrides = parse_run_config(run_config or [])
    paths = [str(Path(p).resolve()) for p in csvs] or write_party_csvs(work / "data", passives)
    keys = None
    certs = None
    if tls:
        from flwr_vproto.deploy.certs import make_certs

        made = make_certs(work / "certs", supernodes=[f"party{i}" for i in range(len(paths))], force=True)
        certs, keys = work / "certs", [made[f"party{i}-key"] for i in range(len(paths))]
    settings: dict[str, Any] = {"dataset.name": "csv", "dataset.num_passive": len(paths) - 1, **overrides}
    results_dir = Path(str(settings.pop("app.output-dir", "") or work / "results")).resolve()
    nodes = node_configs(paths, work / "models")
    nodes[0] += f' results-dir="{work / "active"}"'  # the active party's own results.json, scores included
    with LocalDeployment(work / "flwr", nodes, certs, keys) as dep:
        if keep_serving:
            serve(dep, paths)
            return 0
        t0 = time.perf_counter()
        try:
            results = dep.run_app(settings, results_dir, timeout=3600.0)
        except RunFailed as err:  # exit 1 with the run's own last line (its one-line error), as submit does
            print(str(err).splitlines()[0], file=sys.stderr)
            return 1
    from flwr_vproto.results import format_round, format_summary

    num_rounds = int((results.get("config") or {}).get("num_rounds") or len(results["rounds"]))
    for rec in results["rounds"]:
        print(format_round(rec, num_rounds))
    for line in format_summary(results, results_dir / "results.json"):  # what the ServerApp logged last
        print(line)
    print(f"finished in {time.perf_counter() - t0:.1f} s; the active party's own results (its scores): "
          f"{work / 'active' / 'results.json'}; models in {work / 'models'}, logs in {work / 'flwr'}")
    return 0
