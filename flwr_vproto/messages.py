"""What travels between the ServerApp and the ClientApps: message types, record keys and the codecs behind them.

Everything a party sends is built here, so one file says what can reach the server (design §2: never raw features,
raw IDs or labels). Payloads are:

* :class:`~flwr.app.ArrayRecord` for bulk numbers (embeddings, gradients, blinded PSI points, party state), because
  Flower chunks arrays and ships them without copies through Python lists;
* :class:`~flwr.app.ConfigRecord` for small settings and the second prototypes (float32 bytes, exact);
* :class:`~flwr.app.MetricRecord` for per-round metrics.

It also turns Flower's flat run-config (``[tool.flwr.app.config]``, ``flwr run --run-config``) into the one typed
:class:`~flwr_vproto.config.Config`, so ``flwr run`` and Hydra validate the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from flwr_vproto.config import Config, ConfigError, config_from_dict

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

# ------------------------------------------------------------------------------------------------ app settings
APP_PREFIX = "app."
APP_DEFAULTS: dict[str, Any] = {
    "app.output-dir": "",  # where the ServerApp writes results.json ("" = ./outputs/flwr-run-<run id>)
    "app.timeout": 600.0,  # seconds to wait for any one reply before the run stops with an error
    "app.wait-for-nodes": 120.0,  # seconds to wait for all SuperNodes to connect
    "app.predict": "",  # "" = train; "held-out" or "file" = the prediction query round instead (flwr_vproto.query)
}


class ProtocolError(RuntimeError):
    """A party failed, did not answer in time, or answered something the protocol does not allow."""


# ------------------------------------------------------------------------------------------------ arrays
def array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays -> ArrayRecord (``np.save`` format inside, no pickle)."""
    return ArrayRecord({k: Array.from_numpy_ndarray(np.ascontiguousarray(v)) for k, v in arrays.items()})


def arrays_of(record: ArrayRecord | None) -> dict[str, np.ndarray]:
    """Inverse of :func:`array_record`."""
    return {} if record is None else {k: v.numpy() for k, v in record.items()}


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


# ------------------------------------------------------------------------------------------------ checking replies
Expected = Mapping[str, tuple[str, tuple[int, ...]]]
"""Array name -> (dtype, shape); ``-1`` in a shape matches any length."""


def check_arrays(record: Any, expected: Expected, who: str, where: str, *, finite: bool = True) -> None:
    """Refuse a reply whose arrays are missing, extra, undecodable, mis-shaped, of another dtype or not finite.

    The server relays what parties send; checking here stops a corrupt or malicious payload at the party that sent
    it, with an error naming it and the round, instead of a shape error deep inside another party.
    """
    def bad(problem: str) -> ProtocolError:
        return ProtocolError(f"{who} sent a bad reply during {where}: {problem}")

    if not isinstance(record, ArrayRecord):
        raise bad(f"no '{ARRAYS}' array record")
    missing, extra = sorted(set(expected) - set(record)), sorted(set(record) - set(expected))
    if missing or extra:
        raise bad(f"arrays {missing} missing" if missing else f"unexpected arrays {extra}")
    for key, (dtype, shape) in expected.items():
        try:
            arr = record[key].numpy()
        except Exception as err:  # noqa: BLE001 - garbage bytes fail in many ways inside np.load
            raise bad(f"array '{key}' does not decode ({type(err).__name__}: {err})") from None
        if arr.dtype != np.dtype(dtype):
            raise bad(f"array '{key}' has dtype {arr.dtype}, expected {dtype}")
        if arr.ndim != len(shape) or any(w not in (-1, g) for g, w in zip(arr.shape, shape, strict=True)):
            raise bad(f"array '{key}' has shape {tuple(arr.shape)}, expected {tuple(shape)} (-1: any)")
        if finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise bad(f"array '{key}' holds {int((~np.isfinite(arr)).sum())} NaN/inf value(s)")


def check_matrix(config: Any, key: str, shape: tuple[int, int], who: str, where: str) -> None:
    """Refuse a :func:`put_matrix` entry that is missing, mis-sized or not finite."""
    def bad(problem: str) -> ProtocolError:
        return ProtocolError(f"{who} sent a bad reply during {where}: {problem}")

    if not isinstance(config, ConfigRecord) or f"{key}.data" not in config or f"{key}.shape" not in config:
        raise bad(f"'{key}' missing")
    data, got = config[f"{key}.data"], config[f"{key}.shape"]
    if not isinstance(data, bytes) or list(got) != list(shape) or len(data) != 4 * shape[0] * shape[1]:  # type: ignore
        raise bad(f"'{key}' has shape {got} and {len(data) if isinstance(data, bytes) else '?'} bytes, expected "
                  f"{list(shape)} float32")
    if not np.isfinite(np.frombuffer(data, dtype=np.float32)).all():
        raise bad(f"'{key}' holds NaN/inf values")


def check_config(config: Any, keys: Mapping[str, type | tuple[type, ...]], who: str, where: str) -> None:
    """Refuse a reply whose config record lacks one of ``keys`` or holds a value of another type."""
    if not isinstance(config, ConfigRecord):
        raise ProtocolError(f"{who} sent a bad reply during {where}: no '{CONFIG}' config record")
    for key, types in keys.items():
        value = config.get(key)
        if value is None or isinstance(value, bool) != (types is bool) or not isinstance(value, types):
            raise ProtocolError(f"{who} sent a bad reply during {where}: '{key}' is {value!r}, expected "
                                f"{getattr(types, '__name__', types)}")


# ------------------------------------------------------------------------------------------------ metrics
def metric_record(metrics: Mapping[str, float], prefix: str = "") -> MetricRecord:
    """Float metrics -> MetricRecord, keys optionally prefixed (``val.accuracy``)."""
    return MetricRecord({f"{prefix}{k}": float(v) for k, v in metrics.items()})


def metrics_of(record: MetricRecord | Mapping[str, Any] | None, prefix: str = "") -> dict[str, float]:
    """The metrics of ``record`` whose key starts with ``prefix``, prefix removed."""
    if record is None:
        return {}
    return {k[len(prefix):]: float(v) for k, v in record.items() if k.startswith(prefix)}  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ prototypes
def put_matrix(config: ConfigRecord, key: str, value: np.ndarray) -> None:
    """A small float32 matrix (second prototypes) into a ConfigRecord as exact bytes plus its shape."""
    value = np.ascontiguousarray(value, dtype=np.float32)
    config[f"{key}.data"] = value.tobytes()
    config[f"{key}.shape"] = [int(s) for s in value.shape]


def get_matrix(config: Mapping[str, Any], key: str) -> np.ndarray | None:
    """Inverse of :func:`put_matrix`; ``None`` when the key is absent."""
    if f"{key}.data" not in config:
        return None
    shape = tuple(int(s) for s in config[f"{key}.shape"])  # type: ignore[union-attr]
    return np.frombuffer(config[f"{key}.data"], dtype=np.float32).reshape(shape).copy()  # type: ignore[arg-type]


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


# ------------------------------------------------------------------------------------------------ run-config
def _field_kind(annotation: str) -> str:
    """How a run-config string maps onto a dataclass field: ``plain``, ``optional_str`` or ``json``."""
    a = annotation.replace(" ", "")
    if a in ("str", "int", "float", "bool", "float|str"):  # TOML carries these natively
        return "plain"
    if a == "str|None":
        return "optional_str"
    return "json"


def _fields(cls: type, prefix: str = "") -> dict[str, tuple[str, type | None]]:
    """Dotted name -> (kind, nested dataclass) for every leaf field of ``cls``."""
    out: dict[str, tuple[str, type | None]] = {}
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore
        if dataclasses.is_dataclass(default):
            out.update(_fields(type(default), f"{name}."))
        else:
            out[name] = (_field_kind(str(f.type)), None)
    return out


CONFIG_FIELDS = _fields(Config)


def run_config_from_config(cfg: Config | None = None) -> dict[str, bool | int | float | str]:
    """A :class:`Config` as Flower run-config: flat dotted keys; lists and ``null`` as JSON strings.

    This is what ``[tool.flwr.app.config]`` in ``pyproject.toml`` holds (plus :data:`APP_DEFAULTS`); a test keeps
    the two in sync.
    """
    flat: dict[str, Any] = {}

    def walk(d: Mapping[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, Mapping):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk((cfg or Config()).to_dict(), "")
    out: dict[str, bool | int | float | str] = {}
    for key, value in flat.items():
        kind = CONFIG_FIELDS[key][0]
        if kind == "optional_str":
            out[key] = "" if value is None else value
        elif kind == "json":
            out[key] = json.dumps(value)
        else:
            out[key] = value
    return out


@dataclass
class AppSettings:
    """Run-config keys of the Flower apps themselves (``app.*``), not of the learning."""

    output_dir: str = ""
    timeout: float = 600.0
    wait_for_nodes: float = 120.0
    predict: str = ""  # "": train; "held-out" | "file": score new users with the saved models instead


def config_from_run_config(
    run_config: Mapping[str, Any], *, party_index: int | None = None, data_path: str | None = None
) -> tuple[Config, AppSettings]:
    """Flower run-config (flat dotted keys) -> validated :class:`Config` and the ``app.*`` settings.

    For ``dataset.name = "csv"`` in a deployment, every node knows only its own file: ``dataset.csv.paths`` may be
    left empty (``"[]"``) and each party's path comes from its node-config (``data-path``), filled in here for
    ``party_index``; the other entries get placeholders that nothing opens.
    """
    nested: dict[str, Any] = {}
    app: dict[str, Any] = {}
    for key, value in run_config.items():
        if key.startswith(APP_PREFIX):
            app[key] = value
            continue
        if key not in CONFIG_FIELDS:
            raise ConfigError(f"unknown run-config key {key!r}; known: {', '.join(sorted(CONFIG_FIELDS))}, "
                              f"{', '.join(APP_DEFAULTS)}")
        kind = CONFIG_FIELDS[key][0]
        if isinstance(value, str) and kind == "json":
            try:
                value = json.loads(value) if value.strip() else None
            except json.JSONDecodeError as err:
                raise ConfigError(f"run-config {key}={value!r}: expected JSON (e.g. [256] or null): {err}") from None
        elif kind == "optional_str" and value == "":
            value = None
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    data = nested.setdefault("dataset", {})
    if data.get("name") == "csv":
        k = int(data.get("num_passive", Config().dataset.num_passive))
        csv = data.setdefault("csv", {})
        paths = list(csv.get("paths") or [])
        if not paths:
            paths = [f"<data-path of party {i}>" for i in range(k + 1)]
        if data_path is not None and party_index is not None and 0 <= party_index < len(paths):
            paths[party_index] = data_path
        csv["paths"] = paths
    unknown = sorted(set(app) - set(APP_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown run-config key(s) {', '.join(unknown)}; known app keys: {', '.join(APP_DEFAULTS)}")
    merged = {**APP_DEFAULTS, **app}
    try:
        settings = AppSettings(output_dir=str(merged["app.output-dir"]), timeout=float(merged["app.timeout"]),
                               wait_for_nodes=float(merged["app.wait-for-nodes"]),
                               predict=str(merged["app.predict"]))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid app.* run-config value: {err}") from None
    if settings.timeout <= 0 or settings.wait_for_nodes <= 0:
        raise ConfigError("app.timeout and app.wait-for-nodes must be > 0 seconds")
    if settings.predict not in ("", "held-out", "file"):
        raise ConfigError(f"invalid app.predict={settings.predict!r}: expected \"\" (train), \"held-out\" or \"file\"")
    return config_from_dict(nested), settings


def config_record(cfg: Config) -> ConfigRecord:
    """A :class:`Config` as a ConfigRecord (the run-config form), e.g. to ship it inside a message."""
    return ConfigRecord(run_config_from_config(cfg))


def config_of(record: Mapping[str, Any]) -> Config:
    """Inverse of :func:`config_record`; validated."""
    return config_from_run_config(record)[0]


def config_fingerprint(cfg: Config) -> str:
    """A short hash of everything parties must agree on (not the per-node data paths): catches mixed configs."""
    d = cfg.to_dict()
    d["dataset"]["csv"]["paths"] = len(d["dataset"]["csv"]["paths"])
    d.pop("engine", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
