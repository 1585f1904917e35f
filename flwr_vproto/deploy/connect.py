"""Write a SuperLink connection into ``$FLWR_HOME/config.toml`` (default ``~/.flwr``), the file ``flwr run`` reads.

    flwr-vproto deploy connect --name bank-and-shop --address 127.0.0.1:9093 --insecure
    flwr-vproto deploy connect --name bank-and-shop --address superlink.example.org:9093 --root-certificates ca.pem

Flower 1.42 keeps SuperLink connections in that file (``[superlink.<name>]`` tables and ``[superlink] default``),
not in ``pyproject.toml``. This writes the table with Flower's own code (``flwr.cli.flower_config``), so the format
is Flower's: ``address`` plus ``insecure = true`` or the absolute path of ``root-certificates``. Other connections in
the file are kept; the new one becomes the default unless ``--no-default`` is given. Afterwards ``flwr run <app>
--stream`` (or ``flwr run <app> <name> --stream``, ``flwr-vproto deploy submit <app> <name>``) uses it.
"""

from __future__ import annotations

import re
from pathlib import Path

_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


def connect(name: str, address: str, root_certificates: str | None = None, insecure: bool = False,
            default: bool = True) -> Path:
    """Add (or replace) the connection ``name`` in ``$FLWR_HOME/config.toml``; returns the file's path."""
    from flwr.cli.flower_config import (
        read_flower_config,
        set_default_superlink_connection,
        write_superlink_connection,
    )
    from flwr.cli.typing import SuperLinkConnection

    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"--name {name!r}: use letters, digits, '-' and '_' (a TOML table name)")
    m = _ADDRESS.match(address)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"--address {address!r}: expected host:port, e.g. 127.0.0.1:9093 (the SuperLink's Control "
                         f"API, port 9093 by default)")
    if insecure == (root_certificates is not None):
        raise ValueError("give exactly one of --insecure (no TLS) and --root-certificates <ca.pem> (TLS)")
    cert = None
    if root_certificates is not None:
        path = Path(root_certificates).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"--root-certificates {root_certificates}: no such file")
        cert = str(path)
    write_superlink_connection(SuperLinkConnection(name=name, address=address, root_certificates=cert,
                                                   insecure=True if insecure else None))
    if default:
        set_default_superlink_connection(name)
    return read_flower_config()[1]
