"""flwr_vproto: vertical federated learning on Flower that also learns from non-aligned samples via prototypes.

The public API, importable from here (README "Your own ServerApp")::

    from flwr_vproto import VerticalProtoStrategy, config_from_dict, make_client_app

* :class:`VerticalProtoStrategy`: the server side, a Flower message-API strategy (``strategy.start(grid=grid)``);
* :func:`make_client_app` / :func:`make_server_app`: this package's ClientApp (one per party) and ServerApp;
* :class:`Config`, :func:`config_from_dict`, :func:`config_from_run_config`, :class:`ConfigError`: the one validated
  config of every engine, from a dict (Hydra, your code) or from Flower's run-config (``flwr run``);
* :func:`run_inprocess`: every party in this process (the reference engine, no Flower);
* :class:`LossBatch`: what a custom loss term of ``method.extra_losses`` receives (README "Extending");
* :func:`simulation_backend`: Flower's ``run_simulation`` ``backend_config`` for these parties (one CPU each by
  default), for a ServerApp of your own.

The names load on first use (module ``__getattr__``), so ``import flwr_vproto`` stays cheap: no torch, no Flower
until a name that needs them is asked for. ``__version__`` is a plain attribute.
"""

from __future__ import annotations

from importlib import import_module as _import_module
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

__version__ = "0.1.0"

_EXPORTS = {
    "VerticalProtoStrategy": "flwr_vproto.strategy",
    "make_client_app": "flwr_vproto.client_app",
    "make_server_app": "flwr_vproto.server_app",
    "Config": "flwr_vproto.config",
    "ConfigError": "flwr_vproto.config",
    "config_from_dict": "flwr_vproto.config",
    "config_from_run_config": "flwr_vproto.run_config",
    "run_inprocess": "flwr_vproto.inprocess",
    "LossBatch": "flwr_vproto.method.extra",
    "simulation_backend": "flwr_vproto.threads",
}

__all__ = [  # the names of _EXPORTS (tests/test_package.py checks that they agree)
    "Config",
    "ConfigError",
    "LossBatch",
    "VerticalProtoStrategy",
    "config_from_dict",
    "config_from_run_config",
    "make_client_app",
    "make_server_app",
    "run_inprocess",
    "simulation_backend",
]

if _TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__
    from flwr_vproto.client_app import make_client_app
    from flwr_vproto.config import Config, ConfigError, config_from_dict
    from flwr_vproto.inprocess import run_inprocess
    from flwr_vproto.method.extra import LossBatch
    from flwr_vproto.run_config import config_from_run_config
    from flwr_vproto.server_app import make_server_app
    from flwr_vproto.strategy import VerticalProtoStrategy
    from flwr_vproto.threads import simulation_backend


def __getattr__(name: str) -> _Any:
    """Import the module of a public name on first use and keep the name here (later lookups skip this)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flwr_vproto' has no attribute {name!r}")
    value = getattr(_import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names and the public names not loaded yet (for ``dir()`` and tab completion)."""
    return sorted({*globals(), *__all__})
