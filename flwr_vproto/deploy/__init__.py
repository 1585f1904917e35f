"""Deploy flwr_vproto from an install, no checkout: ``flwr-vproto deploy <command>``, ``python -m flwr_vproto.deploy``.

* ``certs``: the TLS certificates and SuperNode keys of a deployment (:mod:`.certs`);
* ``app DIR``: the Flower app folder ``flwr run`` sends (``pyproject.toml``: components, run-config; :mod:`.app`);
* ``connect``: a SuperLink connection in ``$FLWR_HOME/config.toml`` (:mod:`.connect`);
* ``local``: a SuperLink and one SuperNode per party on loopback, for a try-out (:mod:`.local`);
* ``submit``: ``flwr run --stream`` that exits 1 when the run failed (:mod:`.submit`).

docs/deployment.md walks through them. Flower is imported only by the commands that need it, inside them.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def flower_bin(name: str) -> str:
    """A Flower executable (``flwr``, ``flower-superlink``, ...) of this Python environment (next to the
    interpreter), else the one on ``PATH``: the SuperLink, SuperNodes and CLI then run the same installed package."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)
