"""Entry points: build a whole vertical dataset, or just one party's share of it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from flwr_vproto.data import adult, digits, fashion_mnist
from flwr_vproto.data.csv_files import csv_classes, load_csv_party
from flwr_vproto.data.partition import CENTRAL, SimulatedSource, partition, rng_for
from flwr_vproto.data.types import SPLITS, CentralView, DataError, PartySplits, VerticalDataset

if TYPE_CHECKING:  # only annotations: config never needs the data package, nor this it
    from flwr_vproto.config import Config

_SOURCES: dict[str, Callable[[Config], SimulatedSource]] = {
    "digits": digits.source,
    "adult": adult.source,
    "fashion_mnist": fashion_mnist.source,
}
_CLASS_NAMES = {"digits": digits.CLASS_NAMES, "adult": adult.CLASS_NAMES, "fashion_mnist": fashion_mnist.CLASS_NAMES}


def _check_feature_split(cfg: Config) -> None:
    if cfg.dataset.feature_split is not None and cfg.dataset.name != "adult":
        how = ("images are cut into equal vertical strips" if cfg.dataset.name != "csv"
               else "each CSV file holds its party's columns")
        raise DataError(f"dataset.feature_split applies to the adult dataset only ({cfg.dataset.name}: {how}); "
                        f"set it to null")


def _simulation_key(cfg: Config) -> tuple[Any, ...]:
    """Every option that changes a simulated dataset, hashable: the cache key."""
    d = cfg.dataset
    root = (d.root or fashion_mnist.DEFAULT_ROOT) if d.name == "fashion_mnist" else None
    return (d.name, cfg.seed, d.aligned_fraction, d.num_passive,
            None if d.feature_split is None else tuple(tuple(p) for p in d.feature_split),
            None if d.nonaligned_shares is None else tuple(d.nonaligned_shares),
            d.active_labels_nonaligned, d.val_fraction, d.test_fraction if d.name == "digits" else None,
            d.active_only_test_fraction, d.max_train_users, root)


_CACHE: dict[tuple[Any, ...], VerticalDataset] = {}
_CACHE_SIZE = 2


def _cached_simulation(cfg: Config, with_central: bool) -> VerticalDataset:
    """Build (or reuse) a simulated dataset; every simulated client process calls :func:`load_party`, so the
    partition is built once per process and per configuration. Callers get copies, never the cached arrays.

    The centralized view (as large as all parties together) is built only when asked for."""
    key = _simulation_key(cfg)
    cached = _CACHE.get(key)
    if cached is None or (with_central and cached.central is None):
        cached = partition(_SOURCES[cfg.dataset.name](cfg), cfg, with_central=with_central)
        _CACHE.pop(key, None)
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = cached
    return cached


def clear_cache() -> None:
    """Forget cached datasets and raw files (tests, files changed on disk, or to free memory)."""
    _CACHE.clear()
    digits._images.cache_clear()
    adult._frames.cache_clear()
    fashion_mnist._load.cache_clear()


def _check_party(cfg: Config, party_index: int) -> None:
    if not isinstance(party_index, int) or not 0 <= party_index <= cfg.dataset.num_passive:
        raise DataError(f"party_index={party_index!r}: expected 0 (active) to {cfg.dataset.num_passive} "
                        f"(dataset.num_passive)")


def held_by(ids: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Whether each of ``ids`` is among ``others`` (string IDs: a set lookup; ``np.isin`` on object arrays compares
    every pair, minutes on a table of tens of thousands of users)."""
    pool = set(others.tolist())
    return np.fromiter((u in pool for u in ids.tolist()), dtype=bool, count=len(ids))


def csv_central_view(cfg: Config, parties: list[PartySplits], all_rows: bool = False) -> CentralView:
    """Simulation only: every party's columns of one's own CSV files joined in one process.

    Validation and test users (as the keyed hash assigns them): those **every** party holds and whose label the
    active party knows (``y >= 0``): the users vproto validates and scores jointly. Training users:

    * ``all_rows=False`` (``gbdt_aligned``): the aligned users only (every party holds them);
    * ``all_rows=True`` (``centralized``, ``gbdt_centralized``: the all-rows upper bound): every training user whose
      label the active party knows, aligned or not. A party that does not hold a user gives that user zeros (its
      encoded columns' training mean: numbers are standardised, categories one-hot), and one 0/1 column per passive
      party, appended to the active party's block, says whether that passive holds the user. The passives' own
      non-aligned users have no label in any file, so no model can learn from them.

    Each user's row is the parties' encoded features concatenated in party order (each party's encoder fitted on its
    own training rows, as in federated training). Training rows are in a seeded random order; val/test rows in the
    active party's order.
    """
    x: dict[str, np.ndarray] = {}
    y: dict[str, np.ndarray] = {}
    for name in SPLITS:
        splits = [p.split(name) for p in parties]
        labels = np.asarray(splits[0].y)
        keep = labels >= 0
        held = [held_by(splits[0].ids, data.ids) for data in splits[1:]]
        if not (all_rows and name == "train"):
            for h in held:
                keep &= h
        ids = splits[0].ids[keep]
        order = rng_for(cfg.seed, CENTRAL).permutation(len(ids)) if name == "train" else np.arange(len(ids))
        ids = ids[order]
        blocks = [splits[0].x[np.flatnonzero(keep)[order]].reshape(len(ids), -1)]
        if all_rows:
            blocks.append(np.stack([h[keep][order] for h in held], axis=1).astype(np.float32))
        for data in splits[1:]:
            where = {u: k for k, u in enumerate(data.ids.tolist())}
            flat = data.x.reshape(len(data), -1)
            block = np.zeros((len(ids), flat.shape[1]), dtype=np.float32)
            rows = [(i, where[u]) for i, u in enumerate(ids.tolist()) if u in where]
            if rows:
                mine, theirs = map(np.array, zip(*rows, strict=True))
                block[mine] = flat[theirs]
            blocks.append(block)
        x[name] = np.ascontiguousarray(np.concatenate(blocks, axis=1), dtype=np.float32)
        y[name] = labels[keep][order].astype(np.int64)
    if len(y["train"]) < 2:
        raise DataError(f"method {cfg.method.name}: only {len(y['train'])} labelled training user(s) "
                        f"{'' if all_rows else 'appear in every CSV file '}({', '.join(cfg.dataset.csv.paths)}); it "
                        f"trains on those users only")
    shapes = [p.input_shape for p in parties]
    if all_rows:  # the passives' "holds this user" columns travel in the active party's block
        shapes[0] = (int(np.prod(shapes[0])) + len(parties) - 1,)
    return CentralView(x=x, y=y, input_shapes=shapes)


CENTRAL_METHODS = ("centralized", "gbdt_centralized")
"""Methods that train on the all-rows view (``VerticalDataset.central``); csv builds it only for them."""


def load_vertical_dataset(cfg: Config) -> VerticalDataset:
    """All parties' data (active first) and the centralized view: always for simulated datasets, and for csv only
    for the methods that train on it (:data:`CENTRAL_METHODS`: it joins every party's file in one process);
    deterministic in cfg."""
    _check_feature_split(cfg)
    if cfg.dataset.name != "csv":
        return copy.deepcopy(_cached_simulation(cfg, with_central=True))
    num_classes, class_names = csv_classes(cfg)
    parties = [load_csv_party(cfg, p) for p in range(cfg.dataset.num_passive + 1)]
    common = set(parties[0].train.ids.tolist())
    for party in parties[1:]:
        common &= set(party.train.ids.tolist())
    if len(common) < 2:
        raise DataError(f"only {len(common)} training user ID(s) appear in every CSV file "
                        f"({', '.join(cfg.dataset.csv.paths)}); vertical training needs at least 2 aligned users")
    central = csv_central_view(cfg, parties, all_rows=True) if cfg.method.name in CENTRAL_METHODS else None
    return VerticalDataset(parties=parties, num_classes=num_classes, class_names=class_names, central=central)


def load_party(cfg: Config, party_index: int) -> PartySplits:
    """One party's data: 0 = active party, 1..K = passive parties.

    For ``csv`` only that party's own file is read (what a deployed SuperNode does). Simulated datasets build the
    whole partition (deterministic in ``cfg.seed``, cached per process) and return the party's share.
    """
    _check_party(cfg, party_index)
    _check_feature_split(cfg)
    if cfg.dataset.name == "csv":
        return load_csv_party(cfg, party_index)
    return copy.deepcopy(_cached_simulation(cfg, with_central=False).parties[party_index])


def dataset_classes(cfg: Config) -> tuple[int, list[str]]:
    """``(num_classes, class_names)``, as known to the active party (for csv: read from the active party's file).

    Passive parties must not call this for csv data: they learn the number of classes from the protocol.
    """
    if cfg.dataset.name == "csv":
        return csv_classes(cfg)
    names = list(_CLASS_NAMES[cfg.dataset.name])
    return len(names), names
