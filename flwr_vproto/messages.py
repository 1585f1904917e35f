"""What travels between the ServerApp and the ClientApps: message types, record keys, and one encode / decode per
payload of :mod:`flwr_vproto.protocol`.

Every record key is spelled here and nowhere else, so this one file says what can reach the server (design §2:
never raw features, raw IDs or labels). Decoders of replies check them: a missing, extra, mis-shaped, mistyped or
non-finite entry stops the run with a :class:`ProtocolError` naming the party and the phase, instead of a shape
error deep inside another party. Payloads are:

* :class:`~flwr.app.ArrayRecord` for bulk numbers (embeddings, gradients, blinded PSI points, party state), because
  Flower chunks arrays and ships them without copies through Python lists;
* :class:`~flwr.app.ConfigRecord` for small settings and the second prototypes (float32 bytes, exact);
* :class:`~flwr.app.MetricRecord` for per-round metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as RecordDictProto

from flwr_vproto.data.types import SPLITS
from flwr_vproto.protocol import (
    Discovered,
    FromActive,
    FromPassive,
    Intersection,
    LocalRound,
    PassiveSetup,
    PredictReply,
    PredictRequest,
    Probe,
    ProtocolError,
    ToActive,
    ToPassive,
    party_name,
)

__all__ = ["ProtocolError"]  # re-exported: callers catch it from here or from flwr_vproto.protocol

# ------------------------------------------------------------------------------------------------ message types
# Flower routes "<category>.<action>" to the ClientApp function registered for it.
# Setup costs three message round trips (each costs seconds in a deployment: a process per message).
DISCOVER = "query.discover"  # every node: role, party index, sizes; every party also blinds its own IDs (PSI 1)
PSI_PEER = "query.psi_peer"  # each passive: re-blind the hub's points (PSI 2, at the same time as PSI_BLIND)
PSI_BLIND = "query.psi_blind"  # active: blind every passive's points (PSI 2, at the same time as PSI_PEER)
PSI_FINISH = "query.psi_finish"  # active: intersect, fix the shared order, build its party (PSI 3)
TRAIN = "train"  # one round of one party; a passive's first one also carries its PSI positions (PSI 4)

# ------------------------------------------------------------------------------------------------ record keys
CONFIG = "config"  # ConfigRecord of a message
ARRAYS = "arrays"  # ArrayRecord of a message
METRICS = "metrics"  # MetricRecord of a reply
STATE_KEY = "vproto"  # context.state: ConfigRecord of small facts and ArrayRecord of state bytes
STATE_ARRAYS = "vproto.arrays"

# Entries of the records (ConfigRecord keys unless noted).
ROUND, SPLITS_KEY, FINAL, TEST_PREVIOUS = "round", "splits", "final", "test-previous"
FINGERPRINT, VERSION, RESUME_ROUND, RESUMED_ROUND = "fingerprint", "version", "resume-round", "resumed-round"
ROLE, PARTY_INDEX, INPUT_SHAPE, EMBEDDING_DIM, ROWS = "role", "party-index", "input-shape", "embedding-dim", "rows"
NUM_CLASSES, ALIGNED, PASSIVES, PASSIVE_DIMS, BLINDED = "num-classes", "aligned", "passives", "passive-dims", "blinded"
PROTOTYPES, PROTOTYPE_MASK, PSEUDO_THRESHOLD = "prototypes", "prototype-mask", "pseudo-threshold"
HUB, OWN, REBLINDED, POSITIONS = "hub", "own", "reblinded", "positions"  # ArrayRecord keys, one per split
GRADIENTS, EMBEDDINGS = "gradients", "embeddings"  # ArrayRecord keys
PREVIOUS_TEST = "previous-test"  # ArrayRecord key (test rows by last round's encoder) and metrics prefix
TRAIN_METRICS, PRIVACY_METRICS, VAL_METRICS, TEST_METRICS = "train.", "privacy.", "val.", "test."  # prefixes
PREVIOUS_TEST_METRICS = PREVIOUS_TEST + "."
LOCAL_ROUND_METRICS = "round{}/"  # prefix (of the prefixes above) of an exchange's earlier round's metrics
SOURCE, METHOD, MODEL = "source", "method", "model"  # prediction: where new rows come from, the saved model
PREDICTIONS = "predictions"  # prediction: the path of the CSV the active party wrote on its own node
# Sealing (flwr_vproto.sealing): what the server relays without reading it.
SEALED = "sealed"  # ArrayRecord key (``passive1.sealed`` when a message carries several): one sealed payload
SEAL_KEY, SEAL_STATIC = "seal-key", "seal-static"  # ConfigRecord keys: a party's per-run / long-term public key
SERVER_METRICS = "server-metrics"  # discovery, active party: the metrics policy it reports under (progress | full)
PROGRESS_METRICS = "progress."  # prefix of the label-free metrics the active party reports under ``progress``
PASSIVE_METRICS = "passive{}."  # prefix of passive k's own metrics, which the active party reports under ``full``


def split_key(base: str, split: str) -> str:
    """``embeddings.val``: an entry per data split."""
    return f"{base}.{split}"


def passive_key(k: int, key: str) -> str:
    """``passive1.gradients``: an entry per passive party in a message that carries several."""
    return f"{party_name('passive', k)}.{key}"


# ------------------------------------------------------------------------------------------------ arrays
def array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays -> ArrayRecord (``np.save`` format inside, no pickle)."""
    return ArrayRecord({k: Array.from_numpy_ndarray(np.ascontiguousarray(v)) for k, v in arrays.items()})


def arrays_of(record: Any) -> dict[str, np.ndarray]:
    """Inverse of :func:`array_record` (``None``: no arrays)."""
    return {} if record is None else {k: v.numpy() for k, v in record.items()}


def arrays_in(content: RecordDict) -> dict[str, np.ndarray]:
    """A message's arrays, decoded (no check: requests from the server; replies go through :func:`check_arrays`)."""
    return arrays_of(content.get(ARRAYS))


def config_in(content: RecordDict) -> Mapping[str, Any]:
    """A message's config record (Flower types its values as a union; the codecs below read them as they wrote)."""
    return content[CONFIG]


def bytes_to_array(data: bytes) -> np.ndarray:
    """Opaque bytes (blinded points, serialised state) as a uint8 array, so Flower can chunk it."""
    return np.frombuffer(data, dtype=np.uint8)


def array_to_bytes(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def blobs_of(prefix: str, state: Mapping[str, bytes]) -> dict[str, np.ndarray]:
    """A dict of named bytes (e.g. a PSI side's ``export_state()``) as ``<prefix>.<name>`` arrays for
    ``context.state``."""
    return {f"{prefix}.{k}": bytes_to_array(v) for k, v in state.items()}


def bytes_of(prefix: str, blobs: Mapping[str, np.ndarray]) -> dict[str, bytes]:
    """Inverse of :func:`blobs_of`: the entries under ``<prefix>.``, as bytes, without the prefix."""
    return {k[len(prefix) + 1:]: array_to_bytes(v) for k, v in blobs.items() if k.startswith(prefix + ".")}


def records(*, arrays: Mapping[str, np.ndarray] | None = None, config: Mapping[str, Any] | None = None,
            metrics: Mapping[str, float] | MetricRecord | None = None) -> RecordDict:
    """A message's content from its parts (each record only when given)."""
    content = RecordDict()
    if arrays is not None:
        content[ARRAYS] = array_record(arrays)
    if config is not None:
        content[CONFIG] = ConfigRecord(dict(config))
    if metrics is not None:
        content[METRICS] = metrics if isinstance(metrics, MetricRecord) else metric_record(metrics)
    return content


# ------------------------------------------------------------------------------------------------ checking replies
Expected = Mapping[str, tuple[str, tuple[int, ...]]]
"""Array name -> (dtype, shape); ``-1`` in a shape matches any length."""


def _bad(who: str, where: str, problem: str) -> ProtocolError:
    return ProtocolError(f"{who} sent a bad reply during {where}: {problem}")


def check_arrays(record: Any, expected: Expected, who: str, where: str, *, finite: bool = True
                 ) -> dict[str, np.ndarray]:
    """Refuse a reply whose arrays are missing, extra, undecodable, mis-shaped, of another dtype or not finite;
    return them decoded."""
    if not isinstance(record, ArrayRecord):
        raise _bad(who, where, f"no '{ARRAYS}' array record")
    missing, extra = sorted(set(expected) - set(record)), sorted(set(record) - set(expected))
    if missing or extra:
        raise _bad(who, where, f"arrays {missing} missing" if missing else f"unexpected arrays {extra}")
    out = {}
    for key, (dtype, shape) in expected.items():
        try:
            arr = record[key].numpy()
        except Exception as err:  # noqa: BLE001 - garbage bytes fail in many ways inside np.load
            raise _bad(who, where, f"array '{key}' does not decode ({type(err).__name__}: {err})") from None
        if arr.dtype != np.dtype(dtype):
            raise _bad(who, where, f"array '{key}' has dtype {arr.dtype}, expected {dtype}")
        if arr.ndim != len(shape) or any(w not in (-1, g) for g, w in zip(arr.shape, shape, strict=True)):
            raise _bad(who, where, f"array '{key}' has shape {tuple(arr.shape)}, expected {tuple(shape)} (-1: any)")
        if finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise _bad(who, where, f"array '{key}' holds {int((~np.isfinite(arr)).sum())} NaN/inf value(s)")
        out[key] = arr
    return out


def check_matrix(config: Any, key: str, shape: tuple[int, int], who: str, where: str) -> np.ndarray:
    """Refuse a :func:`put_matrix` entry that is missing, mis-sized or not finite; return it."""
    if not isinstance(config, ConfigRecord) or f"{key}.data" not in config or f"{key}.shape" not in config:
        raise _bad(who, where, f"'{key}' missing")
    data, got = config[f"{key}.data"], config[f"{key}.shape"]
    if (not isinstance(data, bytes) or not isinstance(got, list) or list(got) != list(shape)
            or len(data) != 4 * shape[0] * shape[1]):
        raise _bad(who, where, f"'{key}' has shape {got!r} and {len(data) if isinstance(data, bytes) else '?'} bytes, "
                               f"expected {list(shape)} float32")
    matrix = np.frombuffer(data, dtype=np.float32).reshape(shape).copy()
    if not np.isfinite(matrix).all():
        raise _bad(who, where, f"'{key}' holds NaN/inf values")
    return matrix


def check_config(config: Any, keys: Mapping[str, type | tuple[type, ...]], who: str, where: str
                 ) -> Mapping[str, Any]:
    """Refuse a reply whose config record lacks one of ``keys`` or holds a value of another type."""
    if not isinstance(config, ConfigRecord):
        raise _bad(who, where, f"no '{CONFIG}' config record")
    for key, types in keys.items():
        value = config.get(key)
        if value is None or isinstance(value, bool) != (types is bool) or not isinstance(value, types):
            raise _bad(who, where, f"'{key}' is {value!r}, expected {getattr(types, '__name__', types)}")
    return config


def check_metrics(content: RecordDict, who: str, where: str) -> MetricRecord:
    record = content.get(METRICS)
    if not isinstance(record, MetricRecord):
        raise _bad(who, where, f"no '{METRICS}' metric record")
    return record


# ------------------------------------------------------------------------------------------------ metrics
def metric_record(metrics: Mapping[str, float], prefix: str = "") -> MetricRecord:
    """Float metrics -> MetricRecord, keys optionally prefixed (``val.accuracy``)."""
    return MetricRecord({f"{prefix}{k}": float(v) for k, v in metrics.items()})


def metrics_of(record: Any, prefix: str = "") -> dict[str, float]:
    """The metrics of ``record`` whose key starts with ``prefix``, prefix removed."""
    if record is None:
        return {}
    return {k[len(prefix):]: float(v) for k, v in record.items() if k.startswith(prefix)}


# ------------------------------------------------------------------------------------------------ matrices
def put_matrix(config: ConfigRecord | dict[str, Any], key: str, value: np.ndarray) -> None:
    """A small float32 matrix (second prototypes) into a ConfigRecord as exact bytes plus its shape."""
    value = np.ascontiguousarray(value, dtype=np.float32)
    config[f"{key}.data"] = value.tobytes()
    config[f"{key}.shape"] = [int(s) for s in value.shape]


def get_matrix(config: Mapping[str, Any], key: str) -> np.ndarray | None:
    """Inverse of :func:`put_matrix`; ``None`` when the key is absent."""
    if f"{key}.data" not in config:
        return None
    shape = tuple(int(s) for s in config[f"{key}.shape"])
    return np.frombuffer(config[f"{key}.data"], dtype=np.float32).reshape(shape).copy()


# ------------------------------------------------------------------------------------------------ sizes
def payload_bytes(content: RecordDict | None) -> int:
    """Bytes of payload in a message (array data, bytes/str values, 8 per number): what a round costs on the wire."""
    if content is None:
        return 0
    total = 0
    for record in content.values():
        if isinstance(record, ArrayRecord):
            total += sum(len(a.data) for a in record.values())
            continue
        for value in record.values():
            for v in value if isinstance(value, list) else [value]:
                total += len(v) if isinstance(v, (bytes, str)) else 8
    return total


# ================================================================================================ setup codecs
def encode_probe(probe: Probe) -> RecordDict:
    conf: dict[str, Any] = {FINGERPRINT: probe.fingerprint, VERSION: probe.version}
    if probe.resume_round is not None:
        conf[RESUME_ROUND] = probe.resume_round
    return records(config=conf)


def decode_probe(content: RecordDict) -> Probe:
    conf = config_in(content)
    resume = conf.get(RESUME_ROUND)
    return Probe(fingerprint=str(conf.get(FINGERPRINT, "")), version=str(conf.get(VERSION, "")),
                 resume_round=None if resume is None else int(resume))


def _split_points(base: str, points: Mapping[str, bytes]) -> dict[str, np.ndarray]:
    return {split_key(base, s): bytes_to_array(b) for s, b in points.items()}


def _points_of(arrays: Mapping[str, np.ndarray], base: str) -> dict[str, bytes]:
    return {s: array_to_bytes(arrays[split_key(base, s)]) for s in SPLITS}


def _points_base(role: str) -> str:
    """The active party's blinded IDs are the hub's; a passive's are its own."""
    return HUB if role == "active" else OWN


def encode_discovered(info: Discovered, extra: Mapping[str, Any] | None = None) -> RecordDict:
    """``extra``: the Flower layer's own facts (the party's public keys, the active party's metrics policy)."""
    conf: dict[str, Any] = {ROLE: info.role, PARTY_INDEX: info.index, FINGERPRINT: info.fingerprint,
                            INPUT_SHAPE: info.input_shape, EMBEDDING_DIM: info.embedding_dim,
                            **{split_key(ROWS, s): n for s, n in info.rows.items()}, **(extra or {})}
    if info.resumed_round is not None:
        conf[RESUMED_ROUND] = info.resumed_round
    arrays = _split_points(_points_base(info.role), info.points) if info.points else None
    return records(arrays=arrays, config=conf)


def decode_discovered(content: RecordDict, who: str) -> Discovered:
    """A node's discovery reply, without its blinded points (see :func:`discovered_points`)."""
    conf = check_config(content.get(CONFIG), {ROLE: str, PARTY_INDEX: int, EMBEDDING_DIM: int}, who, "discovery")
    resumed = conf.get(RESUMED_ROUND)
    return Discovered(role=str(conf[ROLE]), index=int(conf[PARTY_INDEX]), fingerprint=str(conf.get(FINGERPRINT, "")),
                      input_shape=[int(s) for s in conf.get(INPUT_SHAPE, [])], embedding_dim=int(conf[EMBEDDING_DIM]),
                      rows={s: int(conf.get(split_key(ROWS, s), 0)) for s in SPLITS},
                      resumed_round=None if resumed is None else int(resumed))


def discovered_points(content: RecordDict, info: Discovered) -> dict[str, bytes]:
    """The blinded IDs (PSI step 1) of an identified party's discovery reply, checked."""
    base = _points_base(info.role)
    arrays = check_arrays(content.get(ARRAYS), {split_key(base, s): ("uint8", (-1,)) for s in SPLITS}, info.name,
                          "discovery")
    return _points_of(arrays, base)


def encode_hub_points(points: Mapping[str, bytes], keys: Mapping[str, bytes] | None = None) -> RecordDict:
    """PSI step 2, to each passive: the active party's blinded IDs (and its public keys, :data:`SEAL_KEY`)."""
    return records(arrays=_split_points(HUB, points), config=dict(keys) if keys else None)


def public_keys(conf: Any, prefix: str = "") -> tuple[bytes | None, bytes | None]:
    """A party's per-run and long-term public keys as a message carries them (``None``: absent)."""
    if conf is None:
        return None, None
    per_run, static = (conf.get(prefix + key) for key in (SEAL_KEY, SEAL_STATIC))
    return (per_run if isinstance(per_run, bytes) else None), (static if isinstance(static, bytes) else None)


def keys_in(content: RecordDict, prefix: str = "") -> tuple[bytes | None, bytes | None]:
    return public_keys(content.get(CONFIG), prefix)


def decode_hub_points(content: RecordDict) -> dict[str, bytes]:
    return _points_of(arrays_in(content), HUB)


def encode_reblinded(points: Mapping[str, bytes]) -> RecordDict:
    return records(arrays=_split_points(REBLINDED, points))


def decode_reblinded(content: RecordDict, who: str) -> dict[str, bytes]:
    arrays = check_arrays(content.get(ARRAYS), {split_key(REBLINDED, s): ("uint8", (-1,)) for s in SPLITS}, who,
                          "PSI (blinding)")
    return _points_of(arrays, REBLINDED)


def _encode_per_passive(base: str, points: Mapping[int, Mapping[str, bytes]], conf: dict[str, Any]) -> RecordDict:
    arrays = {passive_key(k, split_key(base, s)): bytes_to_array(b) for k, ps in points.items() for s, b in ps.items()}
    return records(arrays=arrays, config={PASSIVES: list(points), **conf})


def _decode_per_passive(content: RecordDict, base: str) -> dict[int, dict[str, bytes]]:
    arrays = arrays_in(content)
    return {int(k): {s: array_to_bytes(arrays[passive_key(int(k), split_key(base, s))]) for s in SPLITS}
            for k in config_in(content)[PASSIVES]}


def encode_blind_request(own: Mapping[int, Mapping[str, bytes]],
                         keys: Mapping[int, Mapping[str, bytes]] | None = None) -> RecordDict:
    """PSI step 2, to the active party: every passive's own blinded IDs (and public keys, ``passive1.seal-key``)."""
    conf = {passive_key(k, n): v for k, ks in (keys or {}).items() for n, v in ks.items()}
    return _encode_per_passive(OWN, own, conf)


def decode_blind_request(content: RecordDict) -> dict[int, dict[str, bytes]]:
    return _decode_per_passive(content, OWN)


def encode_blinded(count: int) -> RecordDict:
    return records(config={BLINDED: count})


def encode_finish_request(reblinded: Mapping[int, Mapping[str, bytes]], passive_dims: list[int]) -> RecordDict:
    """PSI step 3, to the active party: each passive's re-blinding of its points, and the passives' dimensions."""
    return _encode_per_passive(REBLINDED, reblinded, {PASSIVE_DIMS: [int(d) for d in passive_dims]})


def decode_finish_request(content: RecordDict) -> tuple[dict[int, dict[str, bytes]], list[int]]:
    dims = [int(d) for d in config_in(content)[PASSIVE_DIMS]]
    return _decode_per_passive(content, REBLINDED), dims


def encode_intersection(result: Intersection) -> RecordDict:
    arrays = {passive_key(k, split_key(POSITIONS, s)): p for k, ps in result.positions.items() for s, p in ps.items()}
    return records(arrays=arrays, config={NUM_CLASSES: result.num_classes,
                                          **{split_key(ALIGNED, s): n for s, n in result.aligned.items()}})


def decode_intersection(content: RecordDict, passives: list[int]) -> Intersection:
    where = "PSI (intersection)"
    conf = check_config(content.get(CONFIG), {NUM_CLASSES: int, **{split_key(ALIGNED, s): int for s in SPLITS}},
                        "active", where)
    arrays = check_arrays(content.get(ARRAYS), {passive_key(k, split_key(POSITIONS, s)): ("int64", (-1,))
                                                for k in passives for s in SPLITS}, "active", where)
    return Intersection(num_classes=int(conf[NUM_CLASSES]),
                        aligned={s: int(conf[split_key(ALIGNED, s)]) for s in SPLITS},
                        positions={k: {s: arrays[passive_key(k, split_key(POSITIONS, s))] for s in SPLITS}
                                   for k in passives})


# ================================================================================================ round codecs
def _flags(rnd: int, splits: tuple[str, ...], final: bool, test_previous: bool) -> dict[str, Any]:
    return {ROUND: rnd, SPLITS_KEY: list(splits), FINAL: final, **({TEST_PREVIOUS: True} if test_previous else {})}


def _read_flags(conf: Any) -> tuple[int, tuple[str, ...], bool, bool]:
    return (int(conf[ROUND]), tuple(str(s) for s in conf[SPLITS_KEY]), bool(conf[FINAL]),
            bool(conf.get(TEST_PREVIOUS, False)))


def round_of(content: RecordDict) -> int | None:
    """The round a training message belongs to (``None`` for setup messages)."""
    conf = config_in(content) if CONFIG in content else None
    return None if conf is None or ROUND not in conf else int(conf[ROUND])


def _wire(arr: np.ndarray, dtype: str) -> np.ndarray:
    """A matrix already rounded to ``wire_dtype`` by the protocol, in that container."""
    return np.asarray(arr, dtype=dtype)


def _unwire(arr: np.ndarray) -> np.ndarray:
    """Back to the float32 the learning code works in (exact: the values are float16 values)."""
    return np.asarray(arr, dtype=np.float32)


def encode_to_passive(msg: ToPassive, *, dtype: str = "float32") -> RecordDict:
    conf = _flags(msg.round, msg.splits, msg.final, msg.test_previous)
    arrays: dict[str, np.ndarray] = {}
    if msg.gradients is not None:
        arrays[GRADIENTS] = _wire(msg.gradients, dtype)
    if msg.prototypes is not None:
        put_matrix(conf, PROTOTYPES, msg.prototypes)
        conf[PROTOTYPE_MASK] = [bool(b) for b in np.asarray(msg.prototype_mask)]
    if msg.pseudo_threshold is not None:
        conf[PSEUDO_THRESHOLD] = float(msg.pseudo_threshold)
    if msg.setup is not None:
        arrays.update({split_key(POSITIONS, s): p for s, p in msg.setup.positions.items()})
        conf[NUM_CLASSES] = msg.setup.num_classes
    return records(arrays=arrays, config=conf)


def decode_to_passive(content: RecordDict) -> ToPassive:
    conf, arrays = config_in(content), arrays_in(content)
    rnd, splits, final, previous = _read_flags(conf)
    mask = conf.get(PROTOTYPE_MASK)
    gate = conf.get(PSEUDO_THRESHOLD)
    setup = None
    if NUM_CLASSES in conf:
        setup = PassiveSetup(positions={s: arrays[split_key(POSITIONS, s)] for s in SPLITS},
                             num_classes=int(conf[NUM_CLASSES]))
    gradients = None if GRADIENTS not in arrays else _unwire(arrays[GRADIENTS])
    return ToPassive(round=rnd, splits=splits, final=final, gradients=gradients,
                     prototypes=get_matrix(conf, PROTOTYPES),
                     prototype_mask=None if mask is None else np.asarray(mask, dtype=bool),
                     pseudo_threshold=None if gate is None else float(gate), setup=setup, test_previous=previous)


def encode_from_passive(reply: FromPassive, *, dtype: str = "float32") -> RecordDict:
    arrays = {EMBEDDINGS: _wire(reply.embeddings, dtype),
              **{split_key(EMBEDDINGS, s): _wire(e, dtype) for s, e in reply.eval_embeddings.items()}}
    if reply.previous_test is not None:
        arrays[split_key(EMBEDDINGS, PREVIOUS_TEST)] = _wire(reply.previous_test, dtype)
    return records(arrays=arrays, metrics=reply.metrics)


def decode_from_passive(content: RecordDict, who: str, where: str, *, rows: Mapping[str, int], dim: int,
                        splits: tuple[str, ...], previous: bool = False, dtype: str = "float32") -> FromPassive:
    """A passive's round reply, checked against the aligned row counts, its embedding dimension and the wire dtype."""
    expected = {EMBEDDINGS: (dtype, (rows["train"], dim)),
                **{split_key(EMBEDDINGS, s): (dtype, (rows[s], dim)) for s in splits}}
    if previous:
        expected[split_key(EMBEDDINGS, PREVIOUS_TEST)] = (dtype, (rows["test"], dim))
    arrays = {k: _unwire(v) for k, v in check_arrays(content.get(ARRAYS), expected, who, where).items()}
    metrics = metrics_of(check_metrics(content, who, where))
    return FromPassive(embeddings=arrays[EMBEDDINGS],
                       eval_embeddings={s: arrays[split_key(EMBEDDINGS, s)] for s in splits},
                       metrics=metrics, previous_test=arrays.get(split_key(EMBEDDINGS, PREVIOUS_TEST)))


def encode_to_active(msg: ToActive, *, dtype: str = "float32") -> RecordDict:
    arrays: dict[str, np.ndarray] = {}
    for k, (emb, evals) in enumerate(zip(msg.embeddings, msg.eval_embeddings, strict=True), start=1):
        arrays[passive_key(k, EMBEDDINGS)] = _wire(emb, dtype)
        arrays.update({passive_key(k, split_key(EMBEDDINGS, s)): _wire(e, dtype) for s, e in evals.items()})
    for k, emb in enumerate(msg.previous_test or [], start=1):
        arrays[passive_key(k, split_key(EMBEDDINGS, PREVIOUS_TEST))] = _wire(emb, dtype)
    conf = _flags(msg.round, msg.splits, msg.final, msg.previous_test is not None)
    return records(arrays=arrays, config=conf)


def decode_to_active(content: RecordDict, passives: list[int]) -> ToActive:
    arrays = arrays_in(content)
    rnd, splits, final, previous = _read_flags(config_in(content))

    def get(k: int, key: str) -> np.ndarray:
        return _unwire(arrays[passive_key(k, key)])

    return ToActive(round=rnd, splits=splits, final=final, embeddings=[get(k, EMBEDDINGS) for k in passives],
                    eval_embeddings=[{s: get(k, split_key(EMBEDDINGS, s)) for s in splits} for k in passives],
                    previous_test=[get(k, split_key(EMBEDDINGS, PREVIOUS_TEST)) for k in passives] if previous
                    else None)


def encode_from_active(reply: FromActive, *, dtype: str = "float32") -> RecordDict:
    metrics = active_metric_record(reply)
    conf: dict[str, Any] = {}
    for k, proto in enumerate(reply.prototypes, start=1):
        put_matrix(conf, passive_key(k, PROTOTYPES), proto)
    if reply.prototype_mask is not None and reply.prototypes:
        conf[PROTOTYPE_MASK] = [bool(b) for b in reply.prototype_mask]
    for k, gate in enumerate(reply.pseudo_thresholds or [], start=1):  # one scalar per passive; its labels stay
        conf[passive_key(k, PSEUDO_THRESHOLD)] = float(gate)
    arrays = {passive_key(k, GRADIENTS): _wire(g, dtype) for k, g in enumerate(reply.gradients, start=1)}
    return records(arrays=arrays, config=conf, metrics=metrics)


def active_metric_record(reply: FromActive) -> MetricRecord:
    """Every metric of an active party's exchange reply (label-derived ones included), as the server reads them
    under the ``full`` metrics policy."""
    metrics = metric_record(reply.train, TRAIN_METRICS)
    for prefix, part in ((PRIVACY_METRICS, reply.privacy), (VAL_METRICS, reply.val), (TEST_METRICS, reply.test),
                         (PREVIOUS_TEST_METRICS, reply.previous_test)):
        metrics.update(metric_record(part or {}, prefix))
    for r in reply.earlier:
        where = LOCAL_ROUND_METRICS.format(r.round)
        for prefix, part in ((TRAIN_METRICS, r.train), (PRIVACY_METRICS, r.privacy), (VAL_METRICS, r.val),
                             (TEST_METRICS, r.test)):
            metrics.update(metric_record(part or {}, where + prefix))
    return metrics


def decode_from_active(content: RecordDict, where: str, *, dims: list[int], n_train: int, final: bool,
                       num_classes: int, shares_prototypes: bool, dtype: str = "float32",
                       gradients: bool | None = None, earlier: Sequence[int] = ()) -> FromActive:
    """The active party's exchange reply: metrics (of the rounds ``earlier`` than the last too), and (not after the
    last exchange) every joint passive's gradients of the right size when this exchange releases them
    (``gradients``, default: not final) and, when they travel, its second prototypes, the class mask and gates, all
    finite."""
    who = "active"
    passives = dict(enumerate(dims, start=1))  # passive index -> embedding dimension
    released = (not final) if gradients is None else gradients
    expected = {passive_key(k, GRADIENTS): (dtype, (n_train, d)) for k, d in passives.items()} if released else {}
    arrays = check_arrays(content.get(ARRAYS), expected, who, where)
    reply = decode_active_metrics(check_metrics(content, who, where), where, earlier=earlier)
    reply.gradients = [_unwire(arrays[key]) for key in expected]
    if final or not dims or not shares_prototypes:
        return reply
    conf: Any = content.get(CONFIG)
    reply.prototypes = [check_matrix(conf, passive_key(k, PROTOTYPES), (num_classes, d), who, where)
                        for k, d in passives.items()]
    mask = conf.get(PROTOTYPE_MASK)
    if not isinstance(mask, list) or len(mask) != num_classes or not all(isinstance(b, bool) for b in mask):
        raise _bad(who, where, f"'{PROTOTYPE_MASK}' is not {num_classes} booleans")
    reply.prototype_mask = np.asarray(mask, dtype=bool)
    gates = [conf.get(passive_key(k, PSEUDO_THRESHOLD)) for k in passives]
    for k, gate in zip(passives, gates, strict=True):
        if gate is not None and (not isinstance(gate, float) or not 0.0 <= gate <= 1.0):
            raise _bad(who, where, f"'{passive_key(k, PSEUDO_THRESHOLD)}' is not a number in [0, 1]")
    if all(g is not None for g in gates):
        reply.pseudo_thresholds = [float(g) for g in gates]
    return reply


def decode_active_metrics(metrics: Mapping[str, Any], where: str, *, earlier: Sequence[int] = ()) -> FromActive:
    """The metrics of an active party's exchange reply (:func:`active_metric_record`), without its payloads. Under
    the ``progress`` policy, with nothing read back (a deployment), the reply holds no round's metrics: the earlier
    rounds of the exchange are then not asked for (their scores stay on the active party's node too)."""
    who = "active"
    if not metrics_of(metrics, TRAIN_METRICS) and any(str(k).startswith(PROGRESS_METRICS) for k in metrics):
        earlier = ()
    reply = FromActive(train=metrics_of(metrics, TRAIN_METRICS), privacy=metrics_of(metrics, PRIVACY_METRICS),
                       val=metrics_of(metrics, VAL_METRICS) or None, test=metrics_of(metrics, TEST_METRICS) or None,
                       previous_test=metrics_of(metrics, PREVIOUS_TEST_METRICS) or None)
    for r in earlier:
        at = LOCAL_ROUND_METRICS.format(r)
        train = metrics_of(metrics, at + TRAIN_METRICS)
        if not train:
            raise _bad(who, where, f"no metrics of round {r}, which this exchange trains")
        reply.earlier.append(LocalRound(round=r, train=train, privacy=metrics_of(metrics, at + PRIVACY_METRICS),
                                        val=metrics_of(metrics, at + VAL_METRICS) or None,
                                        test=metrics_of(metrics, at + TEST_METRICS) or None))
    return reply


# ================================================================================================ sealed payloads
def to_bytes(content: RecordDict) -> bytes:
    """A message content as bytes (Flower's own protobuf serialisation), to be sealed."""
    return recorddict_to_proto(content).SerializeToString()


def from_bytes(data: bytes, who: str, where: str) -> RecordDict:
    """Inverse of :func:`to_bytes` (an opened payload)."""
    try:
        return recorddict_from_proto(RecordDictProto.FromString(data))
    except Exception as err:  # noqa: BLE001 - garbage fails in many ways inside protobuf
        raise _bad(who, where, f"an opened payload does not decode ({type(err).__name__})") from None


def with_sealed(content: RecordDict, blobs: Mapping[str, bytes]) -> RecordDict:
    """``content`` with sealed payloads added, each a uint8 array (Flower chunks them like any array)."""
    if blobs:
        arrays = content.get(ARRAYS)
        if not isinstance(arrays, ArrayRecord):
            arrays = ArrayRecord()
        for key, blob in blobs.items():
            arrays[key] = Array.from_numpy_ndarray(bytes_to_array(blob))
        content[ARRAYS] = arrays
    return content


def sealed_in(content: RecordDict, keys: Sequence[str], who: str, where: str, *, overhead: int) -> dict[str, bytes]:
    """The sealed payloads ``keys`` of a message, as bytes: present, uint8 and at least ``overhead`` long (all that
    whoever relays them can check)."""
    record = content.get(ARRAYS)
    out = {}
    for key in keys:
        if not isinstance(record, ArrayRecord) or key not in record:
            raise _bad(who, where, f"sealed payload '{key}' missing")
        try:
            arr = record[key].numpy()
        except Exception as err:  # noqa: BLE001
            raise _bad(who, where, f"sealed payload '{key}' does not decode ({type(err).__name__})") from None
        if arr.dtype != np.uint8 or arr.ndim != 1 or len(arr) < overhead:
            raise _bad(who, where, f"sealed payload '{key}' is not a byte string of at least {overhead} bytes")
        out[key] = array_to_bytes(arr)
    return out


def encode_for_passive(msg: ToPassive, *, dtype: str = "float32") -> RecordDict:
    """What the active party seals for one passive's next round: gradient rows, second prototypes and mask, gate,
    and the test-rows flag as a one-byte array, so the sealed length never depends on it."""
    content = encode_to_passive(ToPassive(round=msg.round, splits=(), final=msg.final, gradients=msg.gradients,
                                          prototypes=msg.prototypes, prototype_mask=msg.prototype_mask,
                                          pseudo_threshold=msg.pseudo_threshold), dtype=dtype)
    return with_sealed(content, {TEST_PREVIOUS: bytes([int(bool(msg.test_previous))])})


def decode_for_passive(content: RecordDict, who: str, where: str, *, n_train: int, dim: int, num_classes: int,
                       dtype: str = "float32") -> ToPassive:
    """Inverse of :func:`encode_for_passive`, checked by the passive that opened it (sizes, finiteness, ranges);
    only the payload fields are set."""
    arrays_rec = content.get(ARRAYS)
    present = set(arrays_rec) if isinstance(arrays_rec, ArrayRecord) else set()
    expected: dict[str, tuple[str, tuple[int, ...]]] = {TEST_PREVIOUS: ("uint8", (1,))}
    if GRADIENTS in present:
        expected[GRADIENTS] = (dtype, (n_train, dim))
    arrays = check_arrays(arrays_rec, expected, who, where)
    conf: Any = content.get(CONFIG) or {}
    out = ToPassive(round=0, splits=(), final=False, test_previous=bool(arrays[TEST_PREVIOUS][0]))
    if GRADIENTS in arrays:
        out.gradients = _unwire(arrays[GRADIENTS])
    if f"{PROTOTYPES}.data" in conf:
        out.prototypes = check_matrix(conf, PROTOTYPES, (num_classes, dim), who, where)
        mask = conf.get(PROTOTYPE_MASK)
        if not isinstance(mask, list) or len(mask) != num_classes or not all(isinstance(b, bool) for b in mask):
            raise _bad(who, where, f"'{PROTOTYPE_MASK}' is not {num_classes} booleans")
        out.prototype_mask = np.asarray(mask, dtype=bool)
    gate = conf.get(PSEUDO_THRESHOLD)
    if gate is not None:
        if not isinstance(gate, float) or not 0.0 <= gate <= 1.0:
            raise _bad(who, where, f"'{PSEUDO_THRESHOLD}' is not a number in [0, 1]")
        out.pseudo_threshold = float(gate)
    return out


def full_metrics(reply: FromActive, passive_metrics: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Everything the active party can report of an exchange (``full`` policy): its own metrics and each passive's
    (which reach it sealed), ``passive1.<name>``."""
    out = {k: float(v) for k, v in active_metric_record(reply).items()}  # type: ignore[arg-type]
    for k, metrics in enumerate(passive_metrics, start=1):
        out.update({PASSIVE_METRICS.format(k) + n: float(v) for n, v in metrics.items()})
    return out


def passive_metrics_of(metrics: Mapping[str, Any], num_passive: int) -> list[dict[str, float]]:
    """Inverse of :func:`full_metrics`' passive part."""
    return [metrics_of(metrics, PASSIVE_METRICS.format(k)) for k in range(1, num_passive + 1)]


def progress_metrics(rnd: int, rounds: int) -> dict[str, float]:
    """What the active party reports under ``progress`` (the default): nothing derived from a label, only which
    exchange it finished and how many rounds it trained."""
    return {PROGRESS_METRICS + "exchange": float(rnd), PROGRESS_METRICS + "rounds": float(rounds)}


# ================================================================================================ prediction codecs
def encode_predict_request(req: PredictRequest) -> RecordDict:
    arrays: dict[str, np.ndarray] = {}
    if req.hub is not None:
        arrays[HUB] = bytes_to_array(req.hub)
    for k, (reblinded, own) in req.points.items():
        arrays[passive_key(k, REBLINDED)], arrays[passive_key(k, OWN)] = bytes_to_array(reblinded), bytes_to_array(own)
    if req.positions is not None:
        arrays[POSITIONS] = np.asarray(req.positions, dtype=np.int64)
    arrays.update({passive_key(k, EMBEDDINGS): e for k, e in req.embeddings.items()})
    return records(arrays=arrays, config={SOURCE: req.source, PASSIVES: list(req.passives)})


def decode_predict_request(content: RecordDict) -> PredictRequest:
    conf, arrays = config_in(content), arrays_in(content)
    passives = [int(k) for k in conf.get(PASSIVES, [])]
    points = {k: (array_to_bytes(arrays[passive_key(k, REBLINDED)]), array_to_bytes(arrays[passive_key(k, OWN)]))
              for k in passives if passive_key(k, REBLINDED) in arrays}
    return PredictRequest(str(conf[SOURCE]), passives=passives,
                          hub=array_to_bytes(arrays[HUB]) if HUB in arrays else None, points=points,
                          positions=arrays.get(POSITIONS),
                          embeddings={k: arrays[passive_key(k, EMBEDDINGS)] for k in passives
                                      if passive_key(k, EMBEDDINGS) in arrays})


def encode_predict_reply(reply: PredictReply) -> RecordDict:
    conf: dict[str, Any] = {}
    if reply.role is not None:
        conf.update({ROLE: reply.role, PARTY_INDEX: reply.index, MODEL: reply.model})
        conf.update({key: v for key, v in ((ROWS, reply.rows), (METHOD, reply.method)) if v is not None})
    if reply.aligned is not None:
        conf[ALIGNED] = reply.aligned
    if reply.path is not None:
        conf[PREDICTIONS] = reply.path
    arrays = {passive_key(k, POSITIONS): np.asarray(p, dtype=np.int64) for k, p in reply.positions.items()}
    for key, blob in ((HUB, reply.hub), (REBLINDED, reply.reblinded), (OWN, reply.own)):
        if blob is not None:
            arrays[key] = bytes_to_array(blob)
    if reply.embeddings is not None:
        arrays[EMBEDDINGS] = reply.embeddings
    return records(arrays=arrays or None, config=conf or None, metrics=reply.metrics or None)


def decode_predict_reply(content: RecordDict, passives: list[int] | None = None) -> PredictReply:
    """A prediction reply; ``passives``: whose positions an intersection reply carries."""
    conf: Any = content.get(CONFIG) or {}
    passives = passives or []
    arrays = arrays_in(content)
    blob = {key: array_to_bytes(arrays[key]) if key in arrays else None for key in (HUB, REBLINDED, OWN)}
    return PredictReply(
        role=None if ROLE not in conf else str(conf[ROLE]), index=int(conf.get(PARTY_INDEX, 0)),
        rows=None if ROWS not in conf else int(conf[ROWS]), method=None if METHOD not in conf else str(conf[METHOD]),
        model=bool(conf.get(MODEL, True)), hub=blob[HUB], reblinded=blob[REBLINDED], own=blob[OWN],
        aligned=None if ALIGNED not in conf else int(conf[ALIGNED]),
        positions={k: arrays[passive_key(k, POSITIONS)] for k in passives if passive_key(k, POSITIONS) in arrays},
        embeddings=arrays.get(EMBEDDINGS), metrics=metrics_of(content.get(METRICS)),
        path=None if PREDICTIONS not in conf else str(conf[PREDICTIONS]))
