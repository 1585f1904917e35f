"""One typed configuration for every entry point.

Hydra (``conf/``), Flower's run-config and the in-process trainer all build a :class:`Config` through
:func:`config_from_dict`, which rejects unknown keys and checks every value up front, so a typo or an out-of-range
value fails with a message naming the option instead of surfacing later as a shape error deep inside PyTorch.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from flwr_vproto.adult_columns import COLUMNS, PASSIVE_COLUMNS

DATASETS = ("digits", "adult", "fashion_mnist", "csv")
METHODS = ("vproto", "vanilla", "local", "centralized", "gbdt_local", "gbdt_aligned", "gbdt_centralized")
# Baselines that need every party's raw data (or, for gbdt_local, are no protocol at all): engine=inprocess only.
INPROCESS_ONLY = ("centralized", "gbdt_local", "gbdt_aligned", "gbdt_centralized")
ENGINES = ("flower", "inprocess")
DISTANCES = ("sqeuclidean", "cosine")
PRETRAIN_OPTIONS = ("dae", "contrastive", "dae+contrastive", "none")  # method.research.passive_pretrain
ENCODERS = ("mlp", "cnn")
HEADS = ("nn", "gbdt")  # method.head: the active-only head's kind
DEVICES = ("auto", "cpu", "cuda")
IMAGE_WIDTHS = {"digits": 8, "fashion_mnist": 28}  # pixels cut into one vertical strip per party

# Per-dataset defaults, the one place they are set: every entry point (Hydra's run_simulation.py / flwr-vproto,
# Flower's run-config of `flwr run`, config_from_dict) leaves these options null unless the user sets them, and
# Config fills them in from here. digits: at 20 rounds the active-only head is still learning (test accuracy 0.79,
# seed 0); at 40 the quick start reaches BENCHMARKS.md §1's digits figure.
DEFAULT_ROUNDS = 20
DATASET_ROUNDS = {"digits": 40}
DATASET_ROUNDS_TEXT = ", ".join(f"{k} {v}" for k, v in DATASET_ROUNDS.items())
REPLY_TIMEOUT = 600.0
"""Seconds to wait for any one party's reply (``runner.timeout``, ``app.timeout``, the strategy's default)."""
WAIT_FOR_NODES = 120.0
"""Seconds to wait for every SuperNode to connect (``app.wait-for-nodes``, the strategy's default)."""


def opt(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None) -> Any:
    """A config field with its ``--help`` description in the field's metadata (read by
    :func:`flwr_vproto.config_store.option_docs`): one source for the default and what the option does."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def option_help(cls: type, name: str) -> str:
    """The description of field ``name`` of dataclass ``cls`` (its ``opt`` metadata)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}[name]


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; the message names the option."""


@dataclass
class CsvConfig:
    """Where a real user's per-party CSV files are and which columns hold the ID and the label."""

    paths: list[str] = opt(factory=list, help="one CSV file per party: the active party's first")
    id_column: str = opt("id", "the user-ID column of every party's file (PSI aligns users on it)")
    label_column: str = opt("label", "the label column of the active party's file")
    classes: list[str | int] | None = opt(
        None,
        "The class set, in class-index order; a label outside it is an error naming file, column and value. None "
        "= the sorted distinct labels of the active party's file."
    )
    missing: str = opt(
        "error",
        "Empty cells (and pandas' NaN tokens: NA, N/A, NaN, null, ...) in feature columns: \"error\" refuses them, "
        "naming file, column and the tokens seen; \"impute\" fills numeric ones with the party's training median "
        "(plus a 0/1 indicator column each) and text ones with the category \"missing\"."
    )
    scaling: str = opt(
        "column",
        "Standardisation of numeric columns: \"column\" (each by its own mean/std) or \"global\" (one mean/std over "
        "all of a party's numeric values: pixel-like data, where near-constant columns would blow up)."
    )
    clip: float | None = opt(None, "clip standardised numeric values to [-clip, clip]; None = no clipping")
    split_seed: int | None = opt(
        None,
        "Seed of the keyed-hash train/val/test split; None = the run's seed. Set it (the split helper prints it) "
        "to sweep training seeds over one set of files whose val/test users were chosen for that split seed."
    )


@dataclass
class DatasetConfig:
    """Which data, and how it is split vertically (features) and horizontally (users) between parties."""

    name: str = opt("digits", "digits | adult | fashion_mnist | csv (your own files: dataset.csv.*)")
    aligned_fraction: float = opt(0.05, "share of the training users that every party holds (ignored for csv)")
    num_passive: int = opt(1, "number of passive parties K >= 1 (K + 1 parties in all)")
    feature_split: list[list[str]] | None = opt(
        None,
        "Which party holds which features. Images: None = equal vertical strips (left/right halves for K=1). "
        "Tabular (adult): one list of column names per party, active first; None = the built-in split."
    )
    nonaligned_shares: list[float] | None = opt(
        None,
        "Share of the non-aligned training users given to each party (active first), each user to exactly one "
        "party. None = equal shares."
    )
    active_labels_nonaligned: bool = opt(True, "does the active party know the label of its non-aligned users?")
    val_fraction: float = opt(0.1, "share of the training pool held out as (aligned) validation users")
    test_fraction: float = opt(0.2, "digits and csv only: share of all users held out for testing")
    active_only_test_fraction: float = opt(0.3, "share of the test users only the active party holds (not csv)")
    max_train_users: int | None = opt(None, "subsample the training pool (quick runs, tests; not csv)")
    min_aligned: int = opt(2, "PSI must find at least this many aligned training users, or no training starts")
    root: str | None = opt(None, "fashion_mnist: directory of the IDX files (default: the Debian package's)")
    csv: CsvConfig = field(default_factory=CsvConfig)


@dataclass
class ModelConfig:
    """Encoders (one per party) and the top model on the active party."""

    encoder: str = opt("mlp", "mlp (tabular data or flattened image strips) | cnn (image strips only)")
    hidden: list[int] = opt(factory=lambda: [256], help="hidden layer widths of each mlp encoder")
    embedding_dim: int = opt(64, "width of each party's embedding (the encoders' output)")
    top_hidden: list[int] = opt(factory=lambda: [64], help="hidden layer widths of the top model")
    dropout: float = opt(0.0, "dropout in the encoders and the top model")
    # Bring your own model (docs/extending.md): {_target_: dotted.path, **kwargs}, or null for the built-in one.
    # Encoder: called as target(input_shape=..., embedding_dim=..., **kwargs) for every party (replaces `encoder`,
    # `hidden`). Top model and active-only head: target(in_features=..., num_classes=..., **kwargs) (replaces
    # `top_hidden`). Either returns a torch.nn.Module; see flwr_vproto.models.make_encoder / make_top_model.
    encoder_target: dict[str, Any] | None = opt(None, "{_target_: my_pkg.MyEncoder, ...}: your own encoder, or null")
    top_target: dict[str, Any] | None = opt(
        None,
        "{_target_: my_pkg.my_top, ...}: your own top model and head, or null"
    )


# The method.* options whose default follows from method.name. They are declared null (Hydra's schema, the
# run-config and --help show null, or the value it stands for) and MethodConfig.__post_init__ fills in what the
# named method trains: every baseline (vanilla, local, centralized) the plain joint model, none of vproto's parts;
# every other method (vproto and its presets; the trees, which read none of them) vproto's measured defaults
# (BENCHMARKS.md §1). So a preset file holds only its name, and `method.name=vanilla` (a run-config, a sweep) trains
# exactly what `method=vanilla` does. A value the user gives is kept.
VPROTO_JOINT_MODEL: dict[str, Any] = {
    "lambda_passive": 0.0, "passive_pretrain_epochs": 5, "local_head": True, "combine_weight": "auto",
    "research": {"joint_encoder": True, "residual_weight": "learned", "residual_base": "best_val",
                 "joint_warm_start": True, "joint_residual": True, "prototype_logits": True,
                 "joint_trains_active_encoder": False},
}
PLAIN_JOINT_MODEL: dict[str, Any] = {
    "lambda_passive": 1.0, "passive_pretrain_epochs": 0, "local_head": False, "combine_weight": 1.0,
    "research": {"joint_encoder": False, "residual_weight": "fixed", "residual_base": "live",
                 "joint_warm_start": False, "joint_residual": False, "prototype_logits": False,
                 "joint_trains_active_encoder": True},
}
BASELINES = ("vanilla", "local", "centralized")
BY_METHOD_NAME = tuple(f"method.{k}" for k in PLAIN_JOINT_MODEL if k != "research") + tuple(
    f"method.research.{k}" for k in PLAIN_JOINT_MODEL["research"])
"""The dotted options declared null whose value follows from ``method.name`` (:func:`joint_model_defaults`)."""


def joint_model_defaults(name: str | None) -> dict[str, Any]:
    """What the options of :data:`BY_METHOD_NAME` default to for method ``name`` (nested as ``method.*``)."""
    return PLAIN_JOINT_MODEL if name in BASELINES else VPROTO_JOINT_MODEL


# method.head is declared null too, and Config.__post_init__ fills it from the dataset and the method: the tree head
# on a table (adult, csv) for a vproto run that has an active-only head, the network head everywhere else (images;
# the baselines, which have none or train the network one alone). Measured on adult, adult_weak, credit_data and
# benefits, 1-20 % aligned, seeds 0-4 (BENCHMARKS.md §1 "The tree head by default on tables").
BY_DATASET = ("method.head",)
"""The dotted options declared null whose value follows from ``dataset.name`` and ``method.name``
(:func:`default_head`)."""


def default_head(dataset: str | None, name: str | None, local_head: bool | None = None) -> str:
    """``method.head`` left null: ``"gbdt"`` for vproto with its active-only head on a table, else ``"nn"``.
    ``local_head`` None = what ``name`` trains (:func:`joint_model_defaults`)."""
    if local_head is None:
        local_head = joint_model_defaults(name)["local_head"]
    table = dataset is not None and dataset not in IMAGE_WIDTHS
    return "gbdt" if table and name == "vproto" and local_head else "nn"


DECLARED_NULL = BY_METHOD_NAME + BY_DATASET
"""Every ``method.*`` option declared null and filled in by the config (Hydra's schema types them optional)."""


@dataclass
class ResearchConfig:
    """``method.research.*``: the ablation knobs of the method, each measured in BENCHMARKS.md §2 (and the sections
    it points to). The defaults are the measured best; a user of the method sets ``method.*`` and leaves these.

    Which part of the method reads which knob (through its settings class's ``from_method``):

    * training loop (``parties.py``): ``ema_momentum`` (prototype EMA), ``aligned_passes``, ``joint_encoder``,
      ``joint_warm_start``; the passive's pre-training: ``passive_pretrain``, ``passive_pretrain_min_steps``;
    * prototype geometry (``PrototypeGeometry``): ``distance``, ``normalize`` (with ``method.tau``);
    * third loss (``ThirdLoss``): ``pseudo_label_once``;
    * joint logits (``JointLogits``): ``joint_residual``, ``prototype_logits``, ``joint_trains_active_encoder``,
      ``residual_weight``; the joint trees beside the network (``parties.py``, ``trees.fit_joint``): ``joint_trees``;
    * calibration on validation rows (``Calibration``): ``combine_gate``, ``pseudo_gate``, ``residual_base``.
    """

    distance: str = opt("sqeuclidean", "sqeuclidean | cosine: distance of an embedding to a class prototype")
    normalize: bool = opt(True, "L2-normalise embeddings before prototype math")
    ema_momentum: float = opt(0.0, "EMA of the prototypes (first and second): 0 = this round's class means only")
    pseudo_gate: float | str = opt(
        "off",
        "Active-party gating of the passives' pseudo-labels: \"off\", or a precision target (\"majority\" = the share"
        " of the most frequent class among the labelled aligned training rows, or a number in (0, 1]). At every "
        "evaluation the active party scores each passive's nearest-second-prototype classifier on the validation "
        "rows and sends that passive the lowest confidence threshold whose kept rows reach the target (never "
        "below confidence_threshold)."
    )
    pseudo_label_once: bool = opt(
        False,
        "Pseudo-label the passives' non-aligned rows once per round with the round-start encoder (the one the "
        "gate scored) instead of afresh in every batch, so the third loss cannot inflate its own labels' "
        "confidence mid-round."
    )
    aligned_passes: int = opt(
        1,
        "Passes over the aligned rows per round for the supervised (joint) loss: k passes, the remaining steps of "
        "the round train only on non-aligned rows. (null, which cycled the aligned batches alongside every batch of "
        "non-aligned rows, was removed: measured, the top model over-fits the few aligned rows; BENCHMARKS.md §2.)"
    )
    joint_encoder: bool = opt(
        None,
        "The joint model gets its own active encoder, trained end-to-end by the supervised loss on the aligned "
        "rows (as in vanilla split learning), while the shared encoder keeps serving the active-only head and the"
        " prototypes."
    )
    residual_weight: str = opt(
        None,
        "Weight of the active-only head's logits in the residual joint model: \"fixed\" (1) or \"learned\" (a scalar "
        "trained with the top model, starting at 1)."
    )
    residual_base: str = opt(
        None,
        "Which active-only model the residual joint model builds on: \"live\" (the head as it trains, every round) "
        "or \"best_val\" (a frozen copy of the shared encoder and head from the evaluation with the lowest "
        "validation loss so far; the live head until the first evaluation). A base that keeps moving, or keeps "
        "over-fitting, shifts the joint logits under the correction the top model learned for it."
    )
    joint_warm_start: bool = opt(
        None,
        "At the start of round warmup_rounds + 1 the joint encoder takes the weights of the shared active "
        "encoder, which has by then learned from all the active party's labelled rows (a warm start on its own "
        "rows)."
    )
    passive_pretrain: str = opt(
        "dae",
        "What that pre-training is (flwr_vproto/method/pretrain.py): \"dae\" (denoising autoencoder), \"contrastive\""
        " (NT-Xent between two random views: SCARF feature corruption for tables, shifts/noise/cutout for "
        "images), \"dae+contrastive\" (the autoencoder's epochs, then the contrastive ones) or \"none\"."
    )
    passive_pretrain_min_steps: int | None = opt(
        None,
        "... and at least this many optimiser steps (epochs raised to reach it), so a small passive is not "
        "starved (5 epochs of digits' 679 rows are 15 steps). null = auto: 500 when no gradient row ever reaches "
        "the passive (defence.release_rounds=0, the default: pre-training is all it learns) or when exchanges "
        "train several rounds each (few gradient messages: exchange.*), else 0. Measured in BENCHMARKS.md §9 and "
        "§10."
    )
    joint_residual: bool = opt(
        None,
        "The top model learns a correction on top of the active-only head's logits (``g(...) + h(f_A)``, with "
        "``h`` not trained through this path and ``g`` starting at zero), so the joint model starts where the "
        "active party alone is and only moves away from it where the passive embeddings help."
    )
    prototype_logits: bool = opt(
        None,
        "Add each passive party's nearest-prototype classifier (log-softmax over negative distances to its second"
        " prototypes, weighted by a learned scalar) to the joint logits: a product of experts that needs no "
        "training rows beyond those that made the prototypes."
    )
    joint_trees: bool = opt(
        True,
        "With the tree head (method.head=gbdt): the joint model's probabilities are the average of the network's "
        "and those of LightGBM on the aligned users' [active columns, passives' embeddings and their independent "
        "components], boosted from the tree head's margin and early-stopped on the aligned validation rows (fitted "
        "at the first calibration, again whenever the passives' training embeddings change). Two learners that err "
        "differently; nothing of it leaves the active party. Ignored with the network head."
    )
    combine_gate: float | None = opt(
        2.0,
        "With combine_weight=auto: keep the fitted weight only if the combination's log-loss on the aligned "
        "validation users beats the active-only head's by more than this many standard errors (paired per user), "
        "else ship the active-only head alone (weight 0). null = off. Not applied under 100 labelled validation "
        "users, where the weight is shrunk toward 0.5 instead. Choosing the weight and the round on the same "
        "validation users the joint trees early-stop on otherwise picks a lucky joint model where the passives "
        "add nothing (BENCHMARKS.md §1)."
    )
    joint_trains_active_encoder: bool = opt(
        None,
        "Let the supervised loss on the few aligned rows train the active encoder too. Off, the encoder learns "
        "only from all the active party's labelled rows (active-only head, first loss) and the top model learns "
        "on top of it, so over-fitting the aligned rows cannot degrade the active party's own representation."
    )


@dataclass
class MethodConfig:
    """The training method: what a user of it sets (design §3); the ablation knobs are ``method.research.*``
    (:class:`ResearchConfig`).

    Each named part of the method (:mod:`flwr_vproto.method`) reads only its own block, through its settings
    class's ``from_method``:

    * training loop (``parties.py``): ``name``, ``lr``, ``weight_decay``, ``batch_size``, ``warmup_rounds``;
    * prototype geometry (``PrototypeGeometry``): ``tau``;
    * first loss (``FirstLoss``): ``lambda_active``, ``confidence_threshold``;
    * third loss and its pseudo-labels (``ThirdLoss``): ``lambda_passive``, ``confidence_threshold``,
      ``warmup_rounds``; the passive's pre-training: ``passive_pretrain_epochs``;
    * the active-only head: ``local_head`` (``local_head_loss``), ``head``;
    * calibration on validation rows (``Calibration``): ``combine_weight``, ``confidence_threshold`` (the gates'
      floor);
    * custom loss terms (``method.extra``): ``extra_losses``.

    Presets: ``conf/method/vproto.yaml`` (the measured default) and ``vproto_seed.yaml`` (design §3 as written:
    the third loss on, second prototypes sent each round); the baselines' presets give only their name, and the
    options of :data:`BY_METHOD_NAME` (declared null) follow from it (:meth:`__post_init__`).
    """

    name: str = opt(
        "vproto",
        "vproto | vanilla (split learning on the aligned rows only) | local (the active party alone, all its "
        "labelled rows) | centralized (upper bound: all features, rows and labels in one place; engine=inprocess "
        "only) | gbdt_local, gbdt_aligned, gbdt_centralized (LightGBM baselines: the active party's columns and "
        "rows; all columns on the aligned users, i.e. lossless SecureBoost; all columns and rows; engine=inprocess "
        "only)"
    )
    lr: float = opt(1e-3, "learning rate of every party's optimiser")
    weight_decay: float = opt(0.0, "weight decay of every party's optimiser")
    batch_size: int = opt(256, "rows per training batch")
    lambda_active: float = opt(1.0, "weight of the first loss (active party, non-aligned rows)")
    lambda_passive: float = opt(
        None,
        "Weight of the third loss (passive parties, non-aligned rows). Off by default: measured, it lowers "
        "accuracy on every dataset (BENCHMARKS.md §2): the passive's pseudo-labels of its own rows are too poor "
        "to learn from."
    )
    tau: float = opt(0.1, "temperature of the softmax over negative distances")
    confidence_threshold: float = opt(
        0.5,
        "keep a pseudo-label only above this confidence (1st, 3rd loss; gates' floor)"
    )
    warmup_rounds: int = opt(1, "rounds of plain split learning before prototype losses start")
    passive_pretrain_epochs: int = opt(
        None,
        "Epochs of denoising-autoencoder pre-training of each passive encoder on all its own training rows "
        "(aligned and non-aligned; no labels needed) before its first round; 0 = none."
    )
    local_head: bool = opt(
        None,
        "Active-only head trained on all the active party's labelled rows; at prediction the joint and the "
        "active-only probabilities are averaged with weight `combine_weight` on the joint model (1 = joint only)."
    )
    # Declared null; Config.__post_init__ fills it from dataset.name and method.name (default_head).
    head: str = opt(
        None,
        "What the active-only head is: \"nn\" (a small network on the shared active encoder) or \"gbdt\" (tables "
        "only: LightGBM on the active party's own columns and every labelled row it holds, early-stopped on its "
        "validation rows, fitted once in round 1; the residual joint model then corrects the trees' margin, "
        "i.e. boosting with a base margin). null = \"gbdt\" for vproto on a table (adult, csv), \"nn\" on images "
        "and for the baselines. Either way it learns from the active party's own rows and labels only, and nothing "
        "of it leaves that party."
    )
    combine_weight: float | str = opt(
        None,
        "\"auto\" fits it on the validation rows at every evaluation (grid of 0.1, best accuracy, ties to the lower "
        "log-loss; shrunk toward 0.5 under 100 of them; research.combine_gate may set it to 0)."
    )
    extra_losses: list[dict[str, Any]] = opt(
        factory=list,
        help="Custom loss terms added to the active party's loss at every supervised step: a list of {_target_: "
        "dotted.path, weight: w, **kwargs} (flwr_vproto.method.extra; docs/extending.md). [] = none."
    )
    research: ResearchConfig = field(default_factory=ResearchConfig)

    def __post_init__(self) -> None:
        """Fill the options left null (:data:`BY_METHOD_NAME`) with what method ``name`` trains."""
        fill = joint_model_defaults(self.name)
        for section, values in ((self, fill), (self.research, fill["research"])):
            for key, value in values.items():
                if key != "research" and getattr(section, key) is None:
                    setattr(section, key, value)

    @property
    def shares_prototypes(self) -> bool:
        """Whether the active party sends the passives their second prototypes: only their third loss (and its
        pseudo-label gate) uses them, so with ``lambda_passive=0`` (or for ``vanilla``) they never leave it."""
        return self.name == "vproto" and self.lambda_passive > 0


REMOVED: dict[str, str] = {
    "method.research.loss_form": "the prototype loss is contrastive; the literal pull loss measured worse on adult "
                                "and Fashion-MNIST (BENCHMARKS.md §2)",
}
"""Options removed (dotted path -> why): measured harmful and used by no preset. A config, override or run-config
key naming one gets one line saying so (:func:`moved_line`), never a silent default."""
RESEARCH_KNOBS = tuple(f.name for f in dataclasses.fields(ResearchConfig)) + tuple(
    k.rpartition(".")[2] for k in REMOVED)
MOVED: dict[str, str] = {f"method.{k}": f"method.research.{k}" for k in RESEARCH_KNOBS}
"""Options that moved (old dotted path -> new): a config, override or run-config key with an old path gets one line
saying where it went (:func:`moved_line`), never a silent default."""


def nest_moved(method: Mapping[str, Any]) -> dict[str, Any]:
    """A ``method`` block written before the move (flat ``aligned_passes``, ...) with its moved keys nested under
    ``research``, for the benchmark records and commands that predate it (``benchmarks/*.jsonl``'s
    ``method_overrides``, ``--variant`` JSON); a user's config gets :func:`moved_line` instead."""
    out = {k: v for k, v in method.items() if f"method.{k}" not in MOVED}
    moved = {k: v for k, v in method.items() if f"method.{k}" in MOVED}
    if moved:
        out["research"] = {**(out.get("research") or {}), **moved}
    return out


def moved_line(key: str) -> str | None:
    """``method.pseudo_gate moved to method.research.pseudo_gate`` for an old path (:data:`MOVED`), ``... was
    removed: why`` for a removed one (:data:`REMOVED`), else ``None``."""
    if key in MOVED and MOVED[key] not in REMOVED:
        return f"{key} moved to {MOVED[key]}"
    key = MOVED.get(key, key)
    return f"{key} was removed: {REMOVED[key]}" if key in REMOVED else None


@dataclass
class CheckpointConfig:
    """Where and how often every party and the server save their state (``flwr_vproto/checkpoint.py``)."""

    dir: str | None = opt(None, "folder of this run's checkpoints (run_simulation.py: null = <run dir>/checkpoints)")
    every: int = opt(0, "save every N rounds (0 = never)")
    retries: int = opt(
        0,
        "Flower engine: when a round fails (a party errs, dies or stays silent), re-discover the nodes and "
        "continue from the last complete checkpoint, at most this many times per run (0 = stop with an error "
        "naming the checkpoint)."
    )


@dataclass
class PrivacyConfig:
    """Differential privacy of the second prototypes, the one label-dependent thing a passive party receives.

    Each embedding is clipped to norm ``clip_norm``; the per-class sums and counts get Gaussian noise of standard
    deviation ``noise_multiplier * sqrt(2) * clip_norm`` and ``noise_multiplier * sqrt(2)``: changing one aligned
    user's label moves them by at most that much without the noise multiplier (label DP, see
    :mod:`flwr_vproto.privacy`). Opacus's RDP accountant tracks the spent label-change epsilon at ``delta``.
    ``target_epsilon`` set: the noise multiplier is calibrated so that the whole run spends at most that epsilon
    (then ``noise_multiplier`` must stay 0). ``method=vproto_seed`` selects ``privacy=dp``; ``privacy=none``
    acknowledges clear prototypes.
    """

    noise_multiplier: float = opt(0.0, "0 = off (prototypes exact, nothing clipped)")
    clip_norm: float = opt(1.0, "L2 bound per embedding (after method.research.normalize; 1 = no-op on unit-norm rows)")
    delta: float = opt(1e-5, "of the prototypes' (epsilon, delta)")
    target_epsilon: float | None = opt(None, "set (e.g. 4) to calibrate sigma so the run spends at most this epsilon")
    clear_prototypes: bool = opt(False, "send the second prototypes without noise, acknowledged (privacy=none): they "
                                        "give a passive its shared users' labels; else such a run is refused")

    @property
    def gaussian(self) -> bool:
        """Whether the second prototypes are privatised (a noise multiplier or a target epsilon)."""
        return self.noise_multiplier > 0 or self.target_epsilon is not None


@dataclass
class DefenceConfig:
    """Defences of the active party's labels against what the passives receive (docs/privacy.md, design §6b).

    Applied by the active party before anything leaves it, the same in both engines. Every random draw comes from a
    secret only the active party holds (a file: ``runner.active_secret_file`` in simulation, node-config
    ``active-secret-file`` in a deployment; else fresh from the OS), never from ``seed``, which every party knows.

    * ``label_epsilon``: epsilon-label-DP of the aligned users (the users a passive shares) by k-ary randomised
      response: each aligned training and validation user's label is replaced, once per run, by itself with
      probability ``e^eps / (e^eps + C - 1)`` and else by one of the other ``C - 1`` classes uniformly; everything
      the active party trains, calibrates or selects on sees only those labels for aligned users (non-aligned users
      keep their exact labels; scores, which reach no passive, use the true ones).
    * ``noise_multiplier`` / ``target_epsilon`` / ``delta``: the Gaussian gradient channel. Every gradient row sent
      is scaled to unit norm and gets ``N(0, (2 sigma)^2)`` per coordinate; Opacus's RDP accountant composes the
      releases of the run into an epsilon at ``delta`` (reported every round). ``target_epsilon`` picks ``sigma``
      for the whole run's planned releases.
    * ``release_rounds`` / ``release_every``: gradient rows leave only after rounds ``1..release_rounds`` (null: every
      round) and only every ``release_every``-th round from round 1; the passives' encoders stay frozen otherwise.
    """

    label_epsilon: float | None = opt(None, "null = off")
    noise_multiplier: float = opt(0.0, "sigma of the Gaussian gradient channel; 0 = off (unless target_epsilon)")
    target_epsilon: float | None = opt(None, "null = use noise_multiplier; else sigma calibrated for the whole run")
    delta: float = opt(1e-5, "of the gradient channel's (epsilon, delta)")
    release_rounds: int | None = opt(
        0,
        "Gradient rows leave only after the first R rounds; null = every round. Default 0: no row ever leaves, so"
        " every byte a passive receives is label-independent (measured: free on adult, BENCHMARKS.md §9)."
    )
    release_every: int = opt(1, "gradient rows leave only every k-th round from round 1")

    @property
    def gaussian(self) -> bool:
        """Whether gradient rows go through the Gaussian channel (a noise multiplier or a target epsilon)."""
        return self.noise_multiplier > 0 or self.target_epsilon is not None


@dataclass
class ExchangeConfig:
    """How often the parties exchange messages, and the local work between exchanges (docs/usage.md "Few exchanges").

    ``num_rounds`` stays the length of training: one *round* is one pass of the active party's training (its
    aligned rows with the passives' embeddings, its non-aligned rows). An *exchange* is one message per party: the
    passives send embeddings, the active party trains the rounds of that exchange on them (cached) and sends back,
    when a release is due, each passive's gradient rows of its last round. Fewer exchanges cost fewer message round
    trips (seconds each in a deployment) and fewer releases of label-dependent rows.

    * ``count``: exchanges after PSI. ``null`` (auto): one when nothing a passive could ever receive would change
      its encoder (``defence.release_rounds=0`` and no prototypes shared: its pre-training is all it learns, so one
      exchange gives exactly the numbers of one per round), else one per round (``num_rounds``).
    * ``schedule``: how the rounds are cut into exchanges: ``even`` (as equal as possible, longer ones last),
      ``first`` (the first exchange takes the rest: the active party trains long on the pre-trained embeddings,
      then every later exchange is one round) or ``last`` (one round per exchange, the last takes the rest).
    * ``passive_passes``: passes over each received gradient message a passive takes (1: each row once, as the
      method does with one exchange per round). More passes minimise the linearised loss with a proximal term
      (``passive_reach``), so reusing a gradient cannot overshoot
      (:func:`flwr_vproto.method.losses.proximal_gradient_loss`).
    * ``passive_reach``: how far the proximal passes may move an embedding along its received gradient, relative to
      the embeddings' mean norm.
    """

    count: int | None = opt(
        None,
        "exchanges after PSI; null: 1 when no passive can ever receive anything, else num_rounds"
    )
    schedule: str = opt("even", "even | first (the first exchange takes the extra rounds) | last")
    passive_passes: int = opt(1, "passes a passive takes over each gradient message (> 1: proximal, see passive_reach)")
    passive_reach: float = opt(
        0.1,
        "how far those passes move an embedding along its gradient, relative to the mean norm"
    )


@dataclass
class AuditConfig:
    """Record what every passive receives so ``python -m flwr_vproto.audit`` can measure the label leakage."""

    record: bool = opt(False, "the active party records what each passive receives: python -m flwr_vproto.audit <dir>")
    dir: str | None = opt(
        None,
        "where the active party writes round-<r>.npz (run_simulation.py: null = <run dir>/audit)"
    )


@dataclass
class Config:
    """The whole run."""

    engine: str = opt("flower", "flower (Flower simulation, one ClientApp per party) | inprocess (all in this process)")
    seed: int = opt(0, "of the data split and every party's initialisation (every party knows it)")
    # Declared null (Hydra's schema and the run-config show null) and an int in every Config: __post_init__ fills
    # in the dataset's default.
    num_rounds: int = opt(
        None, f"rounds of training; null = the dataset's default ({DATASET_ROUNDS_TEXT}, else {DEFAULT_ROUNDS})")
    eval_every: int = opt(1, "score val/test every N rounds (and always after the last round)")
    eval_test: str = opt(
        "best",
        "Test rows: \"best\" = embedded, sent and scored only for rounds whose validation accuracy is a new best "
        "(they travel with the next round) and after the last round: exactly what `final` reports, at a fraction "
        "of the bytes; \"every\" = at every evaluation round, for test curves."
    )
    wire_dtype: str = opt(
        "float32",
        "Embeddings and gradients on the wire: \"float32\" (exact) or \"float16\" (half the bytes; both engines round"
        " the same way, so they still agree)."
    )
    device: str = opt("auto", "auto | cpu | cuda")
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: bool = opt(False, "continue from the last complete checkpoint in checkpoint.dir")
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    defence: DefenceConfig = field(default_factory=DefenceConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    exchange: ExchangeConfig = field(default_factory=ExchangeConfig)

    def __post_init__(self) -> None:
        """Fill the per-dataset defaults that the user left null: :data:`DATASET_ROUNDS` and the active-only head's
        kind (:func:`default_head`)."""
        if self.num_rounds is None:
            self.num_rounds = dataset_rounds(getattr(self.dataset, "name", None))
        if getattr(self.method, "head", "nn") is None:
            self.method.head = default_head(getattr(self.dataset, "name", None), self.method.name,
                                            self.method.local_head)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-able), the inverse of :func:`config_from_dict`."""
        return dataclasses.asdict(self)


def dataset_rounds(dataset: str | None) -> int:
    """``num_rounds`` when the user gives none: the dataset's own default, else :data:`DEFAULT_ROUNDS`."""
    return DATASET_ROUNDS.get(str(dataset), DEFAULT_ROUNDS)


def declared_defaults() -> dict[str, Any]:
    """Every option's default as declared, the per-dataset ones and those that follow from ``method.name`` still
    null: what an entry point hands on when the user sets nothing (``[tool.flwr.app.config]`` in pyproject.toml;
    Hydra's schema reads the same field defaults)."""
    data = Config().to_dict()
    data["num_rounds"] = None
    for key in DECLARED_NULL:
        *sections, leaf = key.split(".")
        node = data
        for part in sections:
            node = node[part]
        node[leaf] = None
    return data


def null_default(key: str, values: Mapping[str, Any]) -> Any:
    """What option ``key`` left null stands for in the nested config ``values`` (``num_rounds``: the dataset's
    default; :data:`BY_METHOD_NAME`: what ``method.name`` trains; :data:`BY_DATASET`: what the dataset and the method
    take); ``None`` for any other option."""
    if key == "num_rounds":
        return dataset_rounds((values.get("dataset") or {}).get("name"))
    if key in BY_DATASET:
        method = values.get("method") or {}
        return default_head((values.get("dataset") or {}).get("name"), method.get("name"), method.get("local_head"))
    if key in BY_METHOD_NAME:
        node: Any = joint_model_defaults((values.get("method") or {}).get("name"))
        for part in key.split(".")[1:]:
            node = node[part]
        return node
    return None


@dataclass
class RunnerConfig:
    """How the command line (:mod:`flwr_vproto.cli`) runs a job: ``runner.*`` options, not part of what is learned,
    never in the run config the parties see. The Hydra config only (``flwr run`` has its ``app.*`` keys instead)."""

    timeout: float = opt(REPLY_TIMEOUT, "seconds to wait for any one party's reply (engine=flower)")
    client_num_cpus: float = opt(1, "Ray CPUs per simulated party; with 2 cores, 1 lets two parties run side by side")
    client_num_gpus: float = opt(0.0, "Ray GPUs per simulated party (e.g. 0.5 to share one GPU)")
    flwr_log_level: str = opt("ERROR", "Flower's own log lines (INFO shows every message phase)")
    ray_log_level: str = opt("ERROR", "Ray's log lines")
    save_models: bool = opt(True, "write each party's final state to models/<party>.pt in the run directory")
    selection_metric: str = opt(
        "accuracy",
        "The score the command returns (what a sweeper optimises; docs/usage.md \"Sweeps\"): accuracy (the validation "
        "accuracy at the best-validation-accuracy round) | auc (binary tasks: the round with the best validation "
        "AUC)."
    )
    active_secret_file: str | None = opt(
        None,
        "A file holding the active party's key of every random draw its defences release (defence.*, privacy.*): 64 "
        "hex digits, readable by its owner only (chmod 600), to reproduce a defended run exactly; null = fresh from "
        "the OS each run. Never part of the run config; the key is written to no file of the run but the active "
        "party's checkpoint secret.hex (mode 0600)."
    )
    active_secret: str | None = opt(
        None, "Refused (use active_secret_file): a value here would be written to the run's .hydra/ files."
    )
    server_metrics: str = opt(
        "progress",
        "engine=flower: what the active party reports to the server (docs/design.md §2): progress = exchange numbers "
        "and rounds trained, nothing derived from a label (its full record goes to the run's active/ folder, read "
        "back here for results.json); full = every metric. A deployment's active party decides this in its own "
        "node-config (server-metrics), never the run config."
    )
    threads: Any = opt(
        None,
        "Threads of this job (torch, BLAS/OpenMP; engine=flower: Ray's CPUs). null = under a parallel launcher "
        "its share of the cores; else engine=inprocess: 1 (docs/usage.md \"Threads\") unless OMP_NUM_THREADS is set; "
        "engine=flower: Ray's default. Untyped (Any) so that a bad value gets the command line's own one-line "
        "message."
    )


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
        for u in unknown:
            if moved_line(where + u):
                raise ConfigError(f"config option {moved_line(where + u)}")
        raise ConfigError(f"unknown config option(s) {', '.join(where + u for u in unknown)}: "
                          f"{unknown_option_hint(where + unknown[0], [where + f for f in fields])}")
    kwargs = {}
    for name, value in data.items():
        sub = {"dataset": DatasetConfig, "model": ModelConfig, "method": MethodConfig, "csv": CsvConfig,
               "research": ResearchConfig,
               "checkpoint": CheckpointConfig, "privacy": PrivacyConfig, "defence": DefenceConfig,
               "audit": AuditConfig, "exchange": ExchangeConfig}.get(name)
        if sub is not None and dataclasses.is_dataclass(field_default(fields[name])):
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


def closest_options(key: str, options: Iterable[str]) -> list[str]:
    """Up to three valid options closest to a misspelt dotted ``key``: first among its own section's (same prefix),
    else among all."""
    options = sorted(options)
    section, _, leaf = key.rpartition(".")
    siblings = {o.rpartition(".")[2]: o for o in options if o.rpartition(".")[0] == section}
    close = [siblings[m] for m in difflib.get_close_matches(leaf, list(siblings), n=3, cutoff=0.5)]
    return close or difflib.get_close_matches(key, options, n=3, cutoff=0.6)


def unknown_option_hint(key: str, options: Iterable[str]) -> str:
    """``did you mean a or b?`` for a misspelt ``key`` (one line, never the whole list of options)."""
    close = closest_options(key, options)
    return f"did you mean {' or '.join(close)}?" if close else "no option is close"


def field_default(f: dataclasses.Field[Any]) -> Any:
    """A dataclass field's default value: its ``default_factory()`` (a nested section) or its ``default``."""
    factory = f.default_factory
    if callable(factory):
        return factory()
    return f.default


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate(cfg: Config) -> None:
    """Check every option; raise :class:`ConfigError` naming the first bad one (sections in this order)."""
    _validate_run(cfg)
    _validate_dataset(cfg.dataset)
    _validate_csv(cfg.dataset)
    _validate_checkpoint(cfg)
    _validate_model(cfg.model, cfg.dataset)
    _validate_method(cfg)
    _validate_method_parts(cfg.method)
    _validate_head(cfg)
    _validate_extra_losses(cfg.method)
    _validate_privacy(cfg.privacy, cfg.method)
    _validate_defence(cfg)
    _validate_exchange(cfg)
    _validate_clear_prototypes(cfg)


def _validate_clear_prototypes(cfg: Config) -> None:
    """Second prototypes sent in clear give a passive its shared users' labels (it solves them against its own
    aligned embeddings; design §6b): refused unless noised (``privacy.*``), computed from randomised labels
    (``defence.label_epsilon``) or acknowledged (``privacy=none``). One exchange sends none (the last one's are never
    sent)."""
    exchanges = cfg.exchange.count if cfg.exchange.count is not None else cfg.num_rounds
    if (cfg.method.shares_prototypes and exchanges > 1 and not cfg.privacy.gaussian
            and cfg.defence.label_epsilon is None and not cfg.privacy.clear_prototypes):
        raise ConfigError(
            f"method.lambda_passive={cfg.method.lambda_passive}: the third loss sends each passive its second "
            "prototypes, which in clear give it its shared users' labels; use privacy=dp (DP prototypes, "
            "method=vproto_seed's preset), privacy.target_epsilon=..., defence=label_dp, or acknowledge with "
            "privacy=none (privacy.clear_prototypes=true)")


def _validate_run(cfg: Config) -> None:
    """Top-level options: engine, seed, rounds, evaluation schedule, device."""
    _check(cfg.engine in ENGINES, "engine", cfg.engine, f"one of {ENGINES}")
    _check(_is_int(cfg.seed) and cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    _check(_is_int(cfg.num_rounds) and cfg.num_rounds >= 1, "num_rounds", cfg.num_rounds, "an integer >= 1")
    _check(_is_int(cfg.eval_every) and cfg.eval_every >= 1, "eval_every", cfg.eval_every, "an integer >= 1")
    _check(cfg.eval_test in ("best", "every"), "eval_test", cfg.eval_test, "'best' or 'every'")
    _check(cfg.wire_dtype in ("float32", "float16"), "wire_dtype", cfg.wire_dtype, "'float32' or 'float16'")
    _check(cfg.device in DEVICES, "device", cfg.device, f"one of {DEVICES}")


def _validate_dataset(d: DatasetConfig) -> None:
    """``dataset.*`` except the CSV files: which data, the aligned share, parties, feature and user splits."""
    _check(d.name in DATASETS, "dataset.name", d.name, f"one of {DATASETS}")
    _check(_is_num(d.aligned_fraction) and 0 < d.aligned_fraction <= 1, "dataset.aligned_fraction",
           d.aligned_fraction, "a number in (0, 1]")
    _check(_is_int(d.num_passive) and d.num_passive >= 1, "dataset.num_passive", d.num_passive,
           "an integer >= 1 (at least one passive party)")
    parties = d.num_passive + 1
    if d.name in IMAGE_WIDTHS:
        _check(parties <= IMAGE_WIDTHS[d.name], "dataset.num_passive", d.num_passive,
               f"at most {IMAGE_WIDTHS[d.name] - 1}: {d.name} images are {IMAGE_WIDTHS[d.name]} pixels wide, cut "
               f"into one strip per party")
    _validate_feature_split(d)
    if d.nonaligned_shares is not None:
        v = d.nonaligned_shares
        _check(isinstance(v, list) and len(v) == parties, "dataset.nonaligned_shares", v,
               f"null or a list of {parties} shares (active party first, then each passive)")
        _check(all(_is_num(x) and x >= 0 for x in v), "dataset.nonaligned_shares", v,
               "non-negative numbers (one share per party)")
        _check(abs(sum(v) - 1.0) < 1e-6, "dataset.nonaligned_shares", v,
               f"shares summing to 1 (they sum to {sum(v):g})")
    _check(isinstance(d.active_labels_nonaligned, bool), "dataset.active_labels_nonaligned",
           d.active_labels_nonaligned, "true or false")
    for name in ("val_fraction", "test_fraction"):
        v = getattr(d, name)
        _check(_is_num(v) and 0 < v < 1, f"dataset.{name}", v, "a number in (0, 1)")
    if d.name == "csv":  # both are shares of all users there (simulated data: val_fraction is of the training pool)
        _check(d.val_fraction + d.test_fraction < 1, "dataset.val_fraction", d.val_fraction,
               f"a number with val_fraction + test_fraction < 1 (with test_fraction={d.test_fraction} no user "
               f"would be left for training)")
    _check(_is_num(d.active_only_test_fraction) and 0 <= d.active_only_test_fraction < 1,
           "dataset.active_only_test_fraction", d.active_only_test_fraction, "a number in [0, 1)")
    if d.max_train_users is not None:
        _check(_is_int(d.max_train_users) and d.max_train_users >= 10, "dataset.max_train_users",
               d.max_train_users, "null or an integer >= 10")
    _check(_is_int(d.min_aligned) and d.min_aligned >= 1, "dataset.min_aligned", d.min_aligned, "an integer >= 1")
    _check(d.root is None or (isinstance(d.root, str) and d.root != ""), "dataset.root", d.root,
           "null or a directory path")


def _validate_csv(d: DatasetConfig) -> None:
    """``dataset.csv.*``: a real user's per-party files, ID and label columns, class set."""
    parties = d.num_passive + 1
    c = d.csv
    _check(isinstance(c.paths, list) and all(isinstance(p, str) and p for p in c.paths), "dataset.csv.paths",
           c.paths, "a list of file paths")
    if d.name == "csv":
        _check(len(c.paths) == parties, "dataset.csv.paths", c.paths,
               f"{parties} file paths (active party first, then each of the dataset.num_passive={d.num_passive} "
               f"passives), got {len(c.paths)}")
        dup = sorted({p for p in c.paths if c.paths.count(p) > 1})
        _check(not dup, "dataset.csv.paths", c.paths, f"one file per party; {dup} is given to several parties")
    _check(isinstance(c.id_column, str) and c.id_column != "", "dataset.csv.id_column", c.id_column, "a column name")
    _check(isinstance(c.label_column, str) and c.label_column != "", "dataset.csv.label_column", c.label_column,
           "a column name")
    _check(c.label_column != c.id_column, "dataset.csv.label_column", c.label_column,
           "a column other than dataset.csv.id_column")
    if c.classes is not None:
        ok = isinstance(c.classes, list) and all((isinstance(x, str) and x.strip()) or _is_int(x) for x in c.classes)
        _check(ok, "dataset.csv.classes", c.classes, "null or a list of class labels (strings or integers)")
        names = [str(x).strip() for x in c.classes]
        _check(len(names) >= 2, "dataset.csv.classes", c.classes, "at least 2 classes")
        dup = sorted({x for x in names if names.count(x) > 1})
        _check(not dup, "dataset.csv.classes", c.classes, f"distinct classes ({dup} listed more than once)")
    _validate_csv_options(c)


def _validate_checkpoint(cfg: Config) -> None:
    """``checkpoint.*`` and ``resume``."""
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


def _validate_model(m: ModelConfig, d: DatasetConfig) -> None:
    """``model.*``: built-in encoders and widths, and the shape of ``encoder_target`` / ``top_target``."""
    _check(m.encoder in ENCODERS, "model.encoder", m.encoder, f"one of {ENCODERS}")
    if m.encoder == "cnn":
        _check(d.name in ("digits", "fashion_mnist"), "model.encoder", m.encoder,
               "'mlp' for tabular data (cnn needs an image dataset)")
    for name in ("hidden", "top_hidden"):
        v = getattr(m, name)
        _check(isinstance(v, list), f"model.{name}", v, "a list of layer widths, e.g. [256] ([] = no hidden layer)")
        bad = [h for h in v if not (_is_int(h) and h >= 1)]
        _check(not bad, f"model.{name}", v, f"positive integer layer widths ({bad[0]!r} is not)" if bad else "")
    _check(_is_int(m.embedding_dim) and m.embedding_dim >= 1, "model.embedding_dim", m.embedding_dim,
           "an integer >= 1")
    _check(_is_num(m.dropout) and 0 <= m.dropout < 1, "model.dropout", m.dropout, "a number in [0, 1)")
    for name in ("encoder_target", "top_target"):
        _check_target(getattr(m, name), f"model.{name}", allow_weight=False)


def _validate_method(cfg: Config) -> None:
    """``method.*`` of the training loop and the prototype losses: name, optimiser, geometry, first and third
    losses, pseudo-labels."""
    ck = cfg.checkpoint
    t = cfg.method
    r = t.research
    _check(t.name in METHODS, "method.name", t.name, f"one of {METHODS}")
    _check(t.name not in INPROCESS_ONLY or (ck.every == 0 and not cfg.resume), "checkpoint.every", ck.every,
           f"0 and resume=false for method {t.name} (the baselines are not checkpointed)")
    _check(_is_num(t.lr) and t.lr > 0, "method.lr", t.lr, "a number > 0")
    _check(_is_num(t.weight_decay) and t.weight_decay >= 0, "method.weight_decay", t.weight_decay, "a number >= 0")
    _check(_is_int(t.batch_size) and t.batch_size >= 1, "method.batch_size", t.batch_size, "an integer >= 1")
    _check(r.distance in DISTANCES, "method.research.distance", r.distance, f"one of {DISTANCES}")
    _check(isinstance(r.normalize, bool), "method.research.normalize", r.normalize, "true or false")
    for name in ("lambda_active", "lambda_passive"):
        v = getattr(t, name)
        _check(_is_num(v) and v >= 0, f"method.{name}", v, "a number >= 0")
    _check(_is_num(t.tau) and t.tau > 0, "method.tau", t.tau, "a number > 0")
    _check(_is_num(t.confidence_threshold) and 0 <= t.confidence_threshold < 1, "method.confidence_threshold",
           t.confidence_threshold, "a number in [0, 1)")
    _check(_is_num(r.ema_momentum) and 0 <= r.ema_momentum < 1, "method.research.ema_momentum", r.ema_momentum,
           "a number in [0, 1)")
    _check(_is_int(t.warmup_rounds) and t.warmup_rounds >= 0, "method.warmup_rounds", t.warmup_rounds,
           "an integer >= 0")
    _check(r.pseudo_gate in ("off", "majority") or (_is_num(r.pseudo_gate) and 0 < r.pseudo_gate <= 1),
           "method.research.pseudo_gate", r.pseudo_gate, "'off', 'majority' or a precision target in (0, 1]")
    _check(r.combine_gate is None or (_is_num(r.combine_gate) and r.combine_gate >= 0), "method.research.combine_gate",
           r.combine_gate, "null or a number of standard errors >= 0")
    _check(isinstance(r.pseudo_label_once, bool), "method.research.pseudo_label_once", r.pseudo_label_once,
           "true or false")
    if t.name == "vproto" and r.pseudo_gate != "off":
        _check(_is_num(t.lambda_passive) and t.lambda_passive > 0, "method.research.pseudo_gate", r.pseudo_gate,
               "'off' when method.lambda_passive is 0 (the gate filters the passives' third loss)")


def _validate_method_parts(t: MethodConfig) -> None:
    """``method.*`` of the joint model, the active-only head and their calibration."""
    r = t.research
    _check(_is_int(r.aligned_passes) and r.aligned_passes >= 1, "method.research.aligned_passes", r.aligned_passes,
           "an integer >= 1 (null, the aligned rows cycled all round, was removed: it over-fits; BENCHMARKS.md §2)")
    _check(isinstance(r.joint_encoder, bool), "method.research.joint_encoder", r.joint_encoder, "true or false")
    _check(r.residual_weight in ("fixed", "learned"), "method.research.residual_weight", r.residual_weight,
           "'fixed' or 'learned'")
    _check(r.residual_base in ("live", "best_val"), "method.research.residual_base", r.residual_base,
           "'live' or 'best_val'")
    _check(isinstance(r.joint_warm_start, bool), "method.research.joint_warm_start", r.joint_warm_start,
           "true or false")
    _check(_is_int(t.passive_pretrain_epochs) and t.passive_pretrain_epochs >= 0, "method.passive_pretrain_epochs",
           t.passive_pretrain_epochs, "an integer >= 0")
    _check(r.passive_pretrain_min_steps is None or (_is_int(r.passive_pretrain_min_steps)
                                                     and r.passive_pretrain_min_steps >= 0),
           "method.research.passive_pretrain_min_steps", r.passive_pretrain_min_steps, "null (auto) or an integer >= 0")
    _check(r.passive_pretrain in PRETRAIN_OPTIONS, "method.research.passive_pretrain", r.passive_pretrain,
           f"one of {PRETRAIN_OPTIONS}")
    _check(isinstance(t.local_head, bool), "method.local_head", t.local_head, "true or false")
    _check(t.combine_weight == "auto" or (_is_num(t.combine_weight) and 0 <= t.combine_weight <= 1),
           "method.combine_weight", t.combine_weight, "'auto' or a number in [0, 1]")
    _check(isinstance(r.joint_residual, bool), "method.research.joint_residual", r.joint_residual, "true or false")
    _check(t.head in HEADS, "method.head", t.head, f"one of {HEADS}")
    if r.joint_residual and t.name == "vproto":
        _check(t.local_head, "method.research.joint_residual", r.joint_residual,
               "false when method.local_head is false (the residual is taken on the active-only head)")
    _check(isinstance(r.joint_trains_active_encoder, bool), "method.research.joint_trains_active_encoder",
           r.joint_trains_active_encoder, "true or false")
    _check(isinstance(r.prototype_logits, bool), "method.research.prototype_logits", r.prototype_logits,
           "true or false")
    if t.combine_weight != 1 and t.name == "vproto":
        _check(t.local_head or t.name in ("local", "centralized"), "method.combine_weight", t.combine_weight,
               "1.0 when method.local_head is false (there is no active-only head to combine with)")


def _validate_head(cfg: Config) -> None:
    """``method.head=gbdt``: trees on the active party's columns, so tables only, and a vproto run that has the
    head (the other methods have none, or train the network head alone)."""
    t = cfg.method
    if t.head != "gbdt":
        return
    _check(cfg.dataset.name not in IMAGE_WIDTHS, "method.head", t.head,
           f"'nn' on {cfg.dataset.name} (the tree head is for tables: adult or csv; images keep the network head)")
    _check(t.name == "vproto" and t.local_head, "method.head", t.head,
           f"'nn' unless method.name=vproto with method.local_head=true (got method.name={t.name}, "
           f"method.local_head={t.local_head})")


def _check_target(spec: Any, option: str, allow_weight: bool) -> None:
    """Shape of a Hydra-style ``{_target_: dotted.path, **kwargs}`` (importing it waits until a party builds it)."""
    if spec is None and not allow_weight:
        return
    example = ("{_target_: my_pkg.my_term, weight: 0.1}" if allow_weight
               else "{_target_: my_pkg.MyEncoder, width: 128}")
    _check(isinstance(spec, Mapping), option, spec, f"{'null or ' if not allow_weight else ''}a mapping like {example}")
    path = spec.get("_target_")
    _check(isinstance(path, str) and all(p.isidentifier() for p in path.split(".")) and "." in path, option, spec,
           f"a '_target_' key holding a dotted path 'module.Name' to import, e.g. {example}")
    _check(all(isinstance(k, str) and k.isidentifier() for k in spec if k != "_target_"), option, spec,
           "keyword-argument names (identifiers) besides '_target_'")
    if allow_weight and "weight" in spec:
        _check(_is_num(spec["weight"]) and spec["weight"] >= 0, option, spec, "a 'weight' that is a number >= 0")


def _validate_extra_losses(t: MethodConfig) -> None:
    """``method.extra_losses``: a list of ``{_target_: dotted.path, weight: w, **kwargs}`` (custom loss terms)."""
    _check(isinstance(t.extra_losses, list), "method.extra_losses", t.extra_losses,
           "a list of {_target_: my_pkg.my_term, weight: 0.1} entries ([] = none)")
    for i, spec in enumerate(t.extra_losses):
        _check_target(spec, f"method.extra_losses[{i}]", allow_weight=True)
    if t.extra_losses:
        _check(t.name in ("vproto", "vanilla", "local"), "method.extra_losses", t.extra_losses,
               f"[] for method {t.name!r} (custom terms are added to the active party's loss)")


def _validate_gaussian(section: str, g: PrivacyConfig | DefenceConfig, off: str, delta_hint: str) -> None:
    """A Gaussian mechanism's ``noise_multiplier``, ``delta`` and ``target_epsilon`` (``privacy.*`` and
    ``defence.*`` share them): a noise multiplier or a target epsilon, never both."""
    _check(_is_num(g.noise_multiplier) and g.noise_multiplier >= 0, f"{section}.noise_multiplier", g.noise_multiplier,
           f"a number >= 0 ({off})")
    _check(_is_num(g.delta) and 0 < g.delta < 1, f"{section}.delta", g.delta, f"a number in (0, 1), {delta_hint}")
    if g.target_epsilon is not None:
        _check(_is_num(g.target_epsilon) and g.target_epsilon > 0, f"{section}.target_epsilon", g.target_epsilon,
               "null or a number > 0")
        _check(g.noise_multiplier == 0, f"{section}.noise_multiplier", g.noise_multiplier,
               f"0 when {section}.target_epsilon is set (the noise is calibrated from target_epsilon="
               f"{g.target_epsilon}); set one of the two")


def _validate_privacy(p: PrivacyConfig, t: MethodConfig) -> None:
    """``privacy.*``: noise, clipping, accounting; only where prototypes are sent at all."""
    r = t.research
    _validate_gaussian("privacy", p, "0 = no noise", "well below 1 / number of aligned users (e.g. 1e-5)")
    _check(_is_num(p.clip_norm) and p.clip_norm > 0, "privacy.clip_norm", p.clip_norm, "a number > 0")
    _check(isinstance(p.clear_prototypes, bool), "privacy.clear_prototypes", p.clear_prototypes, "true or false")
    if p.gaussian:
        _check(not p.clear_prototypes, "privacy.clear_prototypes", p.clear_prototypes,
               "false with privacy.noise_multiplier/target_epsilon (the prototypes are noised, not clear)")
        _check(r.pseudo_gate == "off", "method.research.pseudo_gate", r.pseudo_gate,
               "'off' with DP prototypes (privacy.*): the gates are fitted on true validation labels, outside the "
               "prototypes' accounting, and would travel to the passives")
    if not t.shares_prototypes:  # noise on prototypes that never leave the active party would only cost accuracy
        for key, value, off in (("target_epsilon", p.target_epsilon, None),
                                ("noise_multiplier", p.noise_multiplier, 0)):
            _check(value == off, f"privacy.{key}", value,
                   f"{'null' if off is None else 0}: privacy.* protects the second prototypes sent to the passive "
                   f"parties, and method {t.name!r} with lambda_passive={t.lambda_passive} sends none (they are "
                   f"sent only for the third loss: method=vproto with method.lambda_passive > 0)")


def _validate_defence(cfg: Config) -> None:
    """``defence.*`` and ``audit.*``: they protect or measure the gradients the passives receive, so they apply only
    to methods that send some (``vproto``, ``vanilla``)."""
    d, a = cfg.defence, cfg.audit
    if d.label_epsilon is not None:
        _check(_is_num(d.label_epsilon) and d.label_epsilon > 0, "defence.label_epsilon", d.label_epsilon,
               "null (off) or a number > 0")
    _validate_gaussian("defence", d, "0 = off", "e.g. 1e-5")
    _check(d.release_rounds is None or (_is_int(d.release_rounds) and d.release_rounds >= 0), "defence.release_rounds",
           d.release_rounds, "null (every round) or an integer >= 0 (0: no gradient row ever leaves)")
    _check(_is_int(d.release_every) and d.release_every >= 1, "defence.release_every", d.release_every,
           "an integer >= 1")
    _check(isinstance(a.record, bool), "audit.record", a.record, "true or false")
    _check(a.dir is None or (isinstance(a.dir, str) and a.dir != ""), "audit.dir", a.dir, "null or a directory path")
    gaussian = d.gaussian
    if cfg.method.name not in ("vproto", "vanilla"):
        why = (f"method {cfg.method.name!r} sends the passive parties no gradients (defences and the audit apply to "
               f"vproto and vanilla)")
        _check(d.label_epsilon is None, "defence.label_epsilon", d.label_epsilon, f"null: {why}")
        _check(not gaussian, "defence.noise_multiplier/target_epsilon", d.target_epsilon or d.noise_multiplier,
               f"off: {why}")
        _check(not a.record, "audit.record", a.record, f"false: {why}")
    if gaussian:
        _check(d.release_rounds != 0, "defence.release_rounds", d.release_rounds,
               "null or > 0 with the Gaussian gradient channel (defence.noise_multiplier/target_epsilon): with 0 no "
               "gradient row ever leaves, so there is nothing to noise (defence=gradient_noise sets null)")
    if gaussian and cfg.method.shares_prototypes:
        _check(False, "method.lambda_passive", cfg.method.lambda_passive,
               "0 with the Gaussian gradient channel (defence.noise_multiplier/target_epsilon): the third loss sends "
               "the passives second prototypes and pseudo-label gates fitted on true labels, outside the channel's "
               "accounting (use defence=label_dp for a guarantee that covers them)")


CSV_MISSING = ("error", "impute")
CSV_SCALINGS = ("column", "global")


def _validate_csv_options(c: CsvConfig) -> None:
    """``dataset.csv.missing``, ``scaling``, ``clip`` and ``split_seed``: checked for every dataset (cheap, and a
    typo should not wait until someone switches to csv)."""
    _check(c.missing in CSV_MISSING, "dataset.csv.missing", c.missing, f"one of {CSV_MISSING}")
    _check(c.scaling in CSV_SCALINGS, "dataset.csv.scaling", c.scaling, f"one of {CSV_SCALINGS}")
    _check(c.clip is None or (_is_num(c.clip) and c.clip > 0), "dataset.csv.clip", c.clip,
           "null or a number > 0 (standardised values are clipped to [-clip, clip])")
    _check(c.split_seed is None or (_is_int(c.split_seed) and c.split_seed >= 0), "dataset.csv.split_seed",
           c.split_seed, "null (= seed) or an integer >= 0")


def _validate_feature_split(d: DatasetConfig) -> None:
    """``dataset.feature_split``: adult only, one non-empty list of known column names per party, each column once."""
    fs = d.feature_split
    if fs is None:
        if d.name == "adult":
            _check(d.num_passive <= len(PASSIVE_COLUMNS), "dataset.num_passive", d.num_passive,
                   f"at most {len(PASSIVE_COLUMNS)} with the built-in Adult split (one passive column each); set "
                   f"dataset.feature_split for more parties")
        return
    if d.name != "adult":
        how = "each CSV file holds its party's columns" if d.name == "csv" else "images are cut into equal strips"
        _check(False, "dataset.feature_split", fs,
               f"null for dataset {d.name!r} ({how}; it applies to the adult dataset only)")
    parties = d.num_passive + 1
    _check(isinstance(fs, list) and len(fs) == parties and all(isinstance(p, list) and p for p in fs),
           "dataset.feature_split", fs,
           f"null or {parties} non-empty lists of columns (active first, then each passive)")
    seen: dict[str, int] = {}
    for party, columns in enumerate(fs):
        for col in columns:
            _check(isinstance(col, str) and col in COLUMNS, "dataset.feature_split", fs,
                   f"Adult column names, but it has the unknown Adult column {col!r} (party {party}); known "
                   f"columns: {', '.join(COLUMNS)}")
            _check(col not in seen, "dataset.feature_split", fs,
                   f"each column given to one party, but column {col!r} is given to party {seen.get(col)} and to "
                   f"party {party}")
            seen[col] = party
    missing = [c for c in COLUMNS if c not in seen]
    _check(not missing, "dataset.feature_split", fs, f"every Adult column given to a party; missing: {missing}")


EXCHANGE_SCHEDULES = ("even", "first", "last")


def _validate_exchange(cfg: Config) -> None:
    """``exchange.*``: how many message exchanges the rounds are cut into, and the passives' local passes."""
    e = cfg.exchange
    _check(e.count is None or (_is_int(e.count) and 1 <= e.count <= cfg.num_rounds), "exchange.count", e.count,
           f"null (auto) or an integer in 1..num_rounds={cfg.num_rounds} (every exchange trains at least one round)")
    _check(e.schedule in EXCHANGE_SCHEDULES, "exchange.schedule", e.schedule, f"one of {EXCHANGE_SCHEDULES}")
    _check(_is_int(e.passive_passes) and e.passive_passes >= 1, "exchange.passive_passes", e.passive_passes,
           "an integer >= 1")
    _check(_is_num(e.passive_reach) and e.passive_reach > 0, "exchange.passive_reach", e.passive_reach,
           "a number > 0")
