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
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

from flwr_vproto.config import ConfigError

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
