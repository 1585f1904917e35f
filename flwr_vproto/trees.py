"""Tree baselines: LightGBM on the same users, columns, validation and test split as every method (design §6).

What a practitioner would train before joining (or instead of) a vertical federation, each early-stopped on the
validation users' log-loss, with a small hyper-parameter grid chosen on the validation users:

* ``gbdt_local``: the active party's columns, every user whose label it knows (aligned and its own non-aligned
  users): what the bank reaches alone.
* ``gbdt_aligned``: every party's columns on the aligned users only: what a lossless vertical tree protocol
  (SecureBoost, as FATE and SecretFlow run it) reaches, since it trains exactly the trees of this joined table.
* ``gbdt_centralized``: every column and every labelled training user in one place (the ``centralized`` view).

``gbdt_aligned`` and ``gbdt_centralized`` join every party's raw rows in one process, so, like ``centralized``,
they exist only in simulation (``engine=inprocess``); so does ``gbdt_local`` (a harness baseline, not a protocol).
Validation users and test users are those every party holds, as for every method (the test score is on the users
every party holds). Features are each party's encoded columns (one-hot categories, scaled numbers; image strips
flattened to pixels). LightGBM is a dependency (the default active-only head on tables, ``method.head``).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Mapping
from itertools import product
from typing import Any

import numpy as np

from flwr_vproto.config import Config
from flwr_vproto.data.types import SPLITS, DataError, PartySplits, VerticalDataset
from flwr_vproto.method.scores import classification_scores
from flwr_vproto.results import build_results, round_record
from flwr_vproto.threads import DEFAULT_THREADS

RoundCallback = Callable[[dict[str, float]], None]
TREE_METHODS = ("gbdt_local", "gbdt_aligned", "gbdt_centralized")
LEARNING_RATE = 0.05
NUM_LEAVES = (4, 16, 64)
MIN_CHILD_SAMPLES = (5, 20, 50)
MAX_TREES = 2000
EARLY_STOPPING = 50  # trees without a better validation log-loss before a setting stops

Split = tuple[np.ndarray, np.ndarray]  # (features, labels)


def grid() -> list[dict[str, int]]:
    """The hyper-parameter settings tried, in order (``round`` k of the history is setting k)."""
    return [{"num_leaves": nl, "min_child_samples": mcs} for nl, mcs in product(NUM_LEAVES, MIN_CHILD_SAMPLES)]


def lightgbm_threads() -> int:
    """The project's thread policy (:mod:`flwr_vproto.threads`): the job's ``OMP_NUM_THREADS`` (the user's, or what
    ``runner.threads`` / a launcher's share / the default bound), else :data:`DEFAULT_THREADS`."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else DEFAULT_THREADS


def _flat(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)


def _shared_rows(active: PartySplits, passives: list[PartySplits], split: str) -> np.ndarray:
    """Rows of the active party's ``split`` whose user every passive holds too."""
    from flwr_vproto.data.load import held_by

    keep = np.ones(len(active.split(split)), dtype=bool)
    for p in passives:
        keep &= held_by(active.split(split).ids, p.split(split).ids)
    return np.flatnonzero(keep)


def local_view(ds: VerticalDataset) -> dict[str, Split]:
    """The active party's columns: every labelled training user; validation and test users every party holds."""
    a = ds.active
    out: dict[str, Split] = {}
    for s in SPLITS:
        rows = np.arange(len(a.split(s))) if s == "train" else _shared_rows(a, ds.passives, s)
        x, y = _flat(a.split(s).x[rows]), np.asarray(a.split(s).y)[rows]
        out[s] = (x[y >= 0], y[y >= 0].astype(np.int64))
    return out


def joined_view(cfg: Config, ds: VerticalDataset, all_rows: bool) -> dict[str, Split]:
    """Every party's columns. ``all_rows=False``: the users every party holds (training: the aligned users);
    ``all_rows=True``: the ``centralized`` view (every labelled training user; see
    :func:`flwr_vproto.data.load.csv_central_view` for csv files)."""
    from flwr_vproto.data.load import csv_central_view

    if all_rows:
        c = ds.central if ds.central is not None else csv_central_view(cfg, ds.parties, all_rows=True)
    else:
        c = csv_central_view(cfg, ds.parties)
    return {s: (_flat(c.x[s]), c.y[s]) for s in SPLITS}


def tree_view(cfg: Config, ds: VerticalDataset) -> dict[str, Split]:
    """The rows and columns of ``cfg.method.name`` (one of :data:`TREE_METHODS`)."""
    name = cfg.method.name
    view = local_view(ds) if name == "gbdt_local" else joined_view(cfg, ds, all_rows=name == "gbdt_centralized")
    for s in SPLITS:
        if len(view[s][1]) == 0:
            raise DataError(f"method {name}: no labelled {s} user in its view of the data")
    return view


def _params(cfg: Config, num_classes: int, setting: dict[str, int]) -> dict[str, Any]:
    return {**_params_seeded(cfg.seed, num_classes, setting), "num_threads": lightgbm_threads()}


def _probs(booster: Any, x: np.ndarray, num_classes: int) -> np.ndarray:
    p = np.asarray(booster.predict(x, num_iteration=booster.best_iteration))
    return np.column_stack([1 - p, p]) if num_classes == 2 else p


def fit_setting(cfg: Config, view: dict[str, Split], num_classes: int, setting: dict[str, int]
                ) -> tuple[Any, dict[str, dict[str, float]]]:
    """One grid setting, early-stopped on the validation users: the booster and its val/test scores."""
    import lightgbm as lgb

    (xt, yt), (xv, yv) = view["train"], view["val"]
    train = lgb.Dataset(xt, yt, params={"verbosity": -1})
    booster = lgb.train(_params(cfg, num_classes, setting), train, num_boost_round=MAX_TREES,
                        valid_sets=[lgb.Dataset(xv, yv, reference=train)],
                        callbacks=[lgb.early_stopping(EARLY_STOPPING, verbose=False)])
    scores = {s: classification_scores(_probs(booster, view[s][0], num_classes), view[s][1], num_classes)
              for s in ("val", "test")}
    return booster, scores


def run_trees(cfg: Config, ds: VerticalDataset, on_round: RoundCallback | None = None) -> dict[str, Any]:
    """Train every grid setting; return ``results.json`` content. History record k is setting k; ``final`` is the
    setting with the best validation accuracy (ties: the lower validation loss), as for every method's rounds."""
    view = tree_view(cfg, ds)
    history = []
    for k, setting in enumerate(grid(), start=1):
        t0 = time.perf_counter()
        booster, scores = fit_setting(cfg, view, ds.num_classes, setting)
        rec = round_record(k, {**setting, "trees": booster.best_iteration or booster.current_iteration()}, [],
                           scores["val"], scores["test"], time.perf_counter() - t0)
        history.append(rec)
        if on_round:
            on_round(rec)
    rows = {s: len(view[s][1]) for s in SPLITS}
    aligned = {s: len(_shared_rows(ds.active, ds.passives, s)) for s in SPLITS}
    found = {"aligned": aligned, "rows": {p.name: {s: len(p.split(s)) for s in SPLITS} for p in ds.parties}}
    trees = {"library": "lightgbm", "learning_rate": LEARNING_RATE, "max_trees": MAX_TREES,
             "early_stopping": EARLY_STOPPING, "settings": len(history), "rows": rows,
             "columns": int(view["train"][0].shape[1]), "threads": lightgbm_threads()}
    return build_results(cfg, history, extra={"trees": trees, "alignment": found})


def describe_setting(results: Mapping[str, Any], best_round: int) -> str:
    """``num_leaves 16, min_child_samples 20, 212 trees``: the selected setting, for the closing summary."""
    rec: Mapping[str, float] = next((r for r in results.get("rounds") or [] if int(r["round"]) == best_round), {})
    return ", ".join(f"{k} {int(rec[f'active/{k}'])}" for k in ("num_leaves", "min_child_samples", "trees")
                     if f"active/{k}" in rec)


# ------------------------------------------------------------------------------------------------ tree head
HEAD_THREADS = 1
"""Threads of the active party's tree head (``method.head=gbdt``): one, whatever the job's share, so the booster, and
with it every joint logit built on its margin, is the same bit for bit in the in-process trainer and in a Flower
ClientApp whose thread budget differs (LightGBM's ``deterministic`` holds for a fixed thread count only)."""


def fit_head(train: Split, val: Split, num_classes: int, seed: int) -> Any:
    """``method.head=gbdt``: the active party's active-only head as LightGBM on its own columns and every labelled
    training row it holds (``train``), early-stopped on its labelled validation rows (``val``), over :func:`grid`;
    the setting with the lowest validation log-loss wins (the head is a base margin the joint model corrects, so its
    calibration matters more than its accuracy). Returns the booster."""
    if len(val[1]) == 0:
        raise ValueError("method.head=gbdt: the active party has no labelled validation row to early-stop on")
    return _fit_on_validation(train, val, num_classes, seed)[0]


def fit_joint(train: Split, val: Split, base: tuple[np.ndarray, np.ndarray], num_classes: int, seed: int,
              setting: dict[str, int] | None = None) -> tuple[Any, dict[str, int]] | None:
    """``method.research.joint_trees``: LightGBM on the aligned users' [active columns, passives' embeddings and their
    independent components (:func:`fit_unmixing`)], boosting from the tree head's margin of the same rows (``base``:
    the training and validation rows' ``(n, C)`` logits, :func:`head_margin`), early-stopped and chosen on the
    aligned validation rows as :func:`fit_head` is. The trees a lossless SecureBoost would grow on these users,
    except that they start from what the active party's own rows already say and see each passive through the
    embedding it sent, never its columns. ``setting``: fit that one setting instead of searching :func:`grid` (a
    refit on moved embeddings keeps the first fit's choice, at a ninth of the cost). Returns the booster (its margin
    is added to the base: :func:`joint_margin`) and its setting; ``None`` without a labelled row in either split."""
    if len(train[1]) == 0 or len(val[1]) == 0:
        return None
    return _fit_on_validation(train, val, num_classes, seed, base, None if setting is None else [setting])


def _fit_on_validation(train: Split, val: Split, num_classes: int, seed: int,
                       base: tuple[np.ndarray, np.ndarray] | None = None,
                       settings: list[dict[str, int]] | None = None) -> tuple[Any, dict[str, int]]:
    """Every setting of ``settings`` (default :func:`grid`), each early-stopped on ``val``'s log-loss (from
    ``base``'s margins when given); the booster with the lowest validation log-loss and its setting. One thread
    (:data:`HEAD_THREADS`)."""
    import lightgbm as lgb

    (xt, yt), (xv, yv) = train, val
    init = (None, None) if base is None else tuple(_init_score(b, num_classes) for b in base)
    best: tuple[float, Any, dict[str, int]] | None = None
    for setting in grid() if settings is None else settings:
        params = {**_params_seeded(seed, num_classes, setting), "num_threads": HEAD_THREADS}
        train_set = lgb.Dataset(xt, yt, init_score=init[0], params={"verbosity": -1})
        booster = lgb.train(params, train_set, num_boost_round=MAX_TREES,
                            valid_sets=[lgb.Dataset(xv, yv, init_score=init[1], reference=train_set)],
                            callbacks=[lgb.early_stopping(EARLY_STOPPING, verbose=False)])
        probs = (_probs(booster, xv, num_classes) if base is None
                 else _softmax(head_margin(booster, xv, num_classes) + base[1]))
        loss = classification_scores(probs, yv, num_classes)["loss"]
        if best is None or loss < best[0]:
            best = (loss, booster, setting)
    assert best is not None
    return best[1], best[2]


def _init_score(logits: np.ndarray, num_classes: int) -> np.ndarray:
    """LightGBM's ``init_score`` of ``(n, C)`` logits as :func:`head_margin` gives them (binary: the margin only)."""
    logits = np.asarray(logits, dtype=np.float64)
    return logits[:, 1] - logits[:, 0] if num_classes == 2 else logits


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _params_seeded(seed: int, num_classes: int, setting: dict[str, int]) -> dict[str, Any]:
    multi = num_classes > 2
    return {"objective": "multiclass" if multi else "binary", **({"num_class": num_classes} if multi else {}),
            "metric": "multi_logloss" if multi else "binary_logloss", "learning_rate": LEARNING_RATE,
            **setting, "seed": seed, "deterministic": True, "force_col_wise": True, "verbosity": -1}


def head_margin(booster: Any, x: np.ndarray, num_classes: int) -> np.ndarray:
    """The tree head's logits of rows ``x``, ``(n, num_classes)`` float32: the raw margin (binary: ``[0, m]``, whose
    softmax is the booster's probability); ``booster`` as :func:`head_from_bytes` loads it (its early-stopped trees
    only)."""
    m = np.asarray(booster.predict(_flat(x), raw_score=True), dtype=np.float64)
    if num_classes == 2:
        m = np.column_stack([np.zeros(len(m)), m])
    return m.reshape(len(x), num_classes).astype(np.float32)


UNMIXED_COMPONENTS = 16
"""How many independent components of each passive's embedding the joint trees see beside it (:func:`fit_unmixing`)."""

Unmixing = tuple[np.ndarray, np.ndarray]  # (mean ``(d,)``, components ``(k, d)``), float64: z -> (z - mean) @ comps.T


def fit_unmixing(z: np.ndarray, seed: int, components: int = UNMIXED_COMPONENTS) -> Unmixing | None:
    """Independent components of a passive's embedding for the joint trees: FastICA (scikit-learn) fitted on the aligned
    training users' embeddings ``z``, no label. The trees split one axis at a time, and the embedding spreads what a
    single column says (adult's capital-gain, a heavy-tailed source) over many of its dimensions; the independent
    components of a non-Gaussian mixture put such a source back on an axis of its own. On adult they win back a
    small, steady part of what the embedding loses against raw columns (BENCHMARKS §1, "Independent components for
    the joint trees"). At most ``components`` (:data:`UNMIXED_COMPONENTS`), fewer than the rows and no more than the
    embedding's rank; ``None`` where that leaves none or the fit is not finite (the trees then see the embedding
    alone). One BLAS thread and ``seed``, so the same embeddings give the same matrix in every process."""
    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    z = np.asarray(z, dtype=np.float64)
    with threadpool_limits(limits=HEAD_THREADS):
        rank = int(np.linalg.matrix_rank(z - z.mean(axis=0))) if len(z) > 1 else 0
        k = min(components, rank, len(z) - 1)
        if k < 1:
            return None
        with warnings.catch_warnings():  # not converged in max_iter: still a linear map the trees may use or not
            warnings.simplefilter("ignore", ConvergenceWarning)
            ica = FastICA(n_components=k, whiten="unit-variance", max_iter=1000, random_state=seed).fit(z)
    mean, unmix = np.asarray(ica.mean_, dtype=np.float64), np.asarray(ica.components_, dtype=np.float64)
    return (mean, unmix) if np.isfinite(mean).all() and np.isfinite(unmix).all() else None


def unmixed(z: np.ndarray, unmixing: Unmixing) -> np.ndarray:
    """The independent components of embeddings ``z`` (:func:`fit_unmixing`), ``(n, k)`` float32."""
    mean, components = unmixing
    return ((np.asarray(z, dtype=np.float64) - mean) @ components.T).astype(np.float32)


def joint_margin(booster: Any, x: np.ndarray, base: np.ndarray, num_classes: int) -> np.ndarray:
    """The joint trees' logits of rows ``x``: ``base`` (the tree head's logits of the same rows) plus the booster's
    margin, ``(n, num_classes)`` float32 (:func:`fit_joint`)."""
    return np.asarray(base, dtype=np.float32) + head_margin(booster, x, num_classes)


def head_to_bytes(booster: Any) -> bytes:
    """The booster as text (LightGBM's model string) up to its early-stopped iteration, for the party's state: a
    fresh process loads it (no refit), and the process that fitted it scores through the same loaded copy."""
    return str(booster.model_to_string(num_iteration=booster.best_iteration or -1)).encode()


def head_from_bytes(data: bytes) -> Any:
    import lightgbm as lgb

    return lgb.Booster(model_str=data.decode())
