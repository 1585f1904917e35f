"""What every test module shares: the thread policy of the test process, and the helpers several files use.

**Threads.** PyTorch runs one intra-op thread per core by default. On a small machine that other jobs share, those
threads wait for cores the other jobs hold and the tests crawl (the fast subset: 11 min 48 s against about 2 min
with ``OMP_NUM_THREADS=1``). So the test process follows the package's own policy (``flwr_vproto/threads.py``,
README "Threads") from the start: unless the user set ``OMP_NUM_THREADS``, torch and the BLAS/OpenMP pools get one
thread, and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` are 1 in ``os.environ``, so the
processes the tests start (``run_simulation.py`` sweeps, Ray workers) inherit the bound. A value the user set is
kept. The numbers the tests assert do not depend on it (the engines seed every round; a Ray simulation is compared
with the in-process engine with a tolerance for different thread counts). It is applied in
:func:`pytest_configure`, not at import, so a benchmark that imports these helpers (``benchmarks/bench_wire.py``)
keeps its own threads.

**Two workers.** README's test command runs the suite on two pytest-xdist workers, one test file each at a time
(``--dist loadfile``: a module's fixtures, such as the loopback deployments or the wheel's venv, stay on one
worker). Ray starts its workers at nice 15 (its ``worker_niceness``): next to the other worker's processes (a
deployment's ClientApps, a CPU-bound in-process run, all at nice 0) a Flower simulation's ClientApps then got almost
no CPU and never answered discovery within the reply timeout (2 of the 6 failures of the first two-worker run, and
both simulations run beside the deployments in a check; Ray's logs show the actors created and idle). So
:func:`pytest_configure` sets ``RAY_worker_niceness=0`` unless the user set it: the simulations compete as equals.
It changes scheduling only, never a number.

**Ray's start.** Ray waits a fixed 30 s (``raylet_start_wait_time_s`` in ``ray/_private/node.py``, no setting) for
its raylet to register when a simulation starts; with both workers busy it once did not, and
``test_wire_privacy.py`` failed with "The current node timed out during startup" before any message was sent (one
of the eight full runs logged on the project's 2-core machine, 2026-12-07). pyproject.toml's
``[tool.pytest.ini_options]`` has pytest-rerunfailures run such a test once more, its fixtures set up afresh; the
rule matches that message anywhere in the failure's chain of exceptions (Flower re-raises it as "Simulation Runtime
crashed"), so no other failure is ever retried.

**Helpers.** The in-process Flower grid and the small configs of the protocol tests (:class:`InlineGrid`,
:func:`small_cfg`, :func:`sim_nodes`, :func:`run_inline`, :func:`assert_same_history`), the CSV pair of the data
tests (:func:`write_csvs`), the one table of the split tests (:func:`write_table`), and :func:`import_script` for
the repository's scripts that are not part of the package (``run_simulation.py``, ``benchmarks/*.py``). Test
files import them with ``from conftest import ...`` (pytest puts this folder on ``sys.path`` for its conftest),
instead of importing one test file from another through ``sys.path``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from flwr_vproto import threads
from flwr_vproto.client_app import make_client_app
from flwr_vproto.config import config_from_dict
from flwr_vproto.strategy import VerticalProtoStrategy

REPO = Path(__file__).resolve().parents[1]
SUPERLINK_NODE_ID = 1


# ---------------------------------------------------------------------------------------------------- threads
def pytest_configure(config: pytest.Config) -> None:
    """Before any test runs, the package's own policy (:func:`flwr_vproto.threads.apply_default_threads`, README
    "Threads"): unless the user set ``OMP_NUM_THREADS``, torch, the BLAS/OpenMP pools already loaded and, through
    ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``OPENBLAS_NUM_THREADS``, every process a test starts get one thread."""
    threads.apply_default_threads()
    os.environ.setdefault("RAY_worker_niceness", "0")  # see "Two workers" above


# The slowest test files (BENCHMARKS.md "Threads on a shared machine, and the test suite's wall time"), slowest
# first. On two workers each takes whole files in collection order, so the loopback deployments (minutes) start at
# once, beside everything else, instead of running alone at the end.
SLOWEST_FIRST = ("test_deployment.py", "test_package.py", "test_sweeps.py",
                 "test_report_csv.py", "test_authority.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Collect :data:`SLOWEST_FIRST` first (a stable sort: every file keeps its tests' order)."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True)
def _threads_restored() -> Iterator[None]:
    """A test that changes the threads (``runner.threads=2``, a sweep job's share) leaves the next test torch's count
    and the thread variables it found, so no test's speed or thread record depends on the order the tests ran in."""
    import torch

    count, env, recorded = torch.get_num_threads(), {v: os.environ.get(v) for v in threads.THREAD_VARS}, \
        dict(threads._SET)
    yield
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    threads._SET.clear()
    threads._SET.update(recorded)


# ---------------------------------------------------------------------------------------------------- scripts
def import_script(relative: str) -> ModuleType:
    """A script of the repository by its path without ``.py`` (``"run_simulation"``,
    ``"benchmarks/bench_label_reference"``), imported once under its file name as running it would: its own folder
    is importable, for scripts that import their siblings (``benchmarks/jsonl_runs.py``)."""
    path = REPO / f"{relative}.py"
    name = path.stem
    if name in sys.modules and Path(getattr(sys.modules[name], "__file__", "") or "").resolve() == path:
        return sys.modules[name]
    if str(path.parent) not in sys.path and path.parent != REPO:
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


# ---------------------------------------------------------------------------------------------------- Flower grid
class InlineGrid(Grid):
    """A Grid whose nodes run a ClientApp right here; each node keeps its own Context like a SuperNode does.

    ``fault(msg, party_index) -> None | "drop" | "error" | "superlink-error"`` injects failures: a lost reply, an
    error reply from the node, or the error reply a SuperLink sends for a dead node (from its own node ID).
    """

    def __init__(self, app, node_configs: list[dict], run_config: dict | None = None,
                 fault: Callable[[Message, int], str | None] | None = None) -> None:
        self.app, self.fault = app, fault
        # What Flower's runtimes set before a ServerApp runs (the Message constructor reads it).
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 7, 1, SUPERLINK_NODE_ID
        self.contexts = {100 + i: Context(run_id=7, node_id=100 + i, node_config=nc, state=RecordDict(),
                                          run_config=run_config or {}) for i, nc in enumerate(node_configs)}
        self.index = {nid: i for i, nid in enumerate(self.contexts)}
        self.replies: dict[str, Message] = {}
        self.sent: list[Message] = []

    def set_run(self, run) -> None:  # pragma: no cover - not used by the strategy
        pass

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = mid
            self.sent.append(msg)
            nid = msg.metadata.dst_node_id
            what = self.fault(msg, self.index[nid]) if self.fault else None
            if what == "drop":
                pass
            elif what in ("error", "superlink-error"):
                reply = Message(Error(code=0, reason="injected failure"), reply_to=msg)
                if what == "superlink-error":
                    reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
                self.replies[mid] = reply
            else:
                try:
                    self.replies[mid] = self.app(msg, self.contexts[nid])
                except Exception as exc:  # what a SuperNode does: report the exception as an error reply
                    self.replies[mid] = Message(Error(code=1, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(m) for m in list(message_ids) if m in self.replies]

    def send_and_receive(self, messages, *, timeout=None):  # pragma: no cover - the strategy never uses it
        raise NotImplementedError


SECRET = bytes(range(32))
"""The active party's key of its defences' random draws, fixed where a test needs one draw (both engines, a replay):
a run given no secret draws a fresh one."""


def small_cfg(method: str = "vproto", rounds: int = 3, num_passive: int = 1, method_extra: dict | None = None,
              **extra):
    methods = {"vproto": {"name": "vproto"}, "vanilla": {"name": "vanilla", "local_head": False,
                                                        "combine_weight": 1.0}, "local": {"name": "local"}}
    data = {"name": "digits", "aligned_fraction": 0.2, "num_passive": num_passive, "max_train_users": 500}
    # The protocol's machinery with gradient rows every round (defence=none); the default sends none.
    extra["defence"] = {"release_rounds": None, **extra.get("defence", {})}
    return config_from_dict({"num_rounds": rounds, "eval_every": 2, "dataset": data,
                             "method": {"batch_size": 64, **methods[method], **(method_extra or {})}, **extra})


def sim_nodes(cfg) -> list[dict]:
    return [{"partition-id": i, "num-partitions": cfg.dataset.num_passive + 1}
            for i in range(cfg.dataset.num_passive + 1)]


def run_inline(cfg, fault=None, nodes=None, timeout=30.0, secret=None, server_metrics="progress", **kwargs):
    """The strategy and the ClientApp over an :class:`InlineGrid`; under the default metrics policy the strategy
    reads the active party's own record back (a temporary folder), as ``run_simulation.py`` does."""
    results = tempfile.mkdtemp(prefix="vproto-active-")
    strategy = VerticalProtoStrategy(cfg, timeout=timeout, wait_for_nodes=1.0, active_results=results, **kwargs)
    grid = InlineGrid(make_client_app(cfg, active_secret=secret, server_metrics=server_metrics, results_dir=results),
                      nodes or sim_nodes(cfg), fault=fault)
    result = strategy.start(grid=grid)
    return strategy, result, grid


def to_passives(grid: InlineGrid, cfg) -> list[tuple[int, object]]:
    """Every training message a passive received, as ``(passive index, ToPassive)``, opened with that passive's own
    key: what the passive sees (the server relays only the clear flags and a sealed blob)."""
    from flwr_vproto import messages as codecs
    from flwr_vproto.client_app import identity, passive_request

    out = []
    for m in grid.sent:
        if m.metadata.message_type != codecs.TRAIN:
            continue
        ctx = grid.contexts[m.metadata.dst_node_id]
        me = identity(ctx.node_config, cfg.dataset.num_passive)
        if me.role == "passive":
            out.append((me.index, passive_request(m, ctx, cfg, me)))
    return out


def pair_key(grid: InlineGrid, party: int, peer: str) -> bytes:
    """The key party ``party`` (0: active) shares with ``peer``, from its own state (a test playing that party)."""
    return bytes.fromhex(str(grid.contexts[100 + party].state["vproto"][f"seal.{peer}"]))


def unseal(grid: InlineGrid, cfg, blob: bytes, rnd: int, phase: str, sender: str, receiver: str):
    """A sealed payload opened with the sender's key, as the sender (or its receiver) can: its RecordDict."""
    from flwr_vproto import messages as codecs
    from flwr_vproto import sealing
    from flwr_vproto.client_app import run_binding

    holder, peer = (0, receiver) if sender == "active" else (int(sender[len("passive"):]), "active")
    aad = sealing.associated_data(run_binding(cfg), rnd, phase, sender, receiver)
    plain = sealing.open_sealed(pair_key(grid, holder, peer), blob, aad, receiver=receiver, sender=sender,
                                phase=phase, rnd=rnd)
    return codecs.from_bytes(plain, sender, "test")


def reseal(grid: InlineGrid, cfg, content, rnd: int, phase: str, sender: str, receiver: str) -> bytes:
    """Inverse of :func:`unseal`: what a (buggy or malicious) party that changed its payload would send."""
    from flwr_vproto import messages as codecs
    from flwr_vproto import sealing
    from flwr_vproto.client_app import run_binding

    holder, peer = (0, receiver) if sender == "active" else (int(sender[len("passive"):]), "active")
    aad = sealing.associated_data(run_binding(cfg), rnd, phase, sender, receiver)
    return sealing.seal(pair_key(grid, holder, peer), codecs.to_bytes(content), aad)


def assert_same_history(flower: list[dict], reference: list[dict], rel: float = 0.0, abs_: float = 0.0) -> None:
    """Every metric the in-process engine reports, round by round (the Flower engine adds traffic keys)."""
    assert len(flower) == len(reference)
    for got, want in zip(flower, reference, strict=True):
        keys = set(want) - {"seconds"}
        assert keys <= set(got), f"missing in flower: {sorted(keys - set(got))}"
        for k in sorted(keys):
            assert got[k] == pytest.approx(want[k], rel=rel, abs=abs_), (k, got["round"])


# ---------------------------------------------------------------------------------------------------- data
def write_csvs(tmp_path: Path, n: int = 300, seed: int = 0) -> list[str]:
    """Active file (id, age, city, label) and passive file (id, spend, segment); users partly overlap."""
    rng = np.random.default_rng(seed)
    users = [f"cust-{k:04d}" for k in rng.permutation(n)]
    active_users, passive_users = users[: int(0.8 * n)], users[int(0.4 * n):]
    label = {u: ["no", "yes", "maybe"][k % 3] for k, u in enumerate(users)}
    pd.DataFrame({
        "id": active_users,
        "age": rng.integers(18, 90, len(active_users)),
        "city": rng.choice(["Paris", "Lyon", "Nice"], len(active_users)),
        "label": [label[u] for u in active_users],
    }).to_csv(tmp_path / "bank.csv", index=False)
    pd.DataFrame({
        "id": passive_users,
        "spend": rng.normal(100, 30, len(passive_users)).round(2),
        "segment": rng.choice(["a", "b"], len(passive_users)),
    }).sample(frac=1, random_state=1).to_csv(tmp_path / "shop.csv", index=False)
    return [str(tmp_path / "bank.csv"), str(tmp_path / "shop.csv")]


def write_table(path: Path, n: int = 500, seed: int = 0) -> pd.DataFrame:
    """A user's own table: an ID column that is not ``id`` (with a space), a label column that is not ``label``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    frame = pd.DataFrame({"customer no": [f"c{k:05d}" for k in rng.permutation(n)],
                          **{f"f{j}": (y * (j % 3) + rng.normal(0, 1, n)).round(3) for j in range(6)},
                          "defaulted": np.array(["no", "yes"])[y]})
    frame.to_csv(path, index=False)
    return frame


def passive_payloads(monkeypatch, cfg, ds, secret: bytes) -> tuple[list, dict]:
    """Everything each passive receives in an in-process run, in order: every field of its ToPassive messages
    (gradients, prototypes, mask, pseudo-label threshold, the test_previous flag, the splits, setup positions as
    bytes), and the run's results."""
    import dataclasses

    from flwr_vproto import protocol
    from flwr_vproto.inprocess import run_inprocess

    seen: list = []
    step = protocol.passive_step

    def spy(party, msg, *args):
        for f in dataclasses.fields(msg):
            value = getattr(msg, f.name)
            if f.name == "setup" and value is not None:
                value = [np.ascontiguousarray(v).tobytes() for v in value.positions.values()]
            seen.append(np.ascontiguousarray(value).tobytes() if isinstance(value, np.ndarray) else value)
        return step(party, msg, *args)

    monkeypatch.setattr(protocol, "passive_step", spy)
    res = run_inprocess(cfg, dataset=ds, active_secret=secret)
    monkeypatch.setattr(protocol, "passive_step", step)
    return seen, res
