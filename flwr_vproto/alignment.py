"""Align parties' rows by private set intersection, all parties in one process (in-process engine, tests).

The Flower engine runs the same :mod:`flwr_vproto.psi` protocol over messages; both end with, for every party and
split, its aligned row indices in one shared order that depends only on the set of IDs and the seed.
"""

from __future__ import annotations

import numpy as np

from flwr_vproto.data.types import SPLITS, VerticalDataset
from flwr_vproto.psi import PSIHub, PSIPeer


def min_intersection(cfg_min_aligned: int, split: str) -> int:
    """Smallest acceptable intersection: ``dataset.min_aligned`` for training users, one for val and test."""
    return cfg_min_aligned if split == "train" else 1


def split_order_seed(seed: int, split: str) -> int:
    """The seed of the shared order of one split's intersection (same on both engines)."""
    return seed * 10 + SPLITS.index(split)


def psi_align(id_lists: list[np.ndarray], order_seed: int, min_intersection: int = 1) -> list[np.ndarray]:
    """Run ECDH-PSI between a hub (``id_lists[0]``) and its peers; return each party's aligned rows, shared order."""
    hub = PSIHub(list(id_lists[0]), order_seed=order_seed, min_intersection=min_intersection)
    peers = [PSIPeer(list(ids)) for ids in id_lists[1:]]
    hub_points = hub.blinded_ids()
    for k, peer in enumerate(peers, start=1):
        reblinded, own = peer.respond(hub_points)
        hub.add_peer(f"passive{k}", reblinded, own)
    hub_rows, positions = hub.finish()
    rows = [np.asarray(hub_rows, dtype=np.int64)]
    for k, peer in enumerate(peers, start=1):
        rows.append(np.asarray(peer.rows_from_positions(positions[f"passive{k}"]), dtype=np.int64))
    return rows


def align_dataset(ds: VerticalDataset, seed: int, min_aligned: int = 2) -> list[dict[str, np.ndarray]]:
    """Per party, per split: the aligned row indices in the shared order (PSIError below ``min_aligned``)."""
    out: list[dict[str, np.ndarray]] = [{} for _ in ds.parties]
    for split in SPLITS:
        rows = psi_align([p.split(split).ids for p in ds.parties], split_order_seed(seed, split),
                         min_intersection(min_aligned, split))
        for party, r in zip(out, rows, strict=False):
            party[split] = r
    return out
