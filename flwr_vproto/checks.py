"""Checks before any engine starts, and one-line error messages for the user.

``run_simulation.py`` (:mod:`flwr_vproto.cli`) calls :func:`check_inputs` before Ray (``engine=flower``) or the
in-process trainer starts. It first checks that every file the run names exists (:func:`check_files`), before the
loaders import pandas, scikit-learn and torch (seconds on an idle machine, tens of seconds on a busy one), so a
mistyped path fails at once. Then every party's data is loaded with the loaders' own checks
(:mod:`flwr_vproto.data`: an unreadable file, no ID or label column, duplicate IDs, empty/NaN cells, values that
cannot be encoded, each raised as a ``DataError`` naming the file and the column) and the overlap of IDs that
private set intersection will find is counted (too few aligned training users, or no validation or test user in
every party's data, would stop the run after PSI). A bad input thus fails in seconds with one line, e.g.
``data error: bank.csv: column 'x' has 1 empty/NaN value(s) ...``.

In a deployment the driver cannot see the parties' files; each SuperNode's error comes back wrapped in Flower's
reply (``<class '...DataError'>:<'...'>``, under Ray a whole traceback with colour codes).
:func:`party_error_line` turns the strategy's ``ProtocolError`` into one line naming the party, the phase and the
party's own message.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flwr_vproto.config import Config

DATA_ERRORS = ("DataError", "PSIError")  # a party's bad input: reported as "data error: ..."


def full_errors() -> bool:
    """``HYDRA_FULL_ERROR=1``: show the full traceback instead of the one-line message (Hydra's own switch)."""
    return os.environ.get("HYDRA_FULL_ERROR", "") == "1"


def _names(paths: list[str]) -> str:
    return ", ".join(os.path.basename(p) for p in paths)


def check_files(cfg: Config) -> None:
    """Raise ``DataError`` (the loader's own message) for a ``dataset.csv.paths`` file that does not exist.

    Only the standard library and :mod:`flwr_vproto.data.types` (numpy) are imported here: the loaders' imports cost
    seconds, which a typo in a path should not have to wait for.
    """
    from flwr_vproto.data.types import DataError

    if cfg.dataset.name != "csv":
        return
    for path in cfg.dataset.csv.paths:
        file = Path(path)
        if not file.is_file():  # the same line as flwr_vproto.data.csv_files.read_csv_text
            raise DataError(f"CSV file not found: {path}" if not file.exists() else f"not a file: {path}")


def check_inputs(cfg: Config) -> dict[str, Any]:
    """Load every party's data as the engines will and count the aligned users; raise ``DataError`` if the run
    would fail on its inputs. Returns ``{"aligned": {split: count}}`` (the overlap PSI will find)."""
    check_files(cfg)  # before the loaders' imports
    from flwr_vproto.data import DataError, load_vertical_dataset

    ds = load_vertical_dataset(cfg)  # every file: exists, parses, ID/label columns, duplicates, NaN, encodable
    where = (f"every CSV file ({_names(cfg.dataset.csv.paths)})" if cfg.dataset.name == "csv"
             else f"every party's share of {cfg.dataset.name}")
    aligned: dict[str, int] = {}
    for split in ("train", "val", "test"):
        common = set(ds.parties[0].split(split).ids.tolist())
        for party in ds.parties[1:]:
            common &= set(party.split(split).ids.tolist())
        aligned[split] = len(common)
    need = max(2, int(cfg.dataset.min_aligned))
    if aligned["train"] < need:
        raise DataError(f"only {aligned['train']} training user ID(s) appear in {where}; training needs at least "
                        f"{need} aligned users (dataset.min_aligned={cfg.dataset.min_aligned})")
    for split, what in (("val", "validation"), ("test", "test")):
        if aligned[split] < 1:
            raise DataError(f"no {what} user ID appears in {where}: nothing could be validated or scored jointly "
                            f"(users are split by a keyed hash of their ID; the files need more users in common)")
    return {"aligned": aligned}


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_WRAPPED = re.compile(r"^<class '([^']+)'>:<'(.*)'>$", re.S)  # Flower's reason: "<class 'X'>:<'message'>"
_EXC_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit)): (.+?)\s*$")


def unwrap_reason(reason: str) -> tuple[str, str]:
    """A ClientApp's error as Flower reports it -> ``(exception class name, the party's own message)``.

    Flower wraps it as ``<class 'pkg.DataError'>:<'message'>``; under Ray the message is a whole traceback (with
    colour codes) that ends in the party's exception line. Unknown shapes come back unchanged (class ``""``).
    """
    text = _ANSI.sub("", reason).strip()
    cls = ""
    m = _WRAPPED.match(text)
    if m:
        cls, text = m.group(1).rsplit(".", 1)[-1], m.group(2).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1 or "Traceback (most recent call last)" in text:
        found = [_EXC_LINE.match(ln) for ln in lines]
        hits = [f for f in found if f and "ClientAppException" not in f.group(1) and "RayTaskError" not in f.group(1)]
        ours = [f for f in hits if f.group(1) in DATA_ERRORS]
        if ours or hits:
            best = (ours or hits)[-1]
            return best.group(1), best.group(2)
    return cls, text


_PARTY = re.compile(r"^(active|passive\d+): ")  # a ClientApp's data errors start with its party name
_FAILED = re.compile(r"^(?P<who>.+?) failed during (?P<where>.+?): (?P<reason>.*?)(?: \(error code \d+\))?$", re.S)


_USER_ERRORS = (("flwr_vproto.data.types", "DataError", "data error"), ("flwr_vproto.psi", "PSIError", "data error"),
                ("flwr_vproto.checkpoint", "CheckpointError", "checkpoint error"),
                ("flwr_vproto.protocol", "ProtocolError", None), ("flwr_vproto.config", "ConfigError", "config error"))


def user_error_kind(err: BaseException) -> str | None:
    """What a failure is to the user: ``"data error"``, ``"checkpoint error"``, ``"config error"``, ``"party"`` (a
    party failed: :func:`party_error_line`) or ``None`` (a bug: keep the traceback).

    Looks the error classes up only in modules already imported: an error of a module that was never imported cannot
    have been raised, and importing :mod:`flwr_vproto.checkpoint` or :mod:`flwr_vproto.protocol` just to ask would
    load torch (a second or more) after a bad path has already been found.
    """
    import sys

    for module, name, kind in _USER_ERRORS:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(err, getattr(loaded, name)):
            return kind or "party"
    return None


def party_error_line(err: BaseException) -> str:
    """One line for a failed run: ``data error: passive1 (node 7) during discovery: shop.csv: column ...`` when a
    party's input was bad, else ``error: <the message>`` with any Ray/ClientApp wrapping removed."""
    text = str(err)
    m = _FAILED.match(text)
    if m:
        cls, message = unwrap_reason(m.group("reason"))
        kind = "data error" if cls in DATA_ERRORS else "error"
        who = m.group("who")
        named = _PARTY.match(message)
        if named and who.startswith("node "):  # before discovery ends the server knows only the node ID
            who, message = f"{named.group(1)} ({who})", message[named.end():]
        shown = message if cls in DATA_ERRORS or not cls else f"{cls}: {message}"
        return f"{kind}: {who} during {m.group('where')}: {' '.join(shown.split())}"
    cls = type(err).__name__
    kind = "data error" if cls in DATA_ERRORS else "error"
    return f"{kind}: {' '.join(text.split())}"
