"""Optional dependencies (the extras in ``pyproject.toml``): whether one is installed, and the one-line error a run
gets when it asks for what a missing one does.

``opacus`` (extra ``dp``) accounts every Gaussian release (``privacy.*``, ``defence=gradient_noise``);
``matplotlib`` (extra ``plots``) draws the report's PNGs. Both are imported only where used, so a plain
``pip install flwr-vproto`` runs everything else; these checks run before any data is loaded, so a missing one
is one line naming the option and the install command, never an ``ImportError`` from deep inside a round.
"""

from __future__ import annotations

import importlib.util
import sys

from flwr_vproto.config import Config, ConfigError

EXTRAS = {"opacus": "dp", "matplotlib": "plots"}  # module -> the pyproject extra that installs it


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (found on the path, or already imported), without importing it."""
    if module in sys.modules:
        return sys.modules[module] is not None  # None: blocked, as ``import`` treats it
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def install_hint(module: str) -> str:
    return f"pip install 'flwr-vproto[{EXTRAS[module]}]' (or pip install {module})"


def require(module: str, needed_for: str) -> None:
    """Raise :class:`~flwr_vproto.config.ConfigError` in one line if ``module`` is missing, naming what needs it."""
    if not installed(module):
        raise ConfigError(f"{needed_for} needs {module}, an optional dependency that is not installed: "
                          f"{install_hint(module)}")


def check_accounting(cfg: Config) -> None:
    """A run that configures a Gaussian release needs Opacus (the ``dp`` extra), which accounts it. Both engines and
    the command line call this before any data is loaded (it imports nothing heavy)."""
    if cfg.privacy.gaussian:
        require("opacus", f"privacy.noise_multiplier={cfg.privacy.noise_multiplier:g} / privacy.target_epsilon="
                          f"{cfg.privacy.target_epsilon} (DP prototypes)")
    if cfg.defence.gaussian:
        require("opacus", f"defence.noise_multiplier={cfg.defence.noise_multiplier:g} / defence.target_epsilon="
                          f"{cfg.defence.target_epsilon} (the Gaussian gradient channel, defence=gradient_noise)")
