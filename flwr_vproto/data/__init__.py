"""Datasets and their vertical partitioning between an active party and passive parties (design §2).

``load_vertical_dataset(cfg)`` gives every party's data (simulation, tests, the in-process trainer);
``load_party(cfg, i)`` gives one party's data (what a ClientApp / SuperNode calls); ``dataset_classes(cfg)`` the
classes as the active party knows them. Every bad input raises :class:`DataError`.
"""

from flwr_vproto.data.load import clear_cache, dataset_classes, load_party, load_vertical_dataset
from flwr_vproto.data.types import SPLITS, CentralView, DataError, PartyData, PartySplits, VerticalDataset

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
