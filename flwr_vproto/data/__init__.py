"""Datasets and their vertical partitioning between an active party and passive parties (design §2).

``load_vertical_dataset(cfg)`` gives every party's data (simulation, tests, the in-process trainer);
``load_party(cfg, i)`` gives one party's data (what a ClientApp / SuperNode calls); ``dataset_classes(cfg)`` the
classes as the active party knows them. Every bad input raises :class:`DataError`.
"""

from __future__ import annotations

from typing import Any

from flwr_vproto.data.types import SPLITS, CentralView, DataError, PartyData, PartySplits, VerticalDataset

_LOADERS = ("clear_cache", "dataset_classes", "load_party", "load_vertical_dataset")


def __getattr__(name: str) -> Any:
    """The loaders import pandas and scikit-learn (~1 s): only code that loads data pays for them, not a deployed
    ClientApp process that restores a party whose data it already holds (``flwr_vproto.client_app``)."""
    if name in _LOADERS:
        from flwr_vproto.data import load

        return getattr(load, name)
    raise AttributeError(f"module 'flwr_vproto.data' has no attribute {name!r}")


__all__ = [
    "SPLITS",
    "CentralView",
    "DataError",
    "PartyData",
    "PartySplits",
    "VerticalDataset",
    "clear_cache",
    "dataset_classes",
    "load_party",
    "load_vertical_dataset",
]
