"""Score new users with the saved models: ``python -m flwr_vproto.predict <model dir> [--data CSV ...]``.

After training, every party's final model is saved as ``<party>.pt`` (``models/`` in the run directory, or each
SuperNode's ``model-dir``) together with what it needs to score new rows: the run's config, the input shape, the
class names (active party) and, for ``dataset=csv``, the encoders fitted on the party's training rows (scaler and
one-hot categories), so new raw rows are encoded exactly as in training.

Prediction follows training: the parties' new users are aligned by the same ECDH-PSI (:mod:`flwr_vproto.psi`, same
order seed); users every party holds are scored **jointly** (each passive embeds its rows, the active party combines
them as in evaluation), users only the active party holds are scored by its **active-only head**. Only the active
party gets predictions: a CSV of ``id``, ``predicted_class``, ``scored_by`` (``joint`` / ``active_only``) and one
``prob_<class>`` column per class. Users only a passive party holds get nothing. A predictions file is never
overwritten: a path the user names (``--out``, node-config ``prediction-path``) that already exists is refused
before any work; the default name (:data:`OUTPUT_NAMES`) moves on to the next free one (``predictions-2.csv``, ...).

This module runs every party in one process from the saved models (a test bed and a tool for whoever holds all the
models); :mod:`flwr_vproto.query` runs the same steps as a Flower query round, where features and IDs stay with
their parties. Input per party: its rows as a CSV file in its training format (``dataset=csv``: ID column, the same
feature columns, the active party's label column optional), or, with no files, the held-out test users of the
built-in dataset the models were trained on. When the active party's rows carry labels, accuracy is reported too,
and on the held-out test users it equals the test accuracy the training run reported for its last round
(``final.last_round_accuracy`` in ``results.json``; the saved models are the last round's), and on the users only the
active party holds it equals ``final.active_only_accuracy``: those are scored by the active-only model the active
party kept on all its own labelled validation users (:meth:`flwr_vproto.scoring.ActiveScoring.select_active_only`),
which the model file carries.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from flwr_vproto.alignment import psi_align, split_order_seed
from flwr_vproto.config import Config, config_from_dict
from flwr_vproto.data import dataset_classes, load_party
from flwr_vproto.data.csv_files import _user_ids, label_classes, read_party_csv
from flwr_vproto.data.tabular import TabularEncoder
from flwr_vproto.data.types import DataError, PartyData, PartySplits
from flwr_vproto.parties import ActiveParty, PassiveParty, state_from_bytes, state_to_bytes
from flwr_vproto.psi import PSIError
from flwr_vproto.results import format_prediction, write_new

MODEL_FORMAT = 3  # 3: the joint trees' unmixing in the state (issue 28); 2: config lost loss_form; another is refused
SPLIT = "test"  # the new rows sit in this split of the predicting party (train and val are empty)
OUTPUT_NAMES = {"held-out": "predictions-held-out.csv", "file": "predictions.csv"}
"""The default predictions file per source of the new rows (the built-in dataset's held-out test users, or the
parties' CSV files); when it exists the next free name is written, ``predictions-2.csv``, ``predictions-3.csv``, ..."""


# ------------------------------------------------------------------------------------------------ model files
# Party state that training needs and prediction does not; left out of a model file, which may travel further than
# the party's checkpoints: the active party's defences' secret (with it and the rows it received, a passive removes
# the noise), the optimizer's moments (running sums of gradients), which training rows PSI aligned, the privacy
# accountants, and the passives' latest test embeddings the active party kept for scoring.
NOT_FOR_PREDICTION = ("secret", "optimizer", "aligned", "privacy", "gradient_privacy", "kept_test")


def prediction_state(party: ActiveParty | PassiveParty) -> dict[str, Any]:
    """``party``'s state less :data:`NOT_FOR_PREDICTION`: the weights and what scoring fitted (prototypes,
    calibration, the residual's base). :func:`predictor` fills the rest from the rebuilt party's own fresh state."""
    return {k: v for k, v in party.state_dict().items() if k not in NOT_FOR_PREDICTION}


def save_party_model(party: ActiveParty | PassiveParty, path: str | Path) -> Path:
    """Write ``party``'s model with everything prediction needs (config, shapes, classes, encoders) and nothing
    else (:func:`prediction_state`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    active = isinstance(party, ActiveParty)
    pre = party.data.preprocessing
    class_names: list[str] | None = None
    if active:
        class_names = list(pre["class_names"]) if pre and pre.get("class_names") else \
            [str(c) for c in dataset_classes(party.cfg)[1]]
    payload = {
        "format": MODEL_FORMAT, "config": party.cfg.to_dict(), "name": party.data.name,
        "role": party.data.role, "index": party.index, "num_classes": int(party.num_classes),
        "input_shape": [int(s) for s in party.data.input_shape],
        "passive_dims": [int(d) for d in party.passive_dims] if isinstance(party, ActiveParty) else [],
        "class_names": class_names, "preprocessing": pre, "state": prediction_state(party),
    }
    path.write_bytes(state_to_bytes(payload))
    return path


@dataclass
class SavedParty:
    """One party's saved model file, read back."""

    path: Path
    cfg: Config
    name: str
    role: str
    index: int
    num_classes: int
    input_shape: tuple[int, ...]
    passive_dims: list[int]
    class_names: list[str] | None
    preprocessing: dict | None
    state: dict[str, Any] = field(repr=False)


def load_party_model(path: str | Path) -> SavedParty:
    """Read a file written by :func:`save_party_model`, with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"model file not found: {path}")
    try:
        data = state_from_bytes(path.read_bytes())
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise DataError(f"{path}: not a flwr_vproto model file ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
        raise DataError(f"{path}: not a flwr_vproto model file of format {MODEL_FORMAT} (saved by an older "
                        f"version? retrain with runner.save_models=true)")
    return SavedParty(path, config_from_dict(data["config"]), data["name"], data["role"], int(data["index"]),
                      int(data["num_classes"]), tuple(data["input_shape"]), list(data["passive_dims"]),
                      data["class_names"], data["preprocessing"], data["state"])


def load_model_dir(model_dir: str | Path) -> list[SavedParty]:
    """``active.pt`` and every ``passive<k>.pt`` the active model was trained with, active first."""
    model_dir = Path(model_dir)
    active = load_party_model(model_dir / "active.pt")
    joint = active.cfg.method.name in ("vproto", "vanilla")
    passives = [load_party_model(model_dir / f"passive{k}.pt")
                for k in range(1, active.cfg.dataset.num_passive + 1)] if joint else []
    for p in passives:
        if p.cfg.seed != active.cfg.seed or p.cfg.method != active.cfg.method or p.num_classes != active.num_classes:
            raise DataError(f"{p.path} was not trained in the same run as {active.path} (config differs)")
    return [active, *passives]


# ------------------------------------------------------------------------------------------------ new rows
def rows_from_csv(saved: SavedParty, path: str) -> PartyData:
    """A party's new rows from its CSV file, encoded with the encoders it fitted in training."""
    pre = saved.preprocessing
    if not pre or pre.get("kind") != "csv":
        raise DataError(f"{saved.name}: its model was trained on the built-in dataset {saved.cfg.dataset.name!r}, "
                        f"which has no raw-row encoders; leave out the CSV files to score its held-out test users")
    frame = read_party_csv(path)
    ids = _user_ids(frame, path, pre["id_column"])
    enc = TabularEncoder.from_state(pre["encoder"])
    missing = [c for c in enc.numeric + enc.categorical if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: {saved.name} was trained with column(s) {', '.join(map(repr, missing))}, "
                        f"missing here")
    for col in enc.numeric + enc.categorical:
        if frame[col].isna().any() and not enc.can_fill(col):  # imputed models fill them as in training
            raise DataError(f"{path}: column {col!r} has {int(frame[col].isna().sum())} empty value(s)")
    for col in enc.numeric:
        bad = frame[col][pd.to_numeric(frame[col], errors="coerce").isna() & frame[col].notna()]
        if len(bad):
            raise DataError(f"{path}: column {col!r} was numeric in training but has {bad.iloc[0]!r} here")
    data = frame[enc.numeric + enc.categorical].astype({c: "float64" for c in enc.numeric})
    x = enc.transform(data)
    y = None
    if saved.role == "active":
        y = np.full(len(ids), -1, dtype=np.int64)
        label = pre["label_column"]
        if label in frame.columns and frame[label].notna().any():
            names, index = label_classes(frame[label], path, label)
            known = {n: i for i, n in enumerate(saved.class_names or [])}
            unknown = sorted(set(names) - set(known))
            if unknown:
                raise DataError(f"{path}: label(s) {unknown[:5]} in column {label!r} are not among the trained "
                                f"classes {saved.class_names}")
            y = np.array([-1 if pd.isna(v) else known[names[index[v]]] for v in frame[label]], dtype=np.int64)
    return PartyData(ids=ids, x=x, y=y)


def rows_held_out(saved: SavedParty) -> PartyData:
    """The held-out test users of the dataset the model was trained on (this party's share, already encoded)."""
    return load_party(saved.cfg, saved.index).test


def new_rows(saved: SavedParty, path: str | None) -> PartyData:
    """This party's new rows: its CSV file, or (``None``) its held-out test users."""
    rows = rows_held_out(saved) if path is None else rows_from_csv(saved, path)
    if int(np.prod(rows.x.shape[1:])) != int(np.prod(saved.input_shape)):
        raise DataError(f"{saved.name}: new rows have shape {tuple(rows.x.shape[1:])} per user, the model expects "
                        f"{saved.input_shape}")
    return rows


def predictor(saved: SavedParty, rows: PartyData) -> ActiveParty | PassiveParty:
    """The saved party, rebuilt around ``rows`` (its only split with rows is ``test``)."""
    shape = saved.input_shape
    active = saved.role == "active"
    y = rows.y if rows.y is not None else (np.full(len(rows), -1, dtype=np.int64) if active else None)
    empty = PartyData(ids=np.zeros(0, dtype=object), x=np.zeros((0, *rows.x.shape[1:]), dtype=np.float32),
                      y=np.zeros(0, dtype=np.int64) if active else None)
    data = PartySplits(saved.name, saved.role, train=empty, val=empty,
                       test=PartyData(rows.ids, rows.x, y), input_shape=shape, preprocessing=saved.preprocessing)
    with torch.random.fork_rng(devices=[]):
        party: ActiveParty | PassiveParty = (
            ActiveParty(data, saved.cfg, saved.num_classes, saved.passive_dims) if active
            else PassiveParty(data, saved.cfg, saved.index, saved.num_classes))
    party.load_state_dict({**party.state_dict(), **saved.state})  # a model file lacks NOT_FOR_PREDICTION
    return party


def set_rows(party: ActiveParty | PassiveParty, aligned: np.ndarray) -> None:
    """Tell a rebuilt party which of its new rows are aligned, in the shared PSI order."""
    none = np.zeros(0, dtype=np.int64)
    party.set_alignment({"train": none, "val": none, SPLIT: np.asarray(aligned, dtype=np.int64)})


# ------------------------------------------------------------------------------------------------ scoring
@dataclass
class Prediction:
    """The active party's predictions and, where its rows had labels, their accuracy."""

    frame: pd.DataFrame  # id, predicted_class, scored_by, prob_<class>...
    metrics: dict[str, float]
    path: Path | None = None  # where the frame was written as CSV, if it was


def score(active: ActiveParty, passive_embeddings: list[np.ndarray], class_names: list[str]) -> Prediction:
    """Active party: joint prediction for its aligned rows (as in evaluation), the kept active-only model
    (:meth:`flwr_vproto.scoring.ActiveScoring.chosen_only_proba`) for the others."""
    data = active.data.split(SPLIT)
    aligned = active.aligned[SPLIT]
    n = len(data)
    probs = np.full((n, active.num_classes), np.nan, dtype=np.float64)
    how = np.full(n, "", dtype=object)
    if aligned.size:
        probs[aligned] = active.scoring.predict_proba(SPLIT, passive_embeddings)["combined"]
        how[aligned] = "joint" if active.joint else "active_only"
    only = np.setdiff1d(np.arange(n), aligned)
    if only.size and active.uses_local_head:
        probs[only] = active.scoring.chosen_only_proba(SPLIT, only)  # the model kept on all its validation users
        how[only] = "active_only"
    scored = how != ""
    pred = np.full(n, "", dtype=object)
    pred[scored] = [class_names[i] for i in probs[scored].argmax(1)]
    frame = pd.DataFrame({"id": data.ids, "predicted_class": pred, "scored_by": how})
    for c, name in enumerate(class_names):
        frame[f"prob_{name}"] = probs[:, c]
    frame = frame[scored].reset_index(drop=True)
    metrics: dict[str, float] = {"users": float(n), "joint_users": float((how == "joint").sum()),
                                 "active_only_users": float((how == "active_only").sum()),
                                 "unscored_users": float((~scored).sum())}
    y = data.y if data.y is not None else np.full(n, -1)
    for name, rows in (("accuracy", np.flatnonzero(how == ("joint" if active.joint else "active_only"))),
                       ("active_only_accuracy", only)):
        keep = rows[(y[rows] >= 0) & scored[rows]]
        if keep.size and (name == "accuracy" or active.joint):
            metrics[name] = float((probs[keep].argmax(1) == y[keep]).mean())
    return Prediction(frame, metrics)


def align_ids(id_lists: list[np.ndarray], seed: int) -> list[np.ndarray]:
    """PSI over the new users, hub = the active party, same order seed as the training run's test split.

    No user in common is not an error here: every user is then scored by the active party alone.
    """
    if len(id_lists) == 1:
        return [np.zeros(0, dtype=np.int64)]
    try:
        return psi_align(id_lists, split_order_seed(seed, SPLIT), 1)
    except PSIError as err:
        if "empty" not in str(err):
            raise
        return [np.zeros(0, dtype=np.int64) for _ in id_lists]


def output_exists(path: str | Path, what: str) -> DataError:
    """The one-line refusal of an existing predictions file the user named (``what``: how they named it)."""
    return DataError(f"{path}: already exists; predictions never overwrite a file (move it away or choose another "
                     f"{what})")


def check_output(path: str | Path, what: str) -> None:
    """Refuse a named predictions file that already exists, before any work is done."""
    if Path(path).exists() or Path(path).is_symlink():
        raise output_exists(path, what)


def write_predictions(frame: pd.DataFrame, path: str | Path, *, next_free: bool, what: str) -> Path:
    """Write ``frame`` as CSV to a new file: ``path`` or, with ``next_free`` (a default name), the next free name
    beside it. Each name is created atomically (``O_EXCL``), so no other writer's file is ever replaced; a named
    ``path`` that exists by now is refused (:func:`output_exists`). Returns the path written."""
    try:
        return write_new(path, frame.to_csv(index=False), next_free=next_free)
    except FileExistsError:
        if next_free:
            raise
        raise output_exists(path, what) from None


def predict(model_dir: str | Path, data: list[str] | None = None, out: str | Path | None = None, *,
            next_free: bool = False, what: str = "out") -> Prediction:
    """Score new users with the models in ``model_dir``: every party in this process (see the module docstring).

    ``data``: one CSV file per party that took part in training (active first); ``None``: the held-out test users
    of the built-in dataset. ``out``: write the active party's predictions there as CSV (the result's ``path``).
    It is never overwritten: an existing ``out`` is refused before the models are loaded (:class:`DataError`) or,
    with ``next_free`` (``out`` is a default name, e.g. :data:`OUTPUT_NAMES`), the next free name is written.
    ``what``: how the caller named ``out``, for the refusal (``--out`` from the command line).
    """
    if out is not None and not next_free:
        check_output(out, what)
    saved = load_model_dir(model_dir)
    if data is not None and len(data) != len(saved):
        raise DataError(f"{len(data)} data file(s) given, the models need {len(saved)} (active first, then "
                        f"{', '.join(s.name for s in saved[1:]) or 'no passive party'})")
    rows = [new_rows(s, None if data is None else data[i]) for i, s in enumerate(saved)]
    aligned = align_ids([r.ids for r in rows], saved[0].cfg.seed)
    parties = [predictor(s, r) for s, r in zip(saved, rows, strict=True)]
    for p, a in zip(parties, aligned, strict=True):
        set_rows(p, a)
    embeddings = [p.embed(SPLIT) for p in parties[1:]]
    result = score(parties[0], embeddings, saved[0].class_names or [])  # type: ignore[arg-type]
    if out is not None:
        result.path = write_predictions(result.frame, out, next_free=next_free, what=what)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flwr_vproto.predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", help="folder with active.pt and passive<k>.pt (a run directory's models/)")
    ap.add_argument("--data", nargs="+", default=None,
                    help="one CSV per party, active first (default: the built-in dataset's held-out test users)")
    ap.add_argument("--out", default=None,
                    help=f"the active party's predictions (CSV); refused if it exists. Default: "
                         f"{OUTPUT_NAMES['held-out']} (held-out users) or {OUTPUT_NAMES['file']} (--data) in the "
                         f"current folder, or the next free name (predictions-2.csv, ...): nothing is overwritten")
    args = ap.parse_args(argv)
    if args.out is not None and not args.out.strip():
        ap.error("--out: empty path")
    out = args.out or OUTPUT_NAMES["held-out" if args.data is None else "file"]
    try:
        res = predict(args.models, args.data, out, next_free=args.out is None, what="--out")
    except (DataError, PSIError) as err:
        raise SystemExit(f"predict: {err}") from None
    print(format_prediction(res.metrics, res.path))
    return 0


if __name__ == "__main__":
    from flwr_vproto.threads import apply_default_threads

    apply_default_threads()  # one thread unless OMP_NUM_THREADS says otherwise (README "Threads")
    raise SystemExit(main())
