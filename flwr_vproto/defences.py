"""Defences of the active party's labels against what the passive parties receive (``defence.*``). Plain numpy.

Every round a joint passive receives one gradient row per aligned training user, and those rows carry the users'
labels (:mod:`flwr_vproto.audit` measures how much). A passive is honest but curious and knows the whole run config,
``seed`` included, and every message it ever got: so every random draw of a defence comes from
:func:`secret_rng`, keyed by a secret only the active party holds (:func:`new_secret`), never from the run config.

* **Label differential privacy** (:func:`randomized_response`): the aligned users' labels are replaced once per run
  by k-ary randomised response, and everything the active party trains, calibrates or selects on sees only those
  labels for aligned users. Whatever the passives receive is then a post-processing of the noised labels (and of
  data that is not those users' labels), so it is ``epsilon``-label-DP for every aligned user's label.
* **The Gaussian gradient channel** (:func:`gaussian_rows`): the rows come from one snapshot of the model after the
  round's training, each the gradient of its own user's loss (``ActiveParty.snapshot_rows``), are scaled to unit L2
  norm (a bound that depends on no label) and get ``N(0, (2 sigma)^2)`` on every coordinate. *Given that round's
  model*, changing one user's label moves only that user's row, by at most 2, so one round's rows to all ``K``
  passives are ``K`` Gaussian mechanisms with noise multiplier ``sigma``: (:func:`release_epsilon`, delta)-label-DP
  given the model. That is all it claims: the model itself learns from the labels between releases, so the run's
  transcript is **not** bounded and no run-level epsilon is printed (design §6b).
* **Fewer releases** (:func:`releases`): rows leave only after the rounds of a schedule; the passive's encoder is
  frozen in the others. Each release costs privacy budget and gives a passive one more noisy copy to average.
"""

from __future__ import annotations

import math
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flwr_vproto import exchanges
from flwr_vproto.config import Config, ConfigError

SECRET_BYTES = 32  # 256 bits: the active party's key of every defence's random stream
# Streams of the active party's secret, one per use (each further keyed by round, passive, split).
LABEL_DP_STREAM, GRADIENT_STREAM, PROTOTYPE_STREAM = 1, 2, 3
SENSITIVITY = 2.0  # L2 distance between two unit rows: one label replaced moves its row by at most this


# ------------------------------------------------------------------------------------------------ the secret
def new_secret() -> bytes:
    """A fresh secret from the operating system's CSPRNG (the default: a run's noise is never replayable)."""
    return secrets.token_bytes(SECRET_BYTES)


def read_secret_file(path: str | os.PathLike[str] | None, where: str) -> bytes | None:
    """The secret from a file only its owner can read (``where`` names the option, e.g. ``runner.active_secret_file``).

    A file, never a value: a value in a config lands in files the run writes (``.hydra/``) or every passive reads
    (the run config). The file holds the 64 hex digits (surrounding whitespace ignored); one with any permission for
    group or others (like ssh's keys: ``chmod 600 PATH``), a missing file or another format is refused in one line
    that never shows the file's content. ``None`` / ``""``: no file (a fresh secret)."""
    if path is None or str(path) == "":
        return None
    file = Path(path).expanduser()
    try:
        mode = file.stat().st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"invalid {where}={path}: not a regular file")
        if mode & 0o077:
            raise ConfigError(f"invalid {where}={path}: permissions {stat.S_IMODE(mode):04o} let group or others "
                              f"read or change the secret; `chmod 600 {path}`")
        text = file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"invalid {where}={path}: cannot read it ({type(err).__name__})") from None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != SECRET_BYTES or len(text) != 2 * SECRET_BYTES:
        raise ConfigError(f"invalid {where}={path}: expected the file to hold {2 * SECRET_BYTES} hex digits (e.g. "
                          f"`python -c 'import secrets; print(secrets.token_hex(32))' > {path}; chmod 600 {path}`), "
                          f"it holds {len(text)} characters")
    return raw


def write_secret_file(path: str | os.PathLike[str], secret: bytes) -> Path:
    """Write ``secret`` as 64 hex digits to ``path``, readable and writable by its owner only (mode 0600), atomically
    (created 0600 before any byte is written, then renamed over ``path``); :func:`read_secret_file` reads it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secret.hex() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def secret_rng(secret: bytes, stream: int, *keys: int) -> np.random.Generator:
    """The generator of one use of the secret (``stream``) for one round/passive/split (``keys``).

    NumPy's ``SeedSequence`` hashes the 256-bit secret together with the keys, so streams are independent and none
    can be regenerated without the secret, whatever else a passive knows.
    """
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"the active party's secret must be {SECRET_BYTES} bytes")
    seq = np.random.SeedSequence(int.from_bytes(secret, "big"), spawn_key=(stream, *(int(k) for k in keys)))
    return np.random.Generator(np.random.PCG64(seq))


def secret_torch_seed(secret: bytes, stream: int, *keys: int) -> int:
    """A 63-bit seed for a ``torch.Generator`` drawn from :func:`secret_rng` (for noise drawn with torch)."""
    return int(secret_rng(secret, stream, *keys).integers(0, 2**63 - 1))


# ------------------------------------------------------------------------------------------------ label DP
def keep_probability(epsilon: float, num_classes: int) -> float:
    """Probability that k-ary randomised response keeps a label: ``e^eps / (e^eps + C - 1)``."""
    return math.exp(epsilon) / (math.exp(epsilon) + num_classes - 1)


def randomized_response(labels: np.ndarray, epsilon: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """k-ary randomised response: each known label (>= 0) is kept with :func:`keep_probability`, else replaced by one
    of the other ``C - 1`` classes uniformly. Unknown labels (-1) stay unknown. epsilon-label-DP per label."""
    labels = np.asarray(labels, dtype=np.int64)
    keep = rng.random(labels.shape) < keep_probability(epsilon, num_classes)
    shift = rng.integers(1, num_classes, size=labels.shape)  # another class, uniformly
    noised = np.where(keep, labels, (labels + shift) % num_classes)
    return np.where(labels >= 0, noised, labels)


def label_rng(secret: bytes, split: str) -> np.random.Generator:
    """The randomised response's generator for one split, from the active party's secret (saved with its state, so
    a fresh process or a resumed run draws the same noised labels)."""
    return secret_rng(secret, LABEL_DP_STREAM, ("train", "val", "test").index(split))


# ------------------------------------------------------------------------------------------------ Gaussian rows
def gradient_dp(cfg: Config) -> bool:
    """Whether the gradient rows go through the Gaussian mechanism (a noise multiplier or a target epsilon)."""
    return cfg.defence.gaussian


def unit_rows(gradients: np.ndarray) -> np.ndarray:
    """Every row scaled to L2 norm 1 (zero rows stay zero): the clip bound is 1 whatever the labels are.

    A bound taken from the rows themselves (e.g. their median norm) is a function of the labels; a fixed absolute
    bound would clip nothing in one round and everything in another (the rows' scale moves by an order of magnitude).
    The passive trains with Adam, which is insensitive to the rows' overall scale.
    """
    g = np.asarray(gradients, dtype=np.float64)
    return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-30)


def gaussian_rows(gradients: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """:func:`unit_rows` plus ``N(0, (SENSITIVITY * sigma)^2)`` on every coordinate: one Gaussian-mechanism release
    with noise multiplier ``sigma`` for a replaced label (float32, as it travels)."""
    g = unit_rows(gradients)
    if g.size and sigma > 0:
        g = g + rng.normal(0.0, SENSITIVITY * sigma, size=g.shape)
    return g.astype(np.float32)


def gradient_rng(secret: bytes, rnd: int, passive: int) -> np.random.Generator:
    """The gradient noise's generator for one passive's rows of one round."""
    return secret_rng(secret, GRADIENT_STREAM, rnd, passive)


def release_epsilon(cfg: Config) -> float:
    """The bound of one round's released rows to all passives, *given that round's model*: ``K`` Gaussian releases
    of noise multiplier ``sigma`` composed (Opacus RDP) at ``defence.delta``. Not a bound on the run."""
    from flwr_vproto.privacy import gradient_noise_multiplier, per_release_epsilon

    return per_release_epsilon(gradient_noise_multiplier(cfg), float(cfg.defence.delta), cfg.dataset.num_passive)


# ------------------------------------------------------------------------------------------------ schedule
def releases(cfg: Config, exchange: int) -> bool:
    """Whether exchange ``exchange``'s gradient rows leave the active party (rows of its last round, applied by the
    passives in the next exchange): never after the last exchange; else only after the ``defence.release_rounds``
    first exchanges and every ``defence.release_every``-th exchange from the first. With one exchange per round
    (``exchange.count=num_rounds``) an exchange is a round. Config only: the schedule itself reveals no label."""
    d = cfg.defence
    if exchange >= exchanges.count(cfg):
        return False
    if d.release_rounds is not None and exchange > d.release_rounds:
        return False
    return (exchange - 1) % d.release_every == 0


def planned_releases(cfg: Config) -> int:
    """Gradient-row releases over the whole run: one per passive per releasing exchange."""
    return cfg.dataset.num_passive * sum(releases(cfg, i) for i in range(1, exchanges.count(cfg) + 1))


def scheduled(cfg: Config) -> bool:
    """Whether the gradient rows follow a release schedule (``defence.release_rounds`` / ``release_every``)."""
    return cfg.defence.release_rounds is not None or cfg.defence.release_every > 1


def flagless(cfg: Config) -> bool:
    """Whether no selection flag travels to the passives (the Gaussian channel, a release schedule or DP second
    prototypes is on).

    The ``test_previous`` flag says "last round's validation accuracy was a new best", a decision on true labels
    that neither the Gaussian channel's accounting nor "no rows at all" would cover. Instead the test rows travel on
    a schedule fixed by the config (:func:`passive_changes`) and the active party scores its latest ones every
    evaluation round. Under DP prototypes (``privacy.*``) the flag would be the one label-dependent byte outside
    their accounting."""
    return gradient_dp(cfg) or scheduled(cfg) or (cfg.method.shares_prototypes and cfg.privacy.gaussian)


def passive_changes(cfg: Config, exchange: int) -> bool:
    """Whether a passive's encoder may change in exchange ``exchange``: its pre-training (the first), one that
    applies released rows, or any when its third loss trains it. Test rows need re-embedding only after such."""
    return exchange == 1 or releases(cfg, exchange - 1) or cfg.method.shares_prototypes


# ------------------------------------------------------------------------------------------------ reporting
def defence_summary(cfg: Config, history: list[dict[str, float]]) -> dict[str, Any]:
    """``results.json``'s ``defence`` entry (a defence or a release schedule on): what protects the labels; for the
    gradient channel its noise multiplier and the per-round bound given that round's model (``transcript_bounded``
    false: no epsilon of the run)."""
    from flwr_vproto.privacy import gradient_noise_multiplier

    d = cfg.defence
    scheduled = d.release_rounds is not None or d.release_every > 1
    # nothing a passive receives depends on a label: no rows, no prototypes (or one exchange: none leave), no flag
    label_free = planned_releases(cfg) == 0 and (not cfg.method.shares_prototypes or exchanges.count(cfg) == 1)
    if d.label_epsilon is None and not gradient_dp(cfg) and not scheduled and not label_free:
        return {}
    entry: dict[str, Any] = {"label_epsilon": d.label_epsilon, "release_rounds": d.release_rounds,
                             "release_every": d.release_every, "planned_releases": planned_releases(cfg),
                             "exchanges": exchanges.count(cfg), "label_free": label_free}
    # The label-DP epsilon of every byte a passive receives, where one holds: 0 when nothing sent depends on a label,
    # label_epsilon under randomised response (everything sent is computed from the noised labels), the DP
    # prototypes' label-change epsilon when they are all that depends on a label (no gradient row, no flag:
    # flagless); the smaller where both hold; else null.
    every_byte = 0.0 if entry["label_free"] else d.label_epsilon
    proto = [h["privacy/epsilon"] for h in history if "privacy/epsilon" in h]
    if cfg.privacy.gaussian and planned_releases(cfg) == 0 and not entry["label_free"]:
        spent = proto[-1] if proto else 0.0
        every_byte = spent if every_byte is None else min(every_byte, spent)
    entry["every_byte_epsilon"] = None if every_byte is None else float(every_byte)
    if gradient_dp(cfg):
        entry.update({"noise_multiplier": gradient_noise_multiplier(cfg), "delta": d.delta,
                      "target_epsilon": d.target_epsilon, "release_epsilon_given_model": release_epsilon(cfg),
                      "transcript_bounded": False})
    return {"defence": entry}


def describe(summary: Mapping[str, Any]) -> str | None:
    """One line for the run's closing summary: the labels' protection with its accounting (``None``: no defence)."""
    from flwr_vproto.privacy import describe as describe_prototypes

    d, prototypes = summary.get("defence") or {}, describe_prototypes(summary)
    if not d and not prototypes:
        return None
    parts = [] if d else ["gradient rows released every round without noise (no guarantee)"]
    if d.get("noise_multiplier") is not None:
        parts.append(f"gradient rows: Gaussian, sigma {d['noise_multiplier']:.3g}, {d['planned_releases']} releases; "
                     f"each round's rows epsilon {d['release_epsilon_given_model']:.3g} at delta {d['delta']:g} given "
                     "that round's model only: the model learns from the labels between releases, so the run is "
                     "not bounded")
    elif d.get("label_free"):
        why = ("defence.release_rounds=0" if d.get("release_rounds") == 0
               else "one exchange: the passives never hear back")
        parts.append(f"no gradient row leaves the active party ({why}), no selection flag: "
                     "nothing a passive receives depends on a label (0-label-DP)")
    elif d.get("planned_releases") == 0:
        parts.append("no gradient row leaves the active party")
    elif d.get("release_rounds") is not None or d.get("release_every", 1) > 1:
        parts.append(f"gradient rows released {d['planned_releases']} times without noise (no guarantee)")
    if prototypes:
        parts.append(prototypes)
    if d.get("label_epsilon") is not None:
        parts.append(f"labels: randomised response, epsilon {d['label_epsilon']:g} for every byte")
    if d.get("every_byte_epsilon") is not None and d.get("label_epsilon") is None and not d.get("label_free"):
        parts.append(f"every byte a passive receives: label-change epsilon {d['every_byte_epsilon']:.3g}")
    return "label protection (aligned users, against each passive): " + "; ".join(parts)
