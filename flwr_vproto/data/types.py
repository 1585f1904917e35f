"""What a party holds: its own users' string IDs, features and (active party only) labels, per split.

Every party's rows are in its **own shuffled order**: nothing here lines parties up. Alignment is the job of private
set intersection (``flwr_vproto.psi``), which turns the IDs into row indices in one shared order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """Bad input data; the message names the file, column, party and value at fault."""


@dataclass
class PartyData:
    """One split of one party's rows.

    ``y`` holds labels only on the active party (``-1`` where the active party does not know a label); ``None`` on
    passive parties. ``y_true`` is the simulator's ground truth for every row (``-1`` if unknown): it exists only to
    *measure* pseudo-label accuracy in simulation, never feeds training, and never leaves the party.
    """

    ids: np.ndarray  # (n,) dtype object, str user IDs
    x: np.ndarray  # (n, d) float32, already encoded and scaled by this party
    y: np.ndarray | None = None  # (n,) int64, active party only
    y_true: np.ndarray | None = None  # (n,) int64, simulation only, metrics only

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def labels(self) -> np.ndarray:
        """``y``, on the active party; a passive party holds no labels, so asking for them is an error."""
        if self.y is None:
            raise ValueError("a passive party's data holds no labels (only the active party's split has y)")
        return self.y


@dataclass
class PartySplits:
    """Everything one party holds: train, val and test rows plus a description of its features."""

    name: str  # "active", "passive1", ...
    role: str  # "active" | "passive"
    train: PartyData
    val: PartyData
    test: PartyData
    input_shape: tuple[int, ...]  # per-row shape for encoders: (d,) tabular, (C, H, W) image strips
    feature_names: list[str] = field(default_factory=list)
    # How this party turns its raw rows into ``x`` (fitted on its training rows; csv data only, ``None`` for the
    # built-in datasets): saved with its model so that new rows are encoded exactly as in training.
    preprocessing: dict | None = None

    def split(self, name: str) -> PartyData:
        """The split called ``name`` (train, val or test)."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)


@dataclass
class CentralView:
    """Simulation only: users with all parties' features, for the ``centralized`` upper bound (simulated data:
    every user; csv: every user the active file labels, see :func:`flwr_vproto.data.load.csv_central_view`)."""

    x: dict[str, np.ndarray]  # split -> (n, sum of d_k) float32, features of all parties concatenated
    y: dict[str, np.ndarray]  # split -> (n,) int64
    input_shapes: list[tuple[int, ...]]  # each party's input shape, in concatenation order


@dataclass
class VerticalDataset:
    """A vertically partitioned dataset: one :class:`PartySplits` per party, active party first."""

    parties: list[PartySplits]
    num_classes: int
    class_names: list[str]
    central: CentralView | None = None  # csv: None unless method.name is centralized or gbdt_centralized

    @property
    def active(self) -> PartySplits:
        return self.parties[0]

    @property
    def passives(self) -> list[PartySplits]:
        return self.parties[1:]
