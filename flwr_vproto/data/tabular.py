"""Per-party encoding of tabular columns: numeric columns standardised, categorical columns one-hot.

Each party fits its own encoder on **its own training rows only**: in a real deployment nobody can pool the
statistics of several parties (or peek at validation/test rows), so the simulator must not do it either.

Options (``dataset.csv.*`` for csv data; the built-in Adult split uses the defaults):

- ``scaling="column"`` standardises each numeric column by its own mean and standard deviation. ``"global"`` uses
  one mean and one standard deviation over *all* of the party's numeric values: for pixel-like columns, where a
  near-constant border pixel standardised on its own turns a single faint stroke into hundreds of standard
  deviations. Both are stored in the same ``mean``/``scale`` lists (one entry per column), so a saved encoder is
  read back the same way whichever was used.
- ``clip`` (a number > 0) clips the standardised numeric values to ``[-clip, clip]``.
- ``impute=True`` fills empty numeric cells with the column's training median and adds a 0/1 indicator column
  (``<column>__missing``) for each column in ``indicators``; empty text cells become the category ``missing``.
  The medians are part of :meth:`state`, so new rows at prediction time are filled exactly as in training.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.preprocessing import OneHotEncoder, StandardScaler

SCALINGS = ("column", "global")
MISSING_CATEGORY = "missing"  # what an empty text cell becomes under dataset.csv.missing=impute
INDICATOR_SUFFIX = "__missing"


class TabularEncoder:
    """Standardise ``numeric`` columns and one-hot ``categorical`` ones; output float32, numeric block first.

    Column order of the output: standardised numeric columns, then the missing-value indicators (``impute`` only),
    then the one-hot blocks. Categories unseen at fit time encode as all-zeros (``handle_unknown='ignore'``): a
    party's val/test rows may hold categories absent from its training rows and must not crash.
    """

    def __init__(self, numeric: list[str], categorical: list[str], *, scaling: str = "column",
                 clip: float | None = None, impute: bool = False, indicators: list[str] | None = None) -> None:
        if scaling not in SCALINGS:
            raise ValueError(f"scaling={scaling!r}: expected one of {SCALINGS}")
        self.numeric = list(numeric)
        self.categorical = list(categorical)
        self.scaling = scaling
        self.clip = None if clip is None else float(clip)
        self.impute = bool(impute)
        self.indicators = [c for c in self.numeric if c in set(indicators or [])] if impute else []
        self.medians: np.ndarray | None = None  # per numeric column, impute only
        self._scaler: StandardScaler | None = None
        self._onehot: OneHotEncoder | None = None
        self.feature_names: list[str] = []

    # -------------------------------------------------------------------------------------------- helpers
    def _numbers(self, frame: pd.DataFrame) -> np.ndarray:
        values = frame[self.numeric].to_numpy(dtype=np.float64)
        if self.medians is not None:  # impute: empty cells take the training median
            values = np.where(np.isnan(values), self.medians[None, :], values)
        return values

    def _texts(self, frame: pd.DataFrame) -> pd.DataFrame:
        texts = frame[self.categorical]
        if self.impute:
            texts = texts.astype(object).where(texts.notna(), MISSING_CATEGORY)
        return texts.astype(str)

    def _names(self) -> list[str]:
        names = list(self.numeric) + [f"{c}{INDICATOR_SUFFIX}" for c in self.indicators]
        if self._onehot is not None:
            for column, cats in zip(self.categorical, self._onehot.categories_, strict=True):
                names += [f"{column}={c}" for c in cats]
        return names

    # -------------------------------------------------------------------------------------------- fit / transform
    def fit(self, frame: pd.DataFrame) -> TabularEncoder:
        """Fit on the party's training rows (medians, then scaling, then categories)."""
        if self.numeric:
            raw = frame[self.numeric].to_numpy(dtype=np.float64)
            if self.impute:
                empty = [c for c, seen in zip(self.numeric, (~np.isnan(raw)).any(axis=0), strict=True) if not seen]
                if empty:
                    raise ValueError(f"column {empty[0]!r} has no value in the training rows, so there is no median "
                                     f"to impute it with; drop the column")
                self.medians = np.nanmedian(raw, axis=0) if len(raw) else np.zeros(len(self.numeric))
            values = self._numbers(frame)
            self._scaler = StandardScaler().fit(values)
            if self.scaling == "global":  # one mean / std over every numeric value of the party
                mean, std = float(values.mean()), float(values.std())
                self._scaler.mean_ = np.full(len(self.numeric), mean)
                self._scaler.scale_ = np.full(len(self.numeric), std if std > 0 else 1.0)
                self._scaler.var_ = self._scaler.scale_ ** 2
        if self.categorical:
            self._onehot = OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float32)
            self._onehot.fit(self._texts(frame))
        self.feature_names = self._names()
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Encode rows with the fitted statistics (float32, one row per input row)."""
        if len(frame) == 0:  # an empty split (tiny CSV files): scikit-learn refuses zero-row inputs
            return np.zeros((0, len(self.feature_names)), dtype=np.float32)
        blocks = []
        if self._scaler is not None:
            z = self._scaler.transform(self._numbers(frame))
            if self.clip is not None:
                z = np.clip(z, -self.clip, self.clip)
            blocks.append(z.astype(np.float32))
        if self.indicators:
            blocks.append(frame[self.indicators].isna().to_numpy().astype(np.float32))
        if self._onehot is not None:
            blocks.append(self._onehot.transform(self._texts(frame)).astype(np.float32))
        if not blocks:
            return np.zeros((len(frame), 0), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(blocks, axis=1), dtype=np.float32)

    def can_fill(self, column: str) -> bool:
        """Whether empty cells of ``column`` are filled (imputation) rather than refused."""
        return self.impute and column in (*self.numeric, *self.categorical)

    # -------------------------------------------------------------------------------------------- saving
    def state(self) -> dict:
        """The fitted encoder as plain lists (JSON- and ``torch.load(weights_only=True)``-safe).

        The keys of the default encoder are the historical ones; ``scaling``, ``clip``, ``impute``, ``medians`` and
        ``indicators`` are added only when they differ from the default, so saved default models do not change.
        """
        state: dict = {
            "numeric": list(self.numeric), "categorical": list(self.categorical),
            "mean": [] if self._scaler is None else [float(v) for v in self._scaler.mean_],
            "scale": [] if self._scaler is None else [float(v) for v in self._scaler.scale_],
            "categories": [] if self._onehot is None else [[str(c) for c in cats] for cats in self._onehot.categories_],
        }
        if self.scaling != "column":
            state["scaling"] = self.scaling
        if self.clip is not None:
            state["clip"] = self.clip
        if self.impute:
            state["impute"] = True
            state["medians"] = [] if self.medians is None else [float(v) for v in self.medians]
            state["indicators"] = list(self.indicators)
        return state

    @classmethod
    def from_state(cls, state: dict) -> TabularEncoder:
        """The encoder :meth:`state` describes, ready to :meth:`transform` new rows as in training."""
        enc = cls(state["numeric"], state["categorical"], scaling=state.get("scaling", "column"),
                  clip=state.get("clip"), impute=bool(state.get("impute", False)),
                  indicators=state.get("indicators"))
        if enc.impute and enc.numeric:
            enc.medians = np.asarray(state["medians"], dtype=np.float64)
        if enc.numeric:
            enc._scaler = StandardScaler()
            enc._scaler.mean_ = np.asarray(state["mean"], dtype=np.float64)
            enc._scaler.scale_ = np.asarray(state["scale"], dtype=np.float64)
            enc._scaler.var_ = enc._scaler.scale_ ** 2
            enc._scaler.n_features_in_ = len(enc.numeric)
        if enc.categorical:
            cats = [np.asarray(c, dtype=object) for c in state["categories"]]
            enc._onehot = OneHotEncoder(categories=cats, handle_unknown="ignore", sparse_output=False,
                                        dtype=np.float32)
            enc._onehot.fit(pd.DataFrame({c: list(v[:1]) for c, v in zip(enc.categorical, cats, strict=True)}))
        enc.feature_names = enc._names()
        return enc

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (len(self.feature_names),)
