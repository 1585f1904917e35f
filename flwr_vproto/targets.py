"""Bring your own code: import a Hydra-style ``_target_`` (a dotted path) and build from it, with one-line errors.

Used by ``model.encoder_target``, ``model.top_target`` (:mod:`flwr_vproto.models`) and ``method.extra_losses``
(:mod:`flwr_vproto.method.extra`). Plain Python: no Hydra or Flower needed at run time.

Why not ``hydra.utils.instantiate`` / ``get_object``: these run inside every party (a deployment's SuperNodes too,
from Flower's run-config, where no Hydra config exists), and a failure must be one line naming the party, the option
and the path. Hydra's public locator ``get_object`` logs an ERROR line of its own on every failure and wraps the cause
in a multi-line ``ImportError`` (its quiet form, ``_locate``, is in ``hydra._internal``), and it reports a missing
attribute of a module (``flwr_vproto.models.nope``) as a missing module. ``instantiate`` routes the kwargs and the
package's own arguments through OmegaConf (a tuple ``input_shape`` arrives as a ``ListConfig`` unless converted,
``${...}`` in a string would be interpolated) and wraps every error in an ``InstantiationException``. What is
re-written here is the part of ``_target_`` handling the package needs: import, then one call with the contract's
arguments plus the spec's keys.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from flwr_vproto.config import ConfigError


def import_target(path: str, option: str, party: str) -> Any:
    """The object at dotted ``path`` (``package.module.Name``, attributes after the module allowed).

    Raises :class:`~flwr_vproto.config.ConfigError` naming the party, the option and the path when it does not
    import, e.g. ``passive1: model.encoder_target '_target_' my_pkg.MyEnc does not import: ModuleNotFoundError ...``.
    """
    parts = path.split(".")
    error: Exception | None = None
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as err:
            if error is None:
                error = err
            continue
        except Exception as err:  # noqa: BLE001 - the module itself fails to import: report that
            error = err
            break
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
            return obj
        except AttributeError as err:
            error = error or err  # a missing module found first says more than a missing attribute
            break
    raise ConfigError(f"{party}: {option} '_target_' {path} does not import: {type(error).__name__}: {error}")


def call_target(spec: Mapping[str, Any], option: str, party: str, **contract: Any) -> Any:
    """Import ``spec['_target_']`` and call it with the ``contract`` arguments plus the spec's other keys."""
    path = str(spec["_target_"])
    target = import_target(path, option, party)
    kwargs = {k: v for k, v in spec.items() if k != "_target_"}
    clash = sorted(set(kwargs) & set(contract))
    if clash:
        raise ConfigError(f"{party}: {option} sets {clash}, which the package passes itself "
                          f"({', '.join(contract)}); remove them")
    try:
        return target(**contract, **kwargs)
    except Exception as err:  # noqa: BLE001 - any failure of user code: name what was being built
        raise ConfigError(f"{party}: {option} '_target_' {path} failed when called with "
                          f"{sorted([*contract, *kwargs])}: {type(err).__name__}: {err}") from err
