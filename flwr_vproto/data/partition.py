"""Vertical partitioning of a simulated dataset: who holds which user, in which split, in which row order.

A simulated dataset (digits, adult, fashion_mnist) arrives as a :class:`SimulatedSource`: a training pool and a test
pool of users with labels, and one block of raw features per party. :func:`partition` then plays the part of the
real world (design §2):

- the training pool is optionally subsampled (``max_train_users``), then split into **validation** users (held by
  every party), **aligned** users (held by every party, at least ``num_classes`` of them, stratified so each class is
  present when possible) and **non-aligned** users, each given to exactly one party (``nonaligned_shares``);
- of the test pool, a share ``active_only_test_fraction`` is held by the active party alone (its fallback for users
  it cannot align), the rest by every party;
- every user gets a random string ID, and every party sees its rows in its **own** random order, so nothing but the
  IDs (hence private set intersection) lines parties up;
- each party's features are encoded by an encoder fitted on that party's own training rows only.

Everything is drawn from ``cfg.seed`` through independent streams (one per purpose), so e.g. changing the non-aligned
shares does not change which users are validation or aligned users.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd

from flwr_vproto.data.types import CentralView, DataError, PartyData, PartySplits, VerticalDataset

if TYPE_CHECKING:  # only annotations: config never needs the data package, nor this it
    from flwr_vproto.config import Config

log = logging.getLogger(__name__)

# Random-stream purposes: each draw has its own stream so unrelated options do not perturb each other.
SUBSAMPLE, VAL, ALIGNED, NONALIGNED, ACTIVE_ONLY_TEST, IDS, SHUFFLE, CENTRAL, TEST_SPLIT = range(9)

def rng_for(seed: int, *purpose: int) -> np.random.Generator:
    """An independent random stream for ``purpose`` under ``seed`` (stable across runs and processes)."""
    return np.random.default_rng([seed, *purpose])


class Encoder(Protocol):
    """Turns a party's raw rows into float32 model inputs; fitted on the party's own training rows."""

    feature_names: list[str]

    def fit(self, raw: np.ndarray | pd.DataFrame) -> Encoder: ...

    def transform(self, raw: np.ndarray | pd.DataFrame) -> np.ndarray: ...

    @property
    def input_shape(self) -> tuple[int, ...]: ...


@dataclass
class RawBlock:
    """One party's raw features: rows of the training pool, rows of the test pool, and its encoder factory."""

    train: np.ndarray | pd.DataFrame
    test: np.ndarray | pd.DataFrame
    make_encoder: Callable[[], Encoder]


@dataclass
class SimulatedSource:
    """A dataset before vertical partitioning: labels of the two user pools and one feature block per party."""

    y_train: np.ndarray  # (N,) int64 labels of the training pool
    y_test: np.ndarray  # (M,) int64 labels of the test pool
    class_names: list[str]
    blocks: list[RawBlock]  # active party first


def take(raw: np.ndarray | pd.DataFrame, rows: np.ndarray) -> np.ndarray | pd.DataFrame:
    """Rows ``rows`` of an array or a DataFrame (positional)."""
    if isinstance(raw, pd.DataFrame):
        return raw.iloc[rows]
    return raw[rows]


def stratified_choice(
    items: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``n`` of ``items`` keeping class proportions; every class gets at least one pick when ``n`` allows.

    Returns ``(chosen, rest)``. Written by hand rather than with scikit-learn's splitters because those refuse
    classes with a single member and cannot guarantee class coverage for tiny ``n`` (e.g. 10 aligned users).
    """
    items = np.asarray(items)
    labels = np.asarray(labels)
    n = int(min(max(n, 0), len(items)))
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quotas = n * counts / max(len(items), 1)
    alloc = np.floor(quotas).astype(np.int64)
    if n >= len(classes):
        alloc = np.maximum(alloc, 1)
        while alloc.sum() > n:  # the coverage bump overshot: take back from the most over-served class
            over = np.where(alloc > 1, alloc - quotas, -np.inf)
            alloc[int(np.argmax(over))] -= 1
    remaining = n - int(alloc.sum())
    if remaining > 0:
        order = np.lexsort((rng.random(len(classes)), -(quotas - alloc)))
        for j in order:
            if remaining == 0:
                break
            if alloc[j] < counts[j]:
                alloc[j] += 1
                remaining -= 1
    chosen_mask = np.zeros(len(items), dtype=bool)
    for j in range(len(classes)):
        members = np.flatnonzero(inverse == j)
        chosen_mask[rng.choice(members, size=int(alloc[j]), replace=False)] = True
    return items[chosen_mask], items[~chosen_mask]


def split_counts(n: int, shares: list[float]) -> list[int]:
    """Split ``n`` into integer parts proportional to ``shares`` (largest remainder, earlier parties win ties)."""
    raw = np.asarray(shares, dtype=np.float64) * n
    counts = np.floor(raw).astype(np.int64)
    frac = raw - counts
    for j in np.argsort(-frac, kind="stable")[: n - int(counts.sum())]:
        counts[j] += 1
    return [int(c) for c in counts]


@dataclass
class Plan:
    """Which users (indices into the training or test pool) play which role."""

    val: np.ndarray
    aligned: np.ndarray
    nonaligned: list[np.ndarray]  # per party, active first
    test_shared: np.ndarray
    test_active_only: np.ndarray
    ids_train: np.ndarray  # (N,) object: ID of each training-pool user ("" if subsampled away)
    ids_test: np.ndarray  # (M,) object


def make_plan(y_train: np.ndarray, y_test: np.ndarray, num_parties: int, cfg: Config) -> Plan:
    """Draw the user roles of design §2 from ``cfg.seed``; see the module docstring."""
    d = cfg.dataset
    seed = cfg.seed
    pool = np.arange(len(y_train))
    if d.max_train_users is not None and d.max_train_users < len(pool):
        pool, _ = stratified_choice(pool, y_train, d.max_train_users, rng_for(seed, SUBSAMPLE))
    n_classes = len(np.unique(y_train))

    n_val = max(1, int(round(d.val_fraction * len(pool))))
    val, rest = stratified_choice(pool, y_train[pool], n_val, rng_for(seed, VAL))

    n_aligned = int(round(d.aligned_fraction * len(rest)))
    if n_aligned < n_classes:
        floor = min(n_classes, len(rest))
        if floor > n_aligned:
            log.info("aligned_fraction=%s gives %d aligned users; using %d (one per class)",
                     d.aligned_fraction, n_aligned, floor)
        n_aligned = floor
    if n_aligned < 2:
        raise DataError(
            f"only {n_aligned} aligned user(s) remain (dataset.aligned_fraction={d.aligned_fraction} of "
            f"{len(rest)} training users left after holding out dataset.val_fraction={d.val_fraction} of "
            f"{len(pool)}); vertical training needs at least 2 aligned users: raise aligned_fraction or "
            f"max_train_users, or lower val_fraction"
        )
    aligned, nonaligned_pool = stratified_choice(rest, y_train[rest], n_aligned, rng_for(seed, ALIGNED))

    shares = d.nonaligned_shares if d.nonaligned_shares is not None else [1.0 / num_parties] * num_parties
    perm = rng_for(seed, NONALIGNED).permutation(nonaligned_pool)
    bounds = np.cumsum([0, *split_counts(len(perm), shares)])
    nonaligned = [np.sort(perm[bounds[p]:bounds[p + 1]]) for p in range(num_parties)]

    test_pool = np.arange(len(y_test))
    n_only = int(round(d.active_only_test_fraction * len(test_pool)))
    test_active_only, test_shared = stratified_choice(test_pool, y_test, n_only, rng_for(seed, ACTIVE_ONLY_TEST))

    # IDs: a random permutation of 0..(users-1) over train-pool and test users together, so an ID's number says
    # nothing about the user's split, party or alignment.
    n_users = len(pool) + len(test_pool)
    width = max(6, len(str(n_users - 1)))
    numbers = rng_for(seed, IDS).permutation(n_users)
    ids_train = np.full(len(y_train), "", dtype=object)
    ids_train[pool] = [f"u{k:0{width}d}" for k in numbers[: len(pool)]]
    ids_test = np.array([f"u{k:0{width}d}" for k in numbers[len(pool):]], dtype=object)
    return Plan(val, aligned, nonaligned, test_shared, test_active_only, ids_train, ids_test)


def _party_data(
    encoder: Encoder, raw: np.ndarray | pd.DataFrame, rows: np.ndarray, ids: np.ndarray, y_true: np.ndarray,
    y: np.ndarray | None,
) -> PartyData:
    return PartyData(
        ids=ids[rows].astype(object),
        x=np.ascontiguousarray(encoder.transform(take(raw, rows)), dtype=np.float32),
        y=None if y is None else y.astype(np.int64),
        y_true=y_true[rows].astype(np.int64),
    )


def partition(source: SimulatedSource, cfg: Config, with_central: bool = True) -> VerticalDataset:
    """Partition ``source`` vertically between the active party and ``cfg.dataset.num_passive`` passive parties.

    ``with_central=False`` skips the centralized view (a client process only needs its own party's rows).
    """
    d = cfg.dataset
    num_parties = d.num_passive + 1
    if len(source.blocks) != num_parties:
        raise DataError(f"{len(source.blocks)} feature blocks for {num_parties} parties")
    plan = make_plan(source.y_train, source.y_test, num_parties, cfg)
    y_tr, y_te = source.y_train.astype(np.int64), source.y_test.astype(np.int64)

    parties: list[PartySplits] = []
    encoders: list[Encoder] = []
    for p, block in enumerate(source.blocks):
        active = p == 0
        rows = {
            "train": np.concatenate([plan.aligned, plan.nonaligned[p]]),
            "val": plan.val,
            "test": np.concatenate([plan.test_shared, plan.test_active_only]) if active else plan.test_shared,
        }
        for s, name in enumerate(("train", "val", "test")):  # each party, each split: its own row order
            rows[name] = rng_for(cfg.seed, SHUFFLE, p, s).permutation(rows[name])
        encoder = block.make_encoder().fit(take(block.train, rows["train"]))
        encoders.append(encoder)

        labels: dict[str, np.ndarray | None] = {"train": None, "val": None, "test": None}
        if active:
            train_labels = y_tr[rows["train"]].copy()
            if not d.active_labels_nonaligned:
                train_labels[np.isin(rows["train"], plan.nonaligned[0])] = -1
            labels = {"train": train_labels, "val": y_tr[rows["val"]], "test": y_te[rows["test"]]}
        parties.append(PartySplits(
            name="active" if active else f"passive{p}",
            role="active" if active else "passive",
            train=_party_data(encoder, block.train, rows["train"], plan.ids_train, y_tr, labels["train"]),
            val=_party_data(encoder, block.train, rows["val"], plan.ids_train, y_tr, labels["val"]),
            test=_party_data(encoder, block.test, rows["test"], plan.ids_test, y_te, labels["test"]),
            input_shape=tuple(encoder.input_shape),
            feature_names=list(encoder.feature_names),
        ))

    dataset = VerticalDataset(parties=parties, num_classes=len(source.class_names),
                              class_names=list(source.class_names))
    if not with_central:
        return dataset
    central_train = rng_for(cfg.seed, CENTRAL).permutation(np.concatenate([plan.aligned, *plan.nonaligned]))
    central_rows = {"train": (central_train, "train"), "val": (plan.val, "train"), "test": (plan.test_shared, "test")}
    central_x: dict[str, np.ndarray] = {}
    central_y: dict[str, np.ndarray] = {}
    for split, (split_rows, pool) in central_rows.items():
        blocks = [enc.transform(take(getattr(b, pool), split_rows))
                  for enc, b in zip(encoders, source.blocks, strict=True)]
        central_x[split] = np.ascontiguousarray(np.concatenate(blocks, axis=1), dtype=np.float32)
        central_y[split] = (y_tr if pool == "train" else y_te)[split_rows].astype(np.int64)
    dataset.central = CentralView(x=central_x, y=central_y, input_shapes=[p.input_shape for p in parties])
    return dataset


class ImageStripEncoder:
    """Identity encoder for image strips already scaled to [0, 1]: nothing to fit, nothing shared between parties."""

    def __init__(self, height: int, width: int, columns: np.ndarray) -> None:
        self.height, self.width = height, width
        self.feature_names = [f"px_r{r}_c{int(c)}" for r in range(height) for c in columns]

    def fit(self, raw: np.ndarray | pd.DataFrame) -> ImageStripEncoder:
        return self

    def transform(self, raw: np.ndarray | pd.DataFrame) -> np.ndarray:
        return np.asarray(raw, dtype=np.float32)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, self.height, self.width)


def image_blocks(train: np.ndarray, test: np.ndarray, num_parties: int, max_value: float) -> list[RawBlock]:
    """Cut (n, H, W) images into ``num_parties`` vertical strips of columns, leftmost to the active party.

    Pixels are divided by ``max_value`` into [0, 1] strip by strip (no full-size float copy of the raw images).
    Each strip stays flattened row-major: ``x.reshape(n, 1, H, w)`` gives the strip image back.
    """
    height, width = train.shape[1:]
    if num_parties > width:
        raise DataError(f"cannot cut {width}-pixel-wide images into {num_parties} strips (one per party)")
    blocks = []
    for columns in np.array_split(np.arange(width), num_parties):
        lo, hi = int(columns[0]), int(columns[-1]) + 1
        blocks.append(RawBlock(
            train=train[:, :, lo:hi].reshape(len(train), -1).astype(np.float32) / np.float32(max_value),
            test=test[:, :, lo:hi].reshape(len(test), -1).astype(np.float32) / np.float32(max_value),
            make_encoder=functools.partial(ImageStripEncoder, height, len(columns), columns),
        ))
    return blocks
