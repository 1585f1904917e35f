"""One typed configuration for every entry point.

Hydra (``conf/``), Flower's run-config and the in-process trainer all build a :class:`Config` through
:func:`config_from_dict`, which rejects unknown keys and checks every value up front, so a typo or an out-of-range
value fails with a message naming the option instead of surfacing later as a shape error deep inside PyTorch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DATASETS = ("digits", "adult", "fashion_mnist", "csv")
METHODS = ("vproto", "vanilla", "local", "centralized")
ENGINES = ("flower", "inprocess")
DISTANCES = ("sqeuclidean", "cosine")
LOSS_FORMS = ("pull", "contrastive")
ENCODERS = ("mlp", "cnn")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; the message names the option."""


@dataclass
class CsvConfig:
    """Where a real user's per-party CSV files are and which columns hold the ID and the label."""

    paths: list[str] = field(default_factory=list)  # active party first, then passives 1..K
    id_column: str = "id"
    label_column: str = "label"


@dataclass
class DatasetConfig:
    """Which data, and how it is split vertically (features) and horizontally (users) between parties."""

    name: str = "digits"
    aligned_fraction: float = 0.05  # share of the training users that every party holds
    num_passive: int = 1  # K >= 1
    # Feature split. Images: None = equal vertical strips (left/right halves for K=1). Tabular (adult): one list of
    # column names per party, active first; None = the built-in split.
    feature_split: list[list[str]] | None = None
    # Share of the non-aligned training users given to each party (active first), each user to exactly one party.
    # None = equal shares.
    nonaligned_shares: list[float] | None = None
    active_labels_nonaligned: bool = True  # does the active party know the label of its non-aligned users?
    val_fraction: float = 0.1  # share of the training pool held out as (aligned) validation users
    test_fraction: float = 0.2  # digits and csv only: share of all users held out for testing
    active_only_test_fraction: float = 0.3  # share of the test users that only the active party holds
    max_train_users: int | None = None  # subsample the training pool (quick runs, tests)
    min_aligned: int = 2  # PSI must find at least this many aligned training users, or no training starts
    root: str | None = None  # fashion_mnist: directory of the IDX files (default: the Debian package's)
    csv: CsvConfig = field(default_factory=CsvConfig)


@dataclass
class ModelConfig:
    """Encoders (one per party) and the top model on the active party."""

    encoder: str = "mlp"  # mlp | cnn (cnn only for image data)
    hidden: list[int] = field(default_factory=lambda: [256])
    embedding_dim: int = 64
    top_hidden: list[int] = field(default_factory=lambda: [64])
    dropout: float = 0.0


@dataclass
class MethodConfig:
    """The training method and every knob of the prototype losses (design §3)."""

    name: str = "vproto"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    # Prototype losses.
    distance: str = "sqeuclidean"
    loss_form: str = "contrastive"
    normalize: bool = True  # L2-normalise embeddings before prototype math
    lambda_active: float = 1.0  # weight of the first loss (active party, non-aligned rows)
    lambda_passive: float = 1.0  # weight of the third loss (passive parties, non-aligned rows)
    tau: float = 0.1  # temperature of the softmax over negative distances
    confidence_threshold: float = 0.5  # keep a passive pseudo-label only above this confidence
    ema_momentum: float = 0.0  # 0 = prototypes from this round only
    warmup_rounds: int = 1  # rounds of plain split learning before prototype losses start
    # Active-party gating of the passives' pseudo-labels: "off", or a precision target ("majority" = the share of the
    # most frequent class among the labelled aligned training rows, or a number in (0, 1]). At every evaluation the
    # active party scores each passive's nearest-second-prototype classifier on the validation rows and sends that
    # passive the lowest confidence threshold whose kept rows reach the target (never below confidence_threshold).
    pseudo_gate: float | str = "off"
    # Pseudo-label the passives' non-aligned rows once per round with the round-start encoder (the one the gate
    # scored) instead of afresh in every batch, so the third loss cannot inflate its own labels' confidence mid-round.
    pseudo_label_once: bool = False
    # Active-only head trained on all the active party's labelled rows; at prediction the joint and the active-only
    # probabilities are averaged with weight `combine_weight` on the joint model (1 = joint only).
    local_head: bool = True
    # "auto" fits it on the validation rows at every evaluation (grid of 0.1, lowest log-loss).
    combine_weight: float | str = "auto"
    # The top model learns a correction on top of the active-only head's logits (``g(...) + h(f_A)``, with ``h``
    # not trained through this path and ``g`` starting at zero), so the joint model starts where the active party
    # alone is and only moves away from it where the passive embeddings help.
    joint_residual: bool = True
    # Add each passive party's nearest-prototype classifier (log-softmax over negative distances to its second
    # prototypes, weighted by a learned scalar) to the joint logits: a product of experts that needs no training
    # rows beyond those that made the prototypes.
    prototype_logits: bool = True
    # Let the supervised loss on the few aligned rows train the active encoder too. Off, the encoder learns only from
    # all the active party's labelled rows (active-only head, first loss) and the top model learns on top of it, so
    # over-fitting the aligned rows cannot degrade the active party's own representation.
    joint_trains_active_encoder: bool = False


@dataclass
class CheckpointConfig:
    """Where and how often every party and the server save their state (``flwr_vproto/checkpoint.py``)."""

    dir: str | None = None  # folder of this run's checkpoints (run_simulation.py: null = <run dir>/checkpoints)
    every: int = 0  # save every N rounds (0 = never)
    # Flower engine: when a round fails (a party errs, dies or stays silent), re-discover the nodes and continue from
    # the last complete checkpoint, at most this many times per run (0 = stop with an error naming the checkpoint).
    retries: int = 0


@dataclass
class Config:
    """The whole run."""

    engine: str = "flower"
    seed: int = 0
    num_rounds: int = 20
    eval_every: int = 1
    device: str = "auto"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: bool = False  # continue from the last complete checkpoint in checkpoint.dir

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-able), the inverse of :func:`config_from_dict`."""
        return dataclasses.asdict(self)


def _build(cls: type, data: Mapping[str, Any] | None, path: str) -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys with their full dotted name."""
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        raise ConfigError(f"config '{path or 'root'}' must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown config option(s) {', '.join(where + u for u in unknown)}; "
            f"known: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        sub = {"dataset": DatasetConfig, "model": ModelConfig, "method": MethodConfig, "csv": CsvConfig,
               "checkpoint": CheckpointConfig}.get(name)
        if sub is not None and dataclasses.is_dataclass(fields[name].default_factory()):  # type: ignore[misc]
            kwargs[name] = _build(sub, value, f"{path}.{name}" if path else name)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any] | None = None) -> Config:
    """Build and validate a :class:`Config` from a nested mapping (Hydra's resolved config, JSON, ...)."""
    cfg = _build(Config, data, "")
    validate(cfg)
    return cfg


def _check(cond: bool, option: str, value: Any, expected: str) -> None:
    if not cond:
        raise ConfigError(f"invalid {option}={value!r}: expected {expected}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate(cfg: Config) -> None:
    """Check every option; raise :class:`ConfigError` naming the first bad one."""
    _check(cfg.engine in ENGINES, "engine", cfg.engine, f"one of {ENGINES}")
    _check(_is_int(cfg.seed) and cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    _check(_is_int(cfg.num_rounds) and cfg.num_rounds >= 1, "num_rounds", cfg.num_rounds, "an integer >= 1")
    _check(_is_int(cfg.eval_every) and cfg.eval_every >= 1, "eval_every", cfg.eval_every, "an integer >= 1")
    _check(cfg.device in DEVICES, "device", cfg.device, f"one of {DEVICES}")

    d = cfg.dataset
    _check(d.name in DATASETS, "dataset.name", d.name, f"one of {DATASETS}")
    _check(_is_num(d.aligned_fraction) and 0 < d.aligned_fraction <= 1, "dataset.aligned_fraction",
           d.aligned_fraction, "a number in (0, 1]")
    _check(_is_int(d.num_passive) and d.num_passive >= 1, "dataset.num_passive", d.num_passive,
           "an integer >= 1 (at least one passive party)")
    if d.feature_split is not None:
        _check(isinstance(d.feature_split, list) and len(d.feature_split) == d.num_passive + 1
               and all(isinstance(p, list) and p for p in d.feature_split),
               "dataset.feature_split", d.feature_split,
               f"null or {d.num_passive + 1} non-empty lists of columns (active first, then each passive)")
    if d.nonaligned_shares is not None:
        ok = (isinstance(d.nonaligned_shares, list) and len(d.nonaligned_shares) == d.num_passive + 1
              and all(_is_num(s) and s >= 0 for s in d.nonaligned_shares)
              and abs(sum(d.nonaligned_shares) - 1.0) < 1e-6)
        _check(ok, "dataset.nonaligned_shares", d.nonaligned_shares,
               f"null or {d.num_passive + 1} non-negative numbers summing to 1 (active first)")
    _check(isinstance(d.active_labels_nonaligned, bool), "dataset.active_labels_nonaligned",
           d.active_labels_nonaligned, "true or false")
    for name in ("val_fraction", "test_fraction"):
        v = getattr(d, name)
        _check(_is_num(v) and 0 < v < 1, f"dataset.{name}", v, "a number in (0, 1)")
    _check(_is_num(d.active_only_test_fraction) and 0 <= d.active_only_test_fraction < 1,
           "dataset.active_only_test_fraction", d.active_only_test_fraction, "a number in [0, 1)")
    if d.max_train_users is not None:
        _check(_is_int(d.max_train_users) and d.max_train_users >= 10, "dataset.max_train_users",
               d.max_train_users, "null or an integer >= 10")
    _check(_is_int(d.min_aligned) and d.min_aligned >= 1, "dataset.min_aligned", d.min_aligned, "an integer >= 1")
    _check(d.root is None or isinstance(d.root, str), "dataset.root", d.root, "null or a directory path")
    if d.name == "csv":
        _check(isinstance(d.csv.paths, list) and len(d.csv.paths) == d.num_passive + 1
               and all(isinstance(p, str) and p for p in d.csv.paths), "dataset.csv.paths", d.csv.paths,
               f"{d.num_passive + 1} file paths (active party first, then each passive)")
        _check(isinstance(d.csv.id_column, str) and d.csv.id_column != "", "dataset.csv.id_column",
               d.csv.id_column, "a column name")
        _check(isinstance(d.csv.label_column, str) and d.csv.label_column != "", "dataset.csv.label_column",
               d.csv.label_column, "a column name")

    ck = cfg.checkpoint
    _check(ck.dir is None or (isinstance(ck.dir, str) and ck.dir != ""), "checkpoint.dir", ck.dir,
           "null or a directory path")
    _check(_is_int(ck.every) and ck.every >= 0, "checkpoint.every", ck.every, "an integer >= 0 (0 = no checkpoints)")
    _check(_is_int(ck.retries) and ck.retries >= 0, "checkpoint.retries", ck.retries, "an integer >= 0")
    if ck.retries:
        _check(ck.every > 0, "checkpoint.retries", ck.retries,
               "0 unless checkpoint.every > 0 (a retry continues from the last checkpoint)")
    _check(isinstance(cfg.resume, bool), "resume", cfg.resume, "true or false")
    if cfg.resume:
        _check(ck.dir is not None, "checkpoint.dir", ck.dir,
               "the checkpoint folder of the run to continue when resume=true")

    m = cfg.model
    _check(m.encoder in ENCODERS, "model.encoder", m.encoder, f"one of {ENCODERS}")
    if m.encoder == "cnn":
        _check(d.name in ("digits", "fashion_mnist"), "model.encoder", m.encoder,
               "'mlp' for tabular data (cnn needs an image dataset)")
    for name in ("hidden", "top_hidden"):
        v = getattr(m, name)
        _check(isinstance(v, list) and all(_is_int(h) and h >= 1 for h in v), f"model.{name}", v,
               "a list of positive layer widths")
    _check(_is_int(m.embedding_dim) and m.embedding_dim >= 1, "model.embedding_dim", m.embedding_dim,
           "an integer >= 1")
    _check(_is_num(m.dropout) and 0 <= m.dropout < 1, "model.dropout", m.dropout, "a number in [0, 1)")

    t = cfg.method
    _check(t.name in METHODS, "method.name", t.name, f"one of {METHODS}")
    if t.name == "centralized":
        _check(d.name != "csv", "method.name", t.name,
               "a federated method: 'centralized' needs every party's raw data in one place (simulation only)")
    _check(t.name != "centralized" or (ck.every == 0 and not cfg.resume), "checkpoint.every", ck.every,
           "0 and resume=false for method centralized (the upper bound is not checkpointed)")
    _check(_is_num(t.lr) and t.lr > 0, "method.lr", t.lr, "a number > 0")
    _check(_is_num(t.weight_decay) and t.weight_decay >= 0, "method.weight_decay", t.weight_decay, "a number >= 0")
    _check(_is_int(t.batch_size) and t.batch_size >= 1, "method.batch_size", t.batch_size, "an integer >= 1")
    _check(t.distance in DISTANCES, "method.distance", t.distance, f"one of {DISTANCES}")
    _check(t.loss_form in LOSS_FORMS, "method.loss_form", t.loss_form, f"one of {LOSS_FORMS}")
    _check(isinstance(t.normalize, bool), "method.normalize", t.normalize, "true or false")
    for name in ("lambda_active", "lambda_passive"):
        v = getattr(t, name)
        _check(_is_num(v) and v >= 0, f"method.{name}", v, "a number >= 0")
    _check(_is_num(t.tau) and t.tau > 0, "method.tau", t.tau, "a number > 0")
    _check(_is_num(t.confidence_threshold) and 0 <= t.confidence_threshold < 1, "method.confidence_threshold",
           t.confidence_threshold, "a number in [0, 1)")
    _check(_is_num(t.ema_momentum) and 0 <= t.ema_momentum < 1, "method.ema_momentum", t.ema_momentum,
           "a number in [0, 1)")
    _check(_is_int(t.warmup_rounds) and t.warmup_rounds >= 0, "method.warmup_rounds", t.warmup_rounds,
           "an integer >= 0")
    _check(t.pseudo_gate in ("off", "majority") or (_is_num(t.pseudo_gate) and 0 < t.pseudo_gate <= 1),
           "method.pseudo_gate", t.pseudo_gate, "'off', 'majority' or a precision target in (0, 1]")
    _check(isinstance(t.pseudo_label_once, bool), "method.pseudo_label_once", t.pseudo_label_once, "true or false")
    _check(isinstance(t.local_head, bool), "method.local_head", t.local_head, "true or false")
    _check(t.combine_weight == "auto" or (_is_num(t.combine_weight) and 0 <= t.combine_weight <= 1),
           "method.combine_weight", t.combine_weight, "'auto' or a number in [0, 1]")
    _check(isinstance(t.joint_residual, bool), "method.joint_residual", t.joint_residual, "true or false")
    if t.joint_residual and t.name == "vproto":
        _check(t.local_head, "method.joint_residual", t.joint_residual,
               "false when method.local_head is false (the residual is taken on the active-only head)")
    _check(isinstance(t.joint_trains_active_encoder, bool), "method.joint_trains_active_encoder",
           t.joint_trains_active_encoder, "true or false")
    _check(isinstance(t.prototype_logits, bool), "method.prototype_logits", t.prototype_logits, "true or false")
    if t.combine_weight != 1 and t.name == "vproto":
        _check(t.local_head or t.name in ("local", "centralized"), "method.combine_weight", t.combine_weight,
               "1.0 when method.local_head is false (there is no active-only head to combine with)")
