"""The Flower app folder that ``flwr run`` sends, written from the installed package: no checkout needed.

    flwr-vproto deploy app vproto-app        # = python -m flwr_vproto.deploy app vproto-app
    flwr run vproto-app <superlink> --stream --run-config "..."

``flwr run <folder>`` reads ``<folder>/pyproject.toml``: a ``[project]`` name and version, and ``[tool.flwr.app]``
with the ServerApp/ClientApp components and the default run-config, and ships them as a FAB. The FAB carries no
code here: the components are the ``flwr_vproto`` package installed on the SuperLink's and every SuperNode's host
(discovery refuses a node whose version differs). So the folder holds only that ``pyproject.toml`` and a
``README.md``, both written by :func:`write_app` from :func:`app_tables`, the same source the repository's own
``[tool.flwr.app]`` tables are checked against (``tests/test_package.py``): they cannot drift apart.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

PUBLISHER = "flwr-vproto"
COMPONENTS = {"serverapp": "flwr_vproto.server_app:app", "clientapp": "flwr_vproto.client_app:app"}
FAB_INCLUDE = ["/README.md"]  # the FAB: pyproject.toml (always) and README.md; never code or data
PROJECT = "flwr-vproto"  # a Flower app name: letters, digits, hyphens (the import name stays flwr_vproto)


def app_tables() -> dict[str, Any]:
    """``[tool.flwr.app]`` as a dict: publisher, ``fab-include``, components and the run-config (flat dotted keys:
    every :class:`~flwr_vproto.config.Config` field with its declared default, plus the apps' ``app.*`` keys)."""
    from flwr_vproto.run_config import APP_DEFAULTS, run_config_from_config

    return {"publisher": PUBLISHER, "fab-include": list(FAB_INCLUDE), "components": dict(COMPONENTS),
            "config": {**run_config_from_config(), **APP_DEFAULTS}}


def _toml_value(value: Any) -> str:
    """A bool, int, float or str as TOML (JSON's string escapes are TOML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def pyproject_text() -> str:
    """The app's ``pyproject.toml``."""
    from flwr_vproto import __version__

    tables = app_tables()
    lines = [
        "# Written by `flwr-vproto deploy app` (flwr_vproto " + __version__ + "): the Flower app `flwr run` sends.",
        "# No code travels: the components are the flwr_vproto package installed on every host (same version).",
        "# Override the run-config with `flwr run <this folder> <superlink> --run-config \"key=value ...\"`.",
        "[project]",
        f"name = {_toml_value(PROJECT)}",
        f"version = {_toml_value(__version__)}",
        'description = "Vertical federated learning with class prototypes (flwr_vproto), as a Flower app"',
        'license = "Apache-2.0"',
        f"dependencies = [{_toml_value(f'flwr-vproto=={__version__}')}]",
        "",
        "[tool.flwr.app]",
        f"publisher = {_toml_value(tables['publisher'])}",
        f"fab-include = {_toml_value(tables['fab-include'])}",
        "",
        "[tool.flwr.app.components]",
        *(f"{k} = {_toml_value(v)}" for k, v in tables["components"].items()),
        "",
        "[tool.flwr.app.config]",
        *(f"{k} = {_toml_value(v)}" for k, v in tables["config"].items()),
    ]
    text = "\n".join(lines) + "\n"
    from flwr.common.config import flatten_dict

    app = tomllib.loads(text)["tool"]["flwr"]["app"]
    assert {**app, "config": flatten_dict(app["config"])} == tables, "the TOML does not read back as written"
    return text


README = """# flwr-vproto Flower app

Written by `flwr-vproto deploy app`. `flwr run` sends this folder's `pyproject.toml` (the components and the
default run-config) and this file; the ServerApp and ClientApp are the `flwr_vproto` package installed on the
SuperLink's and every SuperNode's host. See the package's docs/deployment.md.
"""


def write_app(folder: Path, force: bool = False) -> Path:
    """Write ``pyproject.toml`` and ``README.md`` into ``folder`` (made if needed); refuse to replace a
    ``pyproject.toml`` that is not one of ours unless ``force``. Returns the folder, absolute."""
    folder = Path(folder).expanduser().resolve()
    toml = folder / "pyproject.toml"
    if toml.exists() and not force and "Written by `flwr-vproto deploy app`" not in toml.read_text(errors="replace"):
        raise FileExistsError(f"{toml} exists and was not written by `flwr-vproto deploy app`; pass --force to "
                              f"replace it, or choose another folder")
    folder.mkdir(parents=True, exist_ok=True)
    toml.write_text(pyproject_text(), encoding="utf-8")
    (folder / "README.md").write_text(README, encoding="utf-8")
    return folder
