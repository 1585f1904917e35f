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


def _positions(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row index in ``ids`` of each of ``wanted`` (all present)."""
    where = {u: k for k, u in enumerate(ids.tolist())}
    return np.array([where[u] for u in wanted.tolist()], dtype=np.int64)


def csv_central_view(cfg: Config, parties: list[PartySplits]) -> CentralView:
    """Simulation only: the ``centralized`` upper bound on one's own CSV files, every party's file in one process.

    Per split (as the keyed hash assigns users), the inner join on the ID of the users **every** party holds in that
    split and whose label the active party knows (``y >= 0``): train = the aligned training users (non-aligned
    users lack some party's features, so no model with all features can learn from them), val and test = the
    validation and test users every file holds (the users vproto scores jointly). Each user's row is the parties'
    encoded features concatenated in party order (each party's encoder fitted on its own training rows, as in
    federated training). Training rows are in a seeded random order; val/test rows in the active party's order.
    """
    x: dict[str, np.ndarray] = {}
    y: dict[str, np.ndarray] = {}
    for name in SPLITS:
        splits = [p.split(name) for p in parties]
        labels = np.asarray(splits[0].y)
        keep = labels >= 0
        for data in splits[1:]:
            keep &= np.isin(splits[0].ids, data.ids)
        ids = splits[0].ids[keep]
        if name == "train":
            ids = ids[rng_for(cfg.seed, CENTRAL).permutation(len(ids))]
        rows = [_positions(data.ids, ids) for data in splits]
        x[name] = np.ascontiguousarray(np.concatenate(
            [data.x[r].reshape(len(ids), -1) for data, r in zip(splits, rows, strict=True)], axis=1), dtype=np.float32)
        y[name] = labels[rows[0]].astype(np.int64)
    if len(y["train"]) < 2:
        raise DataError(f"method centralized: only {len(y['train'])} labelled training user(s) appear in every CSV "
                        f"file ({', '.join(cfg.dataset.csv.paths)}); it trains on those users only")
    return CentralView(x=x, y=y, input_shapes=[p.input_shape for p in parties])


def load_vertical_dataset(cfg: Config) -> VerticalDataset:
    """All parties' data (active first) and the centralized view: always for simulated datasets, and for csv only
    when ``method.name`` is ``centralized`` (it joins every party's file in one process); deterministic in cfg."""
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
    central = csv_central_view(cfg, parties) if cfg.method.name == "centralized" else None
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
