"""Per-party encoding of tabular columns: numeric columns standardised, categorical columns one-hot.

Each party fits its own encoder on **its own training rows only**: in a real deployment nobody can pool the
statistics of several parties (or peek at validation/test rows), so the simulator must not do it either.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.preprocessing import OneHotEncoder, StandardScaler


class TabularEncoder:
    """Standardise ``numeric`` columns and one-hot ``categorical`` ones; output float32, numeric block first.

    Categories unseen at fit time encode as all-zeros (``handle_unknown='ignore'``): a party's val/test rows may
    hold categories absent from its training rows and must not crash.
    """

    def __init__(self, numeric: list[str], categorical: list[str]) -> None:
        self.numeric = list(numeric)
        self.categorical = list(categorical)
        self._scaler: StandardScaler | None = None
        self._onehot: OneHotEncoder | None = None
        self.feature_names: list[str] = []

    def fit(self, frame: pd.DataFrame) -> TabularEncoder:
        names: list[str] = []
        if self.numeric:
            self._scaler = StandardScaler().fit(frame[self.numeric].to_numpy(dtype=np.float64))
            names += self.numeric
        if self.categorical:
            self._onehot = OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float32)
            self._onehot.fit(frame[self.categorical].astype(str))
            for column, cats in zip(self.categorical, self._onehot.categories_, strict=True):
                names += [f"{column}={c}" for c in cats]
        self.feature_names = names
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        if len(frame) == 0:  # an empty split (tiny CSV files): scikit-learn refuses zero-row inputs
            return np.zeros((0, len(self.feature_names)), dtype=np.float32)
        blocks = []
        if self._scaler is not None:
            blocks.append(self._scaler.transform(frame[self.numeric].to_numpy(dtype=np.float64)).astype(np.float32))
        if self._onehot is not None:
            blocks.append(self._onehot.transform(frame[self.categorical].astype(str)).astype(np.float32))
        if not blocks:
            return np.zeros((len(frame), 0), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(blocks, axis=1), dtype=np.float32)

    def state(self) -> dict:
        """The fitted encoder as plain lists (JSON- and ``torch.load(weights_only=True)``-safe)."""
        return {
            "numeric": list(self.numeric), "categorical": list(self.categorical),
            "mean": [] if self._scaler is None else [float(v) for v in self._scaler.mean_],
            "scale": [] if self._scaler is None else [float(v) for v in self._scaler.scale_],
            "categories": [] if self._onehot is None else [[str(c) for c in cats] for cats in self._onehot.categories_],
        }

    @classmethod
    def from_state(cls, state: dict) -> TabularEncoder:
        """The encoder :meth:`state` describes, ready to :meth:`transform` new rows as in training."""
        enc = cls(state["numeric"], state["categorical"])
        names: list[str] = []
        if enc.numeric:
            enc._scaler = StandardScaler()
            enc._scaler.mean_ = np.asarray(state["mean"], dtype=np.float64)
            enc._scaler.scale_ = np.asarray(state["scale"], dtype=np.float64)
            enc._scaler.var_ = enc._scaler.scale_ ** 2
            enc._scaler.n_features_in_ = len(enc.numeric)
            names += enc.numeric
        if enc.categorical:
            cats = [np.asarray(c, dtype=object) for c in state["categories"]]
            enc._onehot = OneHotEncoder(categories=cats, handle_unknown="ignore", sparse_output=False,
                                        dtype=np.float32)
            enc._onehot.fit(pd.DataFrame({c: list(v[:1]) for c, v in zip(enc.categorical, cats, strict=True)}))
            for column, c in zip(enc.categorical, cats, strict=True):
                names += [f"{column}={v}" for v in c]
        enc.feature_names = names
        return enc

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (len(self.feature_names),)
