"""Bring your own code: a Hydra-style ``_target_`` built by ``hydra.utils.instantiate``, with one-line errors.

Used by ``model.encoder_target``, ``model.top_target`` (:mod:`flwr_vproto.models`) and ``method.extra_losses``
(:mod:`flwr_vproto.method.extra`). Every party builds its own, a deployment's SuperNodes too, from the run-config the
ServerApp sends them, so a target is config data that chooses code to run in another organisation's process. Hydra's
``instantiate`` is what builds it because it refuses execution-capable targets (``os.system``, ``subprocess.Popen``,
``builtins.eval`` ...) by a policy kept up to date upstream, resolves nested ``_target_`` keys, and is what a Hydra
user expects a ``_target_`` to mean.

Two things are added around it:

- The spec is built with ``_partial_=True`` (``_convert_="all"``, so keyword values are plain lists and dicts) and
  the package's own arguments (``input_shape``, ``num_classes`` ...) are passed at the call, untouched: a tuple
  stays a tuple, a tensor is not copied through OmegaConf.
- Hydra's errors are several lines with a chained cause (``InstantiationException``); a failure here is one line
  naming the party, the option and the path (:class:`~flwr_vproto.config.ConfigError`).

Hydra's blocklist is, in Hydra's own words, not a complete security boundary. So a deployed node is its own
authority (:func:`check_allowed`): it builds a target only if its node-config ``allow-targets`` names it
(``client_app.py``); in simulation the researcher owns every node, and the runner allows what the config names.
The package's own model classes (:data:`BUILT_IN`) need no allowance.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

from flwr_vproto.config import ConfigError

ALLOW_TARGETS = "allow-targets"  # the node-config key of a deployed node's allow-list
BUILT_IN = frozenset({"flwr_vproto.models.MLPEncoder", "flwr_vproto.models.CNNEncoder"})
"""The package's own model classes: a node needs no allowance to build them (exact paths only)."""
# An allow-list entry: a dotted path (exactly that target) or a dotted prefix ending ".*" (anything under it).
_ENTRY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(\.\*)?$")

# Hydra's locator message, "Error locating target 'a.b.c', ...": the path that failed (a nested one may differ).
_LOCATING = re.compile(r"^Error locating target '([^']*)'")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _instantiation_error(err: Exception, path: str, option: str, party: str) -> ConfigError:
    """One line for Hydra's ``InstantiationException``: a target that does not import names its root cause (and
    Hydra's hint, e.g. "Are you sure that module 'my_pkg' is installed?"); a refused target says Hydra's reason."""
    located = _LOCATING.match(str(err))
    cause = err.__cause__
    if located and isinstance(cause, ImportError):
        failed = located.group(1)
        root = cause.__cause__ if cause.__cause__ is not None else cause
        last = str(cause).splitlines()[-1]
        hint = last if last.startswith("Are you sure") else ""
        where = "" if failed == path else f" (nested in {path})"
        return ConfigError(f"{party}: {option} '_target_' {failed}{where} does not import: "
                           f"{type(root).__name__}: {_one_line(str(root))}" + (f" ({hint})" if hint else ""))
    return ConfigError(f"{party}: {option} '_target_' {path} is refused by Hydra's instantiate: {_one_line(str(err))}")


def target_factory(spec: Mapping[str, Any], option: str, party: str, *,
                   drop: Collection[str] = ()) -> functools.partial[Any]:
    """``spec['_target_']`` located and bound to the spec's other keys (less ``drop``), not yet called.

    A ``functools.partial`` from ``hydra.utils.instantiate(spec, _partial_=True)``: calling it calls the target with
    the spec's keys plus the call's. Raises :class:`~flwr_vproto.config.ConfigError` in one line naming the party,
    the option and the path when the target does not import or Hydra refuses it, e.g.
    ``passive1: model.encoder_target '_target_' my_pkg.MyEnc does not import: ModuleNotFoundError: ...``.
    """
    from hydra.errors import InstantiationException  # imported here: only runs that name a target pay for Hydra
    from hydra.utils import instantiate

    path = str(spec["_target_"])
    node = {k: v for k, v in spec.items() if k not in drop}
    try:
        return instantiate(node, _partial_=True, _convert_="all")
    except InstantiationException as err:
        raise _instantiation_error(err, path, option, party) from err
    except Exception as err:  # noqa: BLE001 - e.g. OmegaConf refusing a value, or a nested target failing its call
        raise ConfigError(f"{party}: {option} '_target_' {path} could not be built: "
                          f"{type(err).__name__}: {_one_line(str(err))}") from err


def call_factory(factory: Callable[..., Any], path: str, option: str, party: str, **contract: Any) -> Any:
    """``factory(**contract)``, any failure of the user's code in one line naming what was being built."""
    try:
        return factory(**contract)
    except Exception as err:  # noqa: BLE001 - any failure of user code: name what was being built
        bound = getattr(factory, "keywords", None) or {}
        raise ConfigError(f"{party}: {option} '_target_' {path} failed when called with "
                          f"{sorted([*contract, *bound])}: {type(err).__name__}: {_one_line(str(err))}") from err


def call_target(spec: Mapping[str, Any], option: str, party: str, **contract: Any) -> Any:
    """Build ``spec['_target_']`` with the ``contract`` arguments plus the spec's other keys.

    The spec may not set a contract argument itself (the package passes those): that is refused in one line rather
    than silently overridden.
    """
    path = str(spec["_target_"])
    clash = sorted(set(spec) & set(contract))
    if clash:
        raise ConfigError(f"{party}: {option} sets {clash}, which the package passes itself "
                          f"({', '.join(contract)}); remove them")
    return call_factory(target_factory(spec, option, party), path, option, party, **contract)


# ------------------------------------------------------------------------------------------------ a node's authority
def parse_allow_list(value: Any, party: str) -> tuple[str, ...]:
    """Node-config ``allow-targets``: comma-separated entries, each ``pkg.mod.Name`` (that target exactly) or
    ``pkg.*`` (every target whose path starts with ``pkg.``, at any depth). No other wildcard: ``pkg*`` or ``*`` is
    refused in one line, so an entry never allows more than it reads as."""
    entries = tuple(e.strip() for e in str(value or "").split(",") if e.strip())
    bad = [e for e in entries if not _ENTRY.match(e)]
    if bad:
        raise ConfigError(f"{party}: node-config {ALLOW_TARGETS} entry {bad[0]!r}: expected a dotted path "
                          f"('my_pkg.MyEnc') or a dotted prefix ending in '.*' ('my_pkg.*')")
    return entries


def party_targets(cfg: Any, role: str) -> list[tuple[str, str]]:
    """``(option, path)`` of every ``_target_`` a party of ``role`` would build, nested ones included (Hydra
    builds those too): a passive builds only its encoder, the active party also its top model and loss terms."""
    specs: list[tuple[str, Any]] = [("model.encoder_target", cfg.model.encoder_target)]
    if role == "active":
        specs += [("model.top_target", cfg.model.top_target), ("method.extra_losses", cfg.method.extra_losses)]
    found: list[tuple[str, str]] = []

    def walk(option: str, node: Any) -> None:
        if isinstance(node, Mapping):
            if "_target_" in node:
                found.append((option, str(node["_target_"])))
            for value in node.values():
                walk(option, value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(option, value)

    for option, spec in specs:
        walk(option, spec)
    return found


def _real_module(path: str) -> str | None:
    """The module that really defines ``path``'s object (``None``: it does not import, or names no module).

    ``my_pkg.os.system`` reads as ``my_pkg.*`` but is ``os.system``: a prefix entry allows what is *defined* under
    it, not what is merely reachable through it."""
    from hydra.utils import get_object

    try:
        obj = get_object(path)
    except Exception:  # noqa: BLE001 - a target that does not import fails later with its own one-line error
        return None
    module = getattr(obj, "__module__", None)
    return module if isinstance(module, str) else None


def allowed(path: str, entries: Collection[str]) -> bool:
    """Whether a node whose ``allow-targets`` are ``entries`` builds ``path`` (see :func:`parse_allow_list`)."""
    if path in BUILT_IN or path in entries:
        return True
    prefixes = [e[:-1] for e in entries if e.endswith(".*") and path.startswith(e[:-1])]  # "my_pkg.*": "my_pkg."
    if not prefixes:
        return False
    module = _real_module(path)
    return module is None or any((module + ".").startswith(p) for p in prefixes)


def check_allowed(cfg: Any, role: str, party: str, entries: Collection[str]) -> None:
    """Refuse, in one line naming the party, the option, the target and the node-config key, any ``_target_`` this
    party would build that its node does not allow. Nothing is imported for a target no entry allows."""
    for option, path in party_targets(cfg, role):
        if not allowed(path, entries):
            have = f" (it allows {', '.join(entries)})" if entries else ""
            raise ConfigError(f"{party}: {option} '_target_' {path} is not allowed on this node{have}: its operator "
                              f"adds it to node-config {ALLOW_TARGETS} (e.g. {ALLOW_TARGETS}=\"{path}\") to run it")
