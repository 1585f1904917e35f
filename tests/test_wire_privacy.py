"""What reaches the server in a whole simulated run holds no raw ID, no raw feature row, no label array and (the
default metrics policy) no label-derived metric; party-to-party payloads are sealed.

The ServerApp's Grid is wrapped so every message it sends or receives is recorded, then every payload (array data
as sent and decoded, bytes, strings, numbers and lists of config and metric records, error texts) is searched for
every party's IDs, unblinded ID hashes, feature rows (float32 and float64) and label arrays (several dtypes, in the
party's own order and in the shared aligned order).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from flwr_vproto.alignment import align_dataset
from flwr_vproto.client_app import make_client_app
from flwr_vproto.config import config_from_dict
from flwr_vproto.data import SPLITS, load_vertical_dataset
from flwr_vproto.psi import hash_to_point
from flwr_vproto.strategy import VerticalProtoStrategy


class RecordingGrid:
    """Wraps the Grid Flower gives the ServerApp; keeps every message that passes through the server."""

    def __init__(self, grid) -> None:
        self._grid = grid
        self.messages: list[Message] = []

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def push_messages(self, messages):
        messages = list(messages)
        self.messages.extend(messages)
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids):
        replies = list(self._grid.pull_messages(message_ids))
        self.messages.extend(replies)
        return replies


def _values(value) -> list[bytes]:
    """Every byte representation of a record value the server could read."""
    items = value if isinstance(value, list) else [value]
    out: list[bytes] = []
    if items and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        arr = np.asarray(items)
        out += [arr.astype(np.float64).tobytes(), arr.astype(np.int64).tobytes(), " ".join(map(repr, items)).encode()]
    for v in items:
        if isinstance(v, bytes):
            out.append(v)
        elif isinstance(v, str):
            out.append(v.encode())
    return out


def wire_blob(messages: list[Message]) -> bytes:
    parts: list[bytes] = []
    for msg in messages:
        if msg.has_error():
            parts.append(msg.error.reason.encode())
            continue
        for key, record in msg.content.items():
            parts.append(key.encode())
            if isinstance(record, ArrayRecord):
                for name, arr in record.items():
                    parts += [name.encode(), arr.data, np.ascontiguousarray(arr.numpy()).tobytes()]
            else:
                for name, value in record.items():
                    parts += [name.encode(), *_values(value)]
    return b"\x00".join(parts)


@pytest.mark.slow
def test_nothing_private_reaches_the_server(monkeypatch):
    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    cfg = config_from_dict({"num_rounds": 2, "dataset": {"name": "digits", "aligned_fraction": 0.2,
                                                         "max_train_users": 600},
                            "defence": {"release_rounds": None}})  # gradient rows travel too
    strategy = VerticalProtoStrategy(cfg, timeout=600)  # a hang guard: Ray starts slowly on a loaded machine
    grids: list[RecordingGrid] = []
    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        grids.append(RecordingGrid(grid))
        strategy.start(grid=grids[0])

    run_simulation(server_app=app, client_app=make_client_app(cfg), num_supernodes=2,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"logging_level": "ERROR", "log_to_driver": False}})
    assert strategy.results is not None and len(strategy.history) == 2
    messages = grids[0].messages
    blob = wire_blob(messages)
    assert len(messages) >= 2 * (3 + 2 * 2) and len(blob) > 10_000  # setup + rounds, both directions

    ds = load_vertical_dataset(cfg)
    aligned = align_dataset(ds, cfg.seed)
    # the recorder sees real payloads: the passive's embeddings travel, sealed to the active party (their bytes are
    # nowhere in clear: tests/test_sealing.py searches for them), and under the default metrics policy the active
    # party reports nothing derived from a label
    assert any(m.content.get("arrays") and "sealed" in m.content["arrays"] for m in messages if m.has_content())
    reported = {k for m in messages if m.has_content() and "metrics" in m.content for k in m.content["metrics"]}
    assert reported == {"progress.exchange", "progress.rounds"}

    # 1. IDs: no ID string, no unblinded ID hash
    all_ids = {str(i) for p in ds.parties for s in SPLITS for i in p.split(s).ids}
    assert all(re.fullmatch(r"u\d+", i) for i in all_ids)
    on_wire = {m.decode() for m in re.findall(rb"u\d{4,}", blob)}
    assert not on_wire & all_ids
    for ident in sorted(all_ids)[:300]:
        assert hash_to_point(ident) not in blob

    # 2. Feature rows of every party and split (rows with a few non-zero values: a zero row matches any zeros)
    rng = np.random.default_rng(0)
    checked = 0
    for party in ds.parties:
        for s in SPLITS:
            x = party.split(s).x
            for r in rng.permutation(len(x))[:80]:
                row = x[r]
                if np.count_nonzero(row) < 4:
                    continue
                assert row.astype(np.float32).tobytes() not in blob, (party.name, s, r)
                assert row.astype(np.float64).tobytes() not in blob, (party.name, s, r)
                checked += 1
    assert checked > 300

    # 3. Labels (and the simulator's ground truth), own order and aligned order, in every plausible dtype
    for k, party in enumerate(ds.parties):
        for s in SPLITS:
            d = party.split(s)
            for labels in (d.y, d.y_true):
                if labels is None:
                    continue
                for arr in (labels, labels[aligned[k][s]]):
                    for dtype in (np.int64, np.int32, np.float32, np.float64, np.uint8):
                        assert arr.astype(dtype).tobytes() not in blob, (party.name, s, dtype)
                    assert " ".join(map(repr, arr.tolist())).encode() not in blob


def test_the_search_would_see_a_leak():
    """Guard against a vacuous check: a message that does carry rows, IDs and labels is caught."""
    from flwr.app import ConfigRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from flwr_vproto.messages import array_record

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    x = np.random.default_rng(0).random((5, 8)).astype(np.float32)
    y = np.array([3, 1, 4, 1, 5])
    msg = Message(RecordDict({"arrays": array_record({"rows": x}),
                              "config": ConfigRecord({"ids": ["u000042"], "labels": y.tolist()})}), 2, "train")
    blob = wire_blob([msg])
    assert x[2].tobytes() in blob and b"u000042" in blob and y.astype(np.int64).tobytes() in blob
