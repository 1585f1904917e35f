"""Flower's flat run-config (``[tool.flwr.app.config]``, ``flwr run --run-config``) <-> the one typed
:class:`~flwr_vproto.config.Config`, so ``flwr run`` and Hydra validate the same way; plus the apps' own ``app.*``
settings and the config fingerprint every party must share. Not messaging: nothing here travels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import ConfigRecord
from flwr.common.config import flatten_dict, unflatten_dict

from flwr_vproto.config import (
    REPLY_TIMEOUT,
    WAIT_FOR_NODES,
    Config,
    ConfigError,
    config_from_dict,
    declared_defaults,
    field_default,
    moved_line,
    unknown_option_hint,
)

# ------------------------------------------------------------------------------------------------ app settings
APP_PREFIX = "app."
APP_DEFAULTS: dict[str, Any] = {
    "app.output-dir": "",  # where the ServerApp writes results.json ("" = ./outputs/flwr-run-<run id>)
    "app.timeout": REPLY_TIMEOUT,  # seconds to wait for any one reply before the run stops with an error
    "app.wait-for-nodes": WAIT_FOR_NODES,  # seconds to wait for all SuperNodes to connect
    "app.predict": "",  # "" = train; "held-out" or "file" = the prediction query round instead (flwr_vproto.query)
}


def _field_kind(annotation: str) -> str:
    """How a run-config string maps onto a dataclass field: ``plain``, ``optional_str`` or ``json`` (and
    ``nullable``, a plain field declared null: ``"null"`` until the dataset or ``method.name`` fills it)."""
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
        default = field_default(f)
        if dataclasses.is_dataclass(default):
            out.update(_fields(type(default), f"{name}."))
        else:
            kind = _field_kind(str(f.type))
            # a default that follows from the dataset or method.name is declared null: "null" in the run-config
            out[name] = ("nullable" if kind == "plain" and f.default is None else kind, None)
    return out


CONFIG_FIELDS = _fields(Config)


def run_config_from_config(cfg: Config | None = None) -> dict[str, bool | int | float | str]:
    """A :class:`Config` as Flower run-config: flat dotted keys (Flower's own ``flatten_dict``); lists, mappings and
    ``null`` as JSON strings, an optional text option's ``null`` as ``""``. Without ``cfg``: the declared defaults
    (:func:`~flwr_vproto.config.declared_defaults`: a per-dataset default such as ``num_rounds`` stays ``null``, so
    ``flwr run --run-config "dataset.name='adult'"`` gets adult's default as ``run_simulation.py dataset=adult`` does).

    That value encoding stays here because Flower's run-config has none: TOML and ``--run-config`` carry only
    bool/int/float/str, so a list (``model.hidden``), a mapping (``model.encoder_target``, which ``flatten_dict``
    would otherwise split into dotted keys of its own) or a ``null`` must travel as a string. This is what
    ``[tool.flwr.app.config]`` in ``pyproject.toml`` holds (plus :data:`APP_DEFAULTS`); a test keeps the two in sync.
    """

    def encode(values: Mapping[str, Any], cls: type, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value, key = values[f.name], f"{prefix}{f.name}"
            if key not in CONFIG_FIELDS:  # a nested section: walk it
                default = field_default(f)
                out[f.name] = encode(value, type(default), f"{key}.")
                continue
            kind = CONFIG_FIELDS[key][0]
            out[f.name] = (("" if value is None else value) if kind == "optional_str"
                           else json.dumps(value) if kind == "json"
                           else "null" if value is None and kind == "nullable" else value)
        return out

    return flatten_dict(encode(cfg.to_dict() if cfg is not None else declared_defaults(), Config, ""))


@dataclass
class AppSettings:
    """Run-config keys of the Flower apps themselves (``app.*``), not of the learning."""

    output_dir: str = ""
    timeout: float = REPLY_TIMEOUT
    wait_for_nodes: float = WAIT_FOR_NODES
    predict: str = ""  # "": train; "held-out" | "file": score new users with the saved models instead


def config_from_run_config(
    run_config: Mapping[str, Any], *, party_index: int | None = None, data_path: str | None = None
) -> tuple[Config, AppSettings]:
    """Flower run-config (flat dotted keys) -> validated :class:`Config` and the ``app.*`` settings.

    For ``dataset.name = "csv"`` in a deployment, every node knows only its own file: ``dataset.csv.paths`` may be
    left empty (``"[]"``) and each party's path comes from its node-config (``data-path``), filled in here for
    ``party_index``; the other entries get placeholders that nothing opens.
    """
    flat: dict[str, Any] = {}
    app: dict[str, Any] = {}
    for key, value in run_config.items():
        if key.startswith(APP_PREFIX):
            app[key] = value
            continue
        if moved_line(key):
            raise ConfigError(f"run-config key {moved_line(key)}")
        if key not in CONFIG_FIELDS:
            raise ConfigError(f"unknown run-config key {key!r}: {unknown_option_hint(key, CONFIG_FIELDS)} (every "
                              f"key: [tool.flwr.app.config] in the app's pyproject.toml)")
        kind = CONFIG_FIELDS[key][0]
        if isinstance(value, str) and kind == "json":
            try:
                value = json.loads(value) if value.strip() else None
            except json.JSONDecodeError as err:
                raise ConfigError(f"run-config {key}={value!r}: expected JSON (e.g. [256] or null): {err}") from None
        elif kind == "optional_str" and value == "":
            value = None
        elif kind == "nullable" and isinstance(value, str) and value.strip() in ("null", ""):
            value = None
        flat[key] = value
    nested = unflatten_dict(flat)  # Flower's own inverse of its flatten_dict
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
        raise ConfigError(f"unknown run-config key(s) {', '.join(unknown)}: "
                          f"{unknown_option_hint(unknown[0], APP_DEFAULTS)} (app keys: {', '.join(APP_DEFAULTS)})")
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
    return ConfigRecord({**run_config_from_config(cfg)})  # a copy typed as ConfigRecord's values


def config_of(record: Mapping[str, Any]) -> Config:
    """Inverse of :func:`config_record`; validated."""
    return config_from_run_config(record)[0]


def config_fingerprint(cfg: Config) -> str:
    """A short hash of everything parties must agree on (not the per-node data paths): catches mixed configs."""
    d = cfg.to_dict()
    d["dataset"]["csv"]["paths"] = len(d["dataset"]["csv"]["paths"])
    d["dataset"]["root"] = None  # fashion_mnist's folder: each deployed node's own data-path
    d.pop("engine", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
