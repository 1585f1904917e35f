"""Checkpoints: each party and the server save their own state every ``checkpoint.every`` rounds; ``resume`` continues.

Layout under ``checkpoint.dir`` (one folder per writer, so in a deployment every organisation keeps its own)::

    <dir>/server/round-<r>.pt     the strategy: round, history, relayed gradients and second prototypes
    <dir>/<party>/round-<r>.pt    each party: its models, optimizer, alignment and facts (never sent anywhere)
    <dir>/active/secret.hex       the active party's defences' secret (64 hex digits, mode 0600), never in a blob

A deployed party's folder is its SuperNode's node-config ``checkpoint-dir`` (required there, so the run config's
``checkpoint.dir``, the ServerApp's, chooses no path on a node: ``client_app.authorize``): its state never leaves its
machine. Every file is written to ``<name>.tmp`` and renamed, so a file that exists is whole. The server writes its
round-``r`` file only after every party replied for round ``r``, and a party replies only after writing its file,
so the server's latest file names the last *complete* checkpoint. Each writer keeps its two latest files: a party
may have written round ``r`` while the server, killed before writing it, still needs round ``r - every``.

Files are :func:`torch.save` dicts of tensors and plain values, loaded with ``weights_only`` (no pickled code).
The active party's secret (the key of every random draw its defences release, :mod:`flwr_vproto.defences`) is taken
out of its state before the blob is written and kept in :data:`SECRET_FILE` beside it, readable by its owner only:
a blob copied elsewhere (to inspect it, to back it up) carries no secret, and :func:`load_party_state` puts it back,
so a resumed run draws exactly what the interrupted one would have. The file is also a valid
``runner.active_secret_file`` / node-config ``active-secret-file`` to reproduce the run.
Learning code only: no Flower here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flwr_vproto import exchanges
from flwr_vproto.config import Config
from flwr_vproto.parties import bytes_tensor, state_from_bytes, state_to_bytes, tensor_bytes

SERVER = "server"
# Every file's layout and its config fingerprint's keys (resume_fingerprint): bump it when either changes (a new
# option included). A file of another format is refused (load), never translated: files without a number are 1.
FORMAT = 4  # 4: the joint trees' unmixing in the active party's state (issue 28); 3: method.research.loss_form removed
FORMAT_KEY = "format"
SECRET_FILE = "secret.hex"  # in the active party's checkpoint folder: its secret, mode 0600
SECRET_KEY = "secret"  # the key of the secret in the active party's state dict (parties.py)
_NAME = re.compile(r"^round-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or belongs to another configuration; the message names it."""


def due(cfg: Config, rnd: int) -> bool:
    """Is exchange ``rnd`` a checkpoint one (``checkpoint.every`` counts exchanges: a round, unless an exchange
    trains several, :mod:`flwr_vproto.exchanges`)?"""
    return cfg.checkpoint.every > 0 and rnd % cfg.checkpoint.every == 0


def resume_fingerprint(cfg: Config) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote the checkpoint: everything but how it is run."""
    d = cfg.to_dict()
    for key in ("engine", "resume", "checkpoint"):
        d.pop(key, None)
    d["dataset"]["csv"]["paths"] = len(d["dataset"]["csv"]["paths"])  # per-node paths may move
    d["exchange"]["count"] = exchanges.count(cfg)  # null (auto) as it resolves: what the run did
    return d


def party_dir(cfg: Config, name: str, override: str | None = None) -> Path:
    """A party's checkpoint folder: its own ``override`` (node-config ``checkpoint-dir``) or ``<dir>/<name>``."""
    if override:
        return Path(override)
    if cfg.checkpoint.dir is None:
        raise CheckpointError(f"{name}: checkpoints are on (checkpoint.every={cfg.checkpoint.every}) or resume=true "
                              f"but neither checkpoint.dir nor this node's node-config checkpoint-dir says where "
                              f"they go")
    return Path(cfg.checkpoint.dir) / name


def _path(folder: Path, rnd: int) -> Path:
    return folder / f"round-{rnd}.pt"


def rounds_in(folder: Path) -> list[int]:
    """Rounds with a whole checkpoint file in ``folder``, ascending."""
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _NAME.match(p.name)))


def save(folder: Path, rnd: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` as round ``rnd``'s file atomically (temp file, fsync, rename); keep the ``keep`` latest."""
    folder.mkdir(parents=True, exist_ok=True)
    target = _path(folder, rnd)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(state_to_bytes({FORMAT_KEY: FORMAT, **state}))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    for old in rounds_in(folder)[:-keep]:
        _path(folder, old).unlink(missing_ok=True)
    return target


def load(folder: Path, rnd: int, who: str) -> dict[str, Any]:
    """Round ``rnd``'s file of ``who`` (a party or the server); a clear error when it is not there."""
    path = _path(folder, rnd)
    if not path.exists():
        have = rounds_in(folder)
        raise CheckpointError(f"{who}: no checkpoint of round {rnd} in {folder} (it has rounds {have or 'none'}); "
                              f"was it written by this run?")
    try:
        saved = state_from_bytes(path.read_bytes())
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(f"{who}: checkpoint {path} is unreadable: {err}") from None
    got = saved.get(FORMAT_KEY, 1)
    if got != FORMAT:
        raise CheckpointError(f"{who}: checkpoint {path} is of format {got}; this version reads format {FORMAT} only "
                              f"(resume with the version that wrote it, or start afresh)")
    return saved


LOCAL_HISTORY = "local-history"  # the server's checkpoint: results.json's local_rounds so far


def check_same_run(saved: dict[str, Any], cfg: Config, who: str, path: Path) -> None:
    """Refuse to resume from a checkpoint of another configuration (other data, method, seed, ...)."""
    def diff(a: Any, b: Any, prefix: str = "") -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in sorted(set(a) | set(b)) for d in diff(a.get(k), b.get(k), f"{prefix}{k}.")]
        return [] if a == b else [f"{prefix[:-1]} (checkpoint {b!r}, now {a!r})"]

    changed = diff(resume_fingerprint(cfg), saved)
    if changed:
        raise CheckpointError(f"{who}: the checkpoint in {path} was written with another config: "
                              f"{'; '.join(changed[:5])}; resume needs the same config")


def latest_server_round(cfg: Config) -> int:
    """The last complete checkpoint's round (the server's latest file); an error naming the folder if none."""
    folder = server_dir(cfg)
    rounds = rounds_in(folder)
    if not rounds:
        raise CheckpointError(f"resume=true but {folder} holds no checkpoint (set checkpoint.dir to the folder of "
                              f"the run to continue)")
    return rounds[-1]


def server_dir(cfg: Config) -> Path:
    if cfg.checkpoint.dir is None:
        raise CheckpointError("checkpoints are on or resume=true but checkpoint.dir is not set")
    return Path(cfg.checkpoint.dir) / SERVER


# ------------------------------------------------------------------------------------------------ what goes in
def tensor(a: np.ndarray) -> torch.Tensor:
    """A numpy array as a tensor (``weights_only`` loads tensors, not numpy objects); exact for every dtype used."""
    return torch.from_numpy(np.ascontiguousarray(a).copy())


def array(t: torch.Tensor) -> np.ndarray:
    return t.numpy().copy()


def party_checkpoint(cfg: Config, party: Any, rnd: int, facts: dict[str, Any]) -> dict[str, Any]:
    """A party's checkpoint (same format for both engines): its state, what it knows of the run, the config.

    The state still holds the active party's secret: :func:`save_party` takes it out before writing."""
    role = "active" if party.index == 0 else "passive"
    return {"round": rnd, "party": party.state_dict(), "config": resume_fingerprint(cfg),
            "facts": {"role": role, "party-index": party.index, **facts}}


def save_party(folder: Path, rnd: int, checkpoint: dict[str, Any]) -> Path:
    """Write a :func:`party_checkpoint`: the secret (active party) to :data:`SECRET_FILE`, mode 0600, the rest to
    the round's blob."""
    state = dict(checkpoint["party"])
    secret = state.pop(SECRET_KEY, None)
    if secret is not None:
        from flwr_vproto.defences import write_secret_file

        raw, path = tensor_bytes(secret), folder / SECRET_FILE
        if not path.exists() or path.read_text(encoding="ascii").strip() != raw.hex():  # once per run, not per round
            write_secret_file(path, raw)
    return save(folder, rnd, {**checkpoint, "party": state})


def _restore_secret(saved: dict[str, Any], folder: Path, who: str) -> None:
    """Put the active party's secret back into its loaded state, from :data:`SECRET_FILE`. Without it a resumed run
    would draw other noise: refused."""
    if saved["facts"]["role"] != "active":
        return
    from flwr_vproto.config import ConfigError
    from flwr_vproto.defences import read_secret_file

    path = folder / SECRET_FILE
    if not path.exists():
        raise CheckpointError(f"{who}: the checkpoint in {folder} has no {SECRET_FILE}, the active party's secret; "
                              f"without it a resumed run would not draw the noise the interrupted one would have")
    try:
        secret = read_secret_file(path, f"{who}'s checkpoint secret")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    assert secret is not None
    saved["party"][SECRET_KEY] = bytes_tensor(secret)


def server_checkpoint(cfg: Config, rnd: int, history: list[dict[str, float]], transit: dict[str, Any],
                      **extra: Any) -> dict[str, Any]:
    """The server's checkpoint (same format for both engines): history and what the next round relays.

    ``transit`` is :meth:`flwr_vproto.protocol.InTransit.state`: gradients and second prototypes by passive name,
    the prototype mask and, with ``method.research.pseudo_gate``, the thresholds.
    """
    mask = transit["prototype-mask"]
    return {"round": rnd, "history": history, "config": resume_fingerprint(cfg),
            "gradients": {k: tensor(v) for k, v in transit["gradients"].items()},
            "prototypes": {k: tensor(v) for k, v in transit["prototypes"].items()},
            "prototype-mask": None if mask is None else tensor(mask),
            **{k: v for k, v in transit.items() if k not in ("gradients", "prototypes", "prototype-mask")}, **extra}


def transit_of(saved: dict[str, Any]) -> dict[str, Any]:
    """Inverse of the ``transit`` part of :func:`server_checkpoint`, as numpy arrays."""
    mask = saved["prototype-mask"]
    return {"gradients": {k: array(v) for k, v in saved["gradients"].items()},
            "prototypes": {k: array(v) for k, v in saved["prototypes"].items()},
            "prototype-mask": None if mask is None else array(mask).astype(bool),
            **{k: saved[k] for k in ("pseudo-gates", "best-val", "best-val-loss", "test-previous")
               if saved.get(k) is not None}}


def load_party_state(cfg: Config, name: str, rnd: int, override: str | None = None) -> dict[str, Any]:
    """The whole round-``rnd`` checkpoint of party ``name`` (state and facts), refused if of another config."""
    folder = party_dir(cfg, name, override)
    saved = load(folder, rnd, name)
    check_same_run(saved["config"], cfg, name, folder)
    _restore_secret(saved, folder, name)
    return saved


def load_server_state(cfg: Config, rnd: int) -> dict[str, Any]:
    """The server's round-``rnd`` checkpoint, refused if of another config."""
    saved = load(server_dir(cfg), rnd, SERVER)
    check_same_run(saved["config"], cfg, SERVER, server_dir(cfg))
    return saved
