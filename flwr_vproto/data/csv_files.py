"""Real data: one CSV file per party, each with a user-ID column; the active party's file also has the label column.

This is what a deployed SuperNode reads, so :func:`load_csv_party` touches **only its own party's file**:

- **Splits without talking.** A user's split comes from a keyed hash of its ID, ``u = sha256(f"{seed}:{id}")``
  mapped to [0, 1): test if ``u < test_fraction``, validation if ``u < test_fraction + val_fraction``, else train.
  Every party computes the same split for the same user, so a user never trains on one side and tests on another.
  The seed is ``dataset.csv.split_seed``, or the run's ``seed`` when that is null. :func:`split_of` is public so
  that tools that write per-party files (:mod:`flwr_vproto.split_table`) agree with training.
  (``aligned_fraction``, ``nonaligned_shares``, ``active_only_test_fraction`` and ``max_train_users`` describe
  simulated data and are ignored: which users are aligned is whatever the files' IDs overlap in.)
- **Encoding** is fitted on the party's own training rows: numeric columns standardised, text columns one-hot
  (categories unseen in training encode as all zeros). The column type is decided from the whole file.
- **Labels** may be any values; classes are ``dataset.csv.classes`` when set (a label outside them is an error),
  else the sorted unique labels of the active file (numerically sorted when every label is a number). An empty
  label cell means the active party does not know that user's label: ``y = -1`` there, like the non-aligned rows
  of a simulated party without labels. Training and evaluation code must skip ``y == -1`` rows (also in val/test).
- **No silent repair.** Missing files, missing columns, duplicate IDs, empty cells in feature columns, numbers mixed
  with text, label columns on a passive party: each raises :class:`DataError` naming the file, the column and an
  example, and no row is ever dropped. A cell is empty when it is blank or one of pandas' NaN tokens
  (:data:`NA_TOKENS`: ``NA``, ``N/A``, ``NaN``, ``null``, ...), in every column alike; the error lists the tokens it
  saw. ``dataset.csv.missing=impute`` fills empty feature cells instead (numeric: the party's training median plus a
  0/1 indicator column; text: the category ``missing``), the only repair there is, and only when asked for.
  Placeholder words that pandas keeps as text (``?``, ``-``, ``unknown``, ...: :data:`PLACEHOLDERS`) become a
  category like any other; a warning, once per file, names the columns where that happened.
- **Scaling**: ``dataset.csv.scaling`` (``column`` or ``global``) and ``dataset.csv.clip``, see
  :mod:`flwr_vproto.data.tabular`.
- Each party's rows are shuffled (seeded by ``cfg.seed`` and the party index): nothing may rely on the files being
  in the same order.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from flwr_vproto.data.partition import SHUFFLE, rng_for
from flwr_vproto.data.tabular import TabularEncoder
from flwr_vproto.data.types import SPLITS, DataError, PartyData, PartySplits

if TYPE_CHECKING:  # only annotations: config never needs the data package, nor this it
    from flwr_vproto.config import Config
log = logging.getLogger(__name__)

MAX_CATEGORIES = 1000  # more distinct strings than this cannot be a category column
MAX_EXAMPLES = 5
# pandas' default NaN tokens (``pandas.read_csv``'s ``na_values`` documentation), matched after stripping spaces.
# Files are read with them switched off so that the token a cell held can be reported; these exact strings (and the
# blank cell) then become NaN, as pandas would have made them.
NA_TOKENS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                       "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
# Text that usually means "unknown" but that pandas keeps as a string, so it becomes a category (compared
# case-insensitively): worth a warning, not an error (Adult's '?' is a meaningful category there).
PLACEHOLDERS = frozenset({"?", "??", "-", "--", ".", "unknown", "unk", "missing", "none", "nil", "undefined",
                          "not available", "not applicable", "empty", "blank", "#value!", "#ref!", "#div/0!"})
_WARNED: set[str] = set()  # files whose placeholder warning was already given (once per file and process)


def _examples(values: list | np.ndarray | pd.Series) -> str:
    shown = [repr(v) for v in list(values)[:MAX_EXAMPLES]]
    return ", ".join(shown) + (", ..." if len(values) > MAX_EXAMPLES else "")


def read_csv_text(path: str | Path) -> pd.DataFrame:
    """A CSV file exactly as text (no NaN conversion, column names stripped), with one-line errors for a missing,
    empty or unparsable file; shared by the party loader and the split helper."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"CSV file not found: {path}" if not file.exists() else f"not a file: {path}")
    try:
        frame = pd.read_csv(file, dtype=str, skipinitialspace=True, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the CSV file is empty (no header row)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{path}: cannot be parsed as CSV: {err}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if len(frame) == 0:
        raise DataError(f"{path}: the CSV file has a header but no data rows")
    return frame


def read_party_csv_tokens(path: str) -> tuple[pd.DataFrame, dict[str, Counter]]:
    """A party's file as stripped strings with NaN for empty cells, and per column the raw tokens that were empty.

    Empty = blank or one of :data:`NA_TOKENS`, the same cells pandas' defaults read as NaN, so the data is what
    ``pd.read_csv(dtype=str)`` gives; the tokens (``{"f": Counter({"NA": 2, "": 1})}``) let errors say what was seen.
    """
    frame = read_csv_text(path)
    tokens: dict[str, Counter] = {}
    for column in frame.columns:
        values = frame[column].str.strip()
        empty = values.isin(NA_TOKENS)
        if empty.any():
            tokens[column] = Counter(values[empty].tolist())
        frame[column] = values.mask(empty, np.nan)
    return frame, tokens


def read_party_csv(path: str) -> pd.DataFrame:
    """Read a party's file as strings (types are decided per column later), with clear errors for bad files."""
    return read_party_csv_tokens(path)[0]


def _tokens_seen(counts: Counter | None) -> str:
    return ", ".join(repr(t) for t, _ in (counts or Counter()).most_common())


def placeholder_columns(frame: pd.DataFrame, columns: list[str]) -> dict[str, list[str]]:
    """Text columns holding placeholder words (:data:`PLACEHOLDERS`), with the words as written in the file."""
    found: dict[str, list[str]] = {}
    for column in columns:
        distinct = frame[column].dropna().unique()
        words = sorted(str(v) for v in distinct if str(v).strip().lower() in PLACEHOLDERS)
        if words:
            found[column] = words
    return found


def _user_ids(frame: pd.DataFrame, path: str, id_column: str) -> np.ndarray:
    if id_column not in frame.columns:
        raise DataError(f"{path}: no ID column {id_column!r} (dataset.csv.id_column); columns: "
                        f"{_examples(list(frame.columns))}")
    ids = frame[id_column]
    missing = int(ids.isna().sum())
    if missing:
        rows = (np.flatnonzero(ids.isna().to_numpy()) + 2).tolist()  # +2: header line, 1-based lines
        raise DataError(f"{path}: {missing} row(s) have an empty ID in column {id_column!r} (lines {_examples(rows)})")
    duplicated = ids[ids.duplicated(keep=False)].unique()
    if len(duplicated):
        raise DataError(f"{path}: {len(duplicated)} ID(s) appear more than once in column {id_column!r}, e.g. "
                        f"{_examples(duplicated)}; each user must have exactly one row per party")
    return ids.to_numpy(dtype=object)


def _column_kind(values: pd.Series, path: str, column: str, missing_policy: str = "error",
                 tokens: Counter | None = None) -> str:
    """'numeric' or 'categorical', or a DataError for a column that is neither (or has empty cells it may not
    have). Under ``missing_policy='impute'`` the kind is decided from the non-empty cells."""
    missing = int(values.isna().sum())
    if missing and (missing_policy != "impute" or missing == len(values)):
        fix = ("set dataset.csv.missing=impute or fill them" if missing_policy != "impute"
               else "every cell is empty: drop the column")
        raise DataError(f"{path}: column {column!r} has {missing} empty/NaN value(s) of {len(values)} rows (tokens "
                        f"seen: {_tokens_seen(tokens)}); {fix}")
    values = values.dropna()
    numbers = pd.to_numeric(values, errors="coerce")
    not_numbers = values[numbers.isna()]
    if len(not_numbers) == 0:
        infinite = values[~np.isfinite(numbers.to_numpy(dtype=np.float64))]
        if len(infinite):
            raise DataError(f"{path}: column {column!r} has {len(infinite)} infinite value(s), e.g. "
                            f"{infinite.iloc[0]!r}")
        return "numeric"
    if len(not_numbers) < len(values) / 2:
        placeholders = sorted({v for v in not_numbers if v.strip().lower() in PLACEHOLDERS})
        hint = (f"; {', '.join(map(repr, placeholders))} look(s) like a missing-value marker: make those cells "
                f"empty and set dataset.csv.missing=impute" if placeholders else "")
        raise DataError(f"{path}: column {column!r} looks numeric but {len(not_numbers)} value(s) are not numbers, "
                        f"e.g. {not_numbers.iloc[0]!r}; fix them, or quote a category column consistently{hint}")
    distinct = values.nunique()
    if distinct > MAX_CATEGORIES or (distinct > 20 and distinct > len(values) / 2):
        raise DataError(f"{path}: column {column!r} is neither numeric nor categorical: {distinct} distinct text "
                        f"values in {len(values)} rows (free text or an identifier?), e.g. {values.iloc[0]!r}; "
                        f"drop it or encode it as numbers")
    return "categorical"


def _canonical_number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def label_classes(
    labels: pd.Series, path: str, label_column: str, classes: Sequence[str | int] | None = None
) -> tuple[list[str], dict[str, int]]:
    """Class names and a map from each raw label string to its class index.

    ``classes`` (``dataset.csv.classes``) fixes the class set and its order; a label outside it is an error naming
    the file, the column and the value. Without it the classes are the sorted distinct labels (numerically sorted
    when every label is a number: ``"1"`` and ``"1.0"`` are one class).
    """
    present = labels.dropna().unique().tolist()
    if not present:
        raise DataError(f"{path}: label column {label_column!r} has no values")
    if classes is not None:
        names = [str(c).strip() for c in classes]
        numeric_names = pd.to_numeric(pd.Series(names), errors="coerce")
        by_number = ({_canonical_number(v): i for i, v in enumerate(numeric_names.tolist())}
                     if not numeric_names.isna().any() else {})
        index: dict[str, int] = {}
        for raw in present:
            if str(raw) in names:
                index[raw] = names.index(str(raw))
                continue
            number = pd.to_numeric(pd.Series([raw]), errors="coerce").iloc[0]
            key = None if pd.isna(number) else _canonical_number(number)
            if key is None or key not in by_number:
                raise DataError(f"{path}: column {label_column!r} has the label {raw!r}, which is not one of the "
                                f"classes {names} (dataset.csv.classes)")
            index[raw] = by_number[key]
        return names, index
    numbers = pd.to_numeric(pd.Series(present), errors="coerce")
    if not numbers.isna().any():  # every label is a number: order by value, "1" and "1.0" are one class
        names = [_canonical_number(v) for v in sorted(set(numbers.tolist()))]
        index = {raw: names.index(_canonical_number(v)) for raw, v in zip(present, numbers.tolist(), strict=True)}
    else:
        names = sorted(str(v) for v in present)
        index = {raw: names.index(str(raw)) for raw in present}
    if len(names) < 2:
        raise DataError(f"{path}: label column {label_column!r} has a single class {names[0]!r}; need at least 2")
    return names, index


def split_of(ids: np.ndarray | list, seed: int, test_fraction: float, val_fraction: float) -> np.ndarray:
    """Split name of each user, from a keyed hash of its ID: the same on every party, with no communication.

    ``u = sha256(f"{seed}:{id}")`` read as a number in [0, 1): ``test`` if ``u < test_fraction``, ``val`` if
    ``u < test_fraction + val_fraction``, else ``train``. IDs are the stripped strings of the ID column. Public:
    whoever prepares per-party files (:mod:`flwr_vproto.split_table`) must use this very function.
    """
    u = np.array([int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") / 2.0**64
                  for i in ids], dtype=np.float64)
    return np.where(u < test_fraction, "test", np.where(u < test_fraction + val_fraction, "val", "train"))


def split_seed(cfg: Config) -> int:
    """The seed of the keyed-hash split: ``dataset.csv.split_seed``, else the run's seed."""
    s = cfg.dataset.csv.split_seed
    return cfg.seed if s is None else int(s)


def csv_classes(cfg: Config) -> tuple[int, list[str]]:
    """Number of classes and class names, read from the active party's file (only it knows the labels)."""
    c = cfg.dataset.csv
    path = c.paths[0]
    frame = read_party_csv(path)
    if c.label_column not in frame.columns:
        raise DataError(f"{path}: the active party's file has no label column {c.label_column!r} "
                        f"(dataset.csv.label_column); columns: {_examples(list(frame.columns))}")
    names, _ = label_classes(frame[c.label_column], path, c.label_column, c.classes)
    return len(names), names


def _warn_placeholders(frame: pd.DataFrame, path: str, categorical: list[str]) -> None:
    """One warning per file: text columns in which a placeholder word became an ordinary category."""
    found = placeholder_columns(frame, categorical)
    if found and path not in _WARNED:
        _WARNED.add(path)
        listed = "; ".join(f"{col!r}: {', '.join(map(repr, words))}" for col, words in found.items())
        log.warning("%s: placeholder value(s) kept as a category (%s); if they mean 'unknown', make those cells "
                    "empty and set dataset.csv.missing=impute, or fill them", path, listed)


def load_csv_party(cfg: Config, party_index: int) -> PartySplits:
    """Party ``party_index``'s data (0 = active) from its own CSV file only; see the module docstring."""
    c = cfg.dataset.csv
    path = c.paths[party_index]
    active = party_index == 0
    frame, tokens = read_party_csv_tokens(path)
    ids = _user_ids(frame, path, c.id_column)

    y_all: np.ndarray | None = None
    class_names: list[str] | None = None
    if active:
        if c.label_column not in frame.columns:
            raise DataError(f"{path}: the active party's file has no label column {c.label_column!r} "
                            f"(dataset.csv.label_column); columns: {_examples(list(frame.columns))}")
        class_names, index = label_classes(frame[c.label_column], path, c.label_column, c.classes)
        y_all = np.array([-1 if pd.isna(v) else index[v] for v in frame[c.label_column]], dtype=np.int64)
    elif c.label_column in frame.columns:
        raise DataError(f"{path}: passive party {party_index} has the label column {c.label_column!r}; labels must "
                        f"live on the active party only (rename the column if it is a feature)")

    features = [col for col in frame.columns if col not in (c.id_column, c.label_column)]
    if not features:
        raise DataError(f"{path}: no feature columns besides the ID{' and label' if active else ''} column")
    kinds = {col: _column_kind(frame[col], path, col, c.missing, tokens.get(col)) for col in features}
    numeric = [col for col in features if kinds[col] == "numeric"]
    categorical = [col for col in features if kinds[col] == "categorical"]
    _warn_placeholders(frame, path, categorical)
    data = frame[features].astype({col: "float64" for col in numeric})

    split = split_of(ids, split_seed(cfg), cfg.dataset.test_fraction, cfg.dataset.val_fraction)
    rows = {}
    for s, name in enumerate(SPLITS):
        rows[name] = rng_for(cfg.seed, SHUFFLE, party_index, s).permutation(np.flatnonzero(split == name))
    if len(rows["train"]) == 0:
        raise DataError(f"{path}: none of its {len(ids)} users falls in the training split; the file needs more rows")
    impute = c.missing == "impute"
    encoder = TabularEncoder(numeric, categorical, scaling=c.scaling, clip=c.clip, impute=impute,
                             indicators=[col for col in numeric if data[col].isna().any()] if impute else None)
    try:
        encoder.fit(data.iloc[rows["train"]])
    except ValueError as err:  # imputation: a column with no value in the training rows
        raise DataError(f"{path}: {err} (dataset.csv.missing=impute)") from None

    def part(name: str) -> PartyData:
        r = rows[name]
        return PartyData(ids=ids[r].astype(object), x=encoder.transform(data.iloc[r]),
                         y=None if y_all is None else y_all[r], y_true=None)

    return PartySplits(
        name="active" if active else f"passive{party_index}",
        role="active" if active else "passive",
        train=part("train"), val=part("val"), test=part("test"),
        input_shape=encoder.input_shape, feature_names=list(encoder.feature_names),
        preprocessing={"kind": "csv", "id_column": c.id_column, "label_column": c.label_column,
                       "encoder": encoder.state(),
                       "class_names": class_names},
    )
