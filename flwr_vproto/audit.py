"""Label-leakage audit: what an honest-but-curious passive party can infer about the labels of the users it shares
with the active party, from what it legitimately receives. No Flower here.

Threat model. A passive follows the protocol but is curious: it knows the whole run config (``seed`` included),
keeps every message of every round, holds its own features of the aligned users, and may know a few of their labels
from elsewhere. A privacy claim is judged against that attacker: averaged over every round it kept, and as its
*advantage over what its own features already tell it* (features alone often predict the label).

Each round a joint passive receives one gradient row per aligned training user (dLoss/dz of the embedding it sent,
in the same shared order every round) and, when its third loss is on, the second prototypes (plus gates and flags).
The attacks scored here:

* **per round** (:func:`attack`), those of Li et al., "Label Leakage and Protection in Two-party Split Learning"
  (ICLR 2022), on one round's rows:

  - **norm** (binary): the L2 norm of each row. With imbalanced classes the rarer class's rows are larger.
  - **direction** (binary): the cosine between each row and the largest-norm row; the two classes point opposite.
  - **projection** (binary; stronger under noise): each row's coordinate on the rows' top principal direction. The
    label lives in a few directions and isotropic noise spreads over all, so this reads labels through noise that
    hides them from the two above (BENCHMARKS.md §8).
  - **cluster** (any number of classes): k-means (k = classes) on the unit rows, clusters matched to classes
    (Hungarian), next to the majority share.

* **multi-round** (:func:`multiround_attack`): a user's rows of different rounds share its label while fresh noise
  is independent across rounds, so the mean over ``n`` rounds keeps the signal and divides the noise's variance by
  ``n``. Scored as the projection/direction attack on the mean of the first ``n`` kept rounds, and as the projection
  of the concatenated rows (``n x rounds*d``: no assumption that the label direction stays put across rounds).
* **known labels** (:func:`known_label_attack`): with ``m`` labels the passive fits a logistic regression on its
  own features plus the round-averaged rows and predicts the rest; reported next to the same model on its features
  only, so the number that matters — the advantage the messages give — is explicit.
* **second prototypes** (:func:`prototype_attacks`, ``method=vproto_seed``): the passive holds its own embeddings of
  the aligned users (it computed them) and each round's prototypes, the class means of those embeddings. It scores
  **nearest prototype** (each user's distance to every class prototype, averaged over all rounds kept) and
  **inversion** (solve ``sum_i a_ic z_i = n_c p_c`` for every round at once, the class sizes ``n_c`` themselves
  solved from the mean embedding, min-norm least squares; each user takes the class with the largest ``a_ic``):
  with clear prototypes and enough rounds the second reads every label. Reported next to the known-label baseline
  on features only (a passive that knows ``m`` labels and receives nothing).
* **replay** (:func:`replay_attack`): noise drawn from a generator the run config determines can be regenerated and
  subtracted. The replay fits the scale of the old code's noise streams (constants below) to the received rows; a
  working replay finds a large scale and reads the labels off the residual.

The attacker does not know which end of a label-free score is "positive", so those AUCs are ``max(AUC, 1 - AUC)``:
0.5 means nothing leaks, 1.0 means every label can be read off. With few users even a leak-free attack scores above
0.5, so every attack is also run against a fixed shuffle of the labels (``*_chance``): the level that means
"nothing found". ``strongest_auc`` is the largest AUC of every label-free attack (per round, multi-round, replay;
``strongest_accuracy``, of k-means, for multi-class);
``strongest_chance`` is the largest AUC of the same attacks against the shuffle, so a claim reads
"strongest_auc <= strongest_chance + 0.05".

Recording: with ``audit.record=true`` the active party (which knows what it sends, and the true labels) writes one
``round-<r>.npz`` per round that releases gradients (:func:`record_round`); each passive's own view — everything it
received (:func:`record_received`) and its features of the aligned users (:func:`record_features`) — goes to
``passive<k>/``. The folder stays with the active party. ``python -m flwr_vproto.audit <run dir>`` scores it (and
adds the summary to ``results.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LABELS = "labels"  # npz entry: true labels of the aligned training users (shared order), for scoring only
CHANNEL = "channel."  # round-<r>.npz entries with this prefix: other things the active party released that round
EMBEDDINGS = "embeddings"  # passive<k>/embeddings-<r>.npz entry: what passive k sent in round r (aligned training)
FEATURES = "features"  # passive<k>/features.npz entry: the passive's own features of the aligned training users
_ROUND_FILE = re.compile(r"^round-(\d+)\.npz$")
_RECEIVED_FILE = re.compile(r"^received-(\d+)\.npz$")
_EMBEDDINGS_FILE = re.compile(r"^embeddings-(\d+)\.npz$")
_PASSIVE_DIR = re.compile(r"^passive(\d+)$")

MULTIROUND_KEPT = (1, 2, 5, 10)  # rounds kept by the multi-round attacker (plus "all"), those available
KNOWN_LABELS = (20, 50, 100)  # labels the known-label attacker holds
KNOWN_DRAWS = 5  # random draws of the known users, averaged
KNOWN_C = 0.1  # the known-label model's inverse regularisation: few labels, many inputs
_KNOWN_STREAM = 0x4B4E  # the draws of known users (fixed: the audit is reproducible)

# The noise streams of earlier versions, seeded from the run config alone (so a passive could regenerate them).
# Kept here, not imported from defences.py, which no longer has them.
OLD_GRADIENT_STREAM = 0x6AD  # np.random.default_rng([seed, 0x6AD, rnd, passive]): the old gradient noise
OLD_PROTOTYPE_OFFSET = 2  # torch.Generator().manual_seed(round_seed(seed, 0, rnd) + 2): the old DP-prototype noise


# ------------------------------------------------------------------------------------------------ attacks
def norm_scores(gradients: np.ndarray) -> np.ndarray:
    """The norm attack's score of each row: its L2 norm."""
    return np.linalg.norm(np.asarray(gradients, dtype=np.float64), axis=1)


def direction_scores(gradients: np.ndarray) -> np.ndarray:
    """The direction attack's score of each row: cosine similarity to the largest-norm row."""
    g = np.asarray(gradients, dtype=np.float64)
    norms = np.linalg.norm(g, axis=1)
    ref = g[int(np.argmax(norms))]
    return g @ ref / np.maximum(norms * np.linalg.norm(ref), 1e-30)


def projection_scores(gradients: np.ndarray) -> np.ndarray:
    """The projection attack's score of each row: its coordinate on the top principal direction of the centred rows.

    Wide inputs (the stacked rows of many rounds) use a randomised SVD with a fixed seed: the same direction up to
    sign for a fraction of the time of a full one.
    """
    g = np.asarray(gradients, dtype=np.float64)
    centred = g - g.mean(axis=0)
    return centred @ _top_directions(centred, 1)[0]


def _top_directions(centred: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` top right singular vectors of ``centred`` (rows of the result): from the ``d x d`` scatter matrix when
    narrow (far cheaper than an SVD of thousands of rows), else a randomised SVD with a fixed seed."""
    if centred.shape[1] <= 256:
        values, vectors = np.linalg.eigh(centred.T @ centred)
        return vectors[:, ::-1][:, :k].T
    from sklearn.utils.extmath import randomized_svd

    return randomized_svd(centred, n_components=k, n_iter=7, random_state=0)[2]


def leak_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """``max(AUC, 1 - AUC)`` of ``scores`` for the binary ``labels``; NaN when only one class is present."""
    labels = np.asarray(labels)
    if np.unique(labels).size != 2:
        return math.nan
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(labels == labels.max(), np.asarray(scores, dtype=np.float64)))
    return max(auc, 1.0 - auc)


def cluster_accuracy(gradients: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0) -> float:
    """Accuracy of k-means clusters of the unit-normalised rows, each cluster matched to one class (Hungarian)."""
    return _matched_accuracy(_clusters(gradients, num_classes, seed), labels, num_classes)


def _clusters(gradients: np.ndarray, num_classes: int, seed: int = 0) -> tuple[np.ndarray, int] | None:
    """k-means assignment of the unit rows and the number of clusters (None when the rows allow fewer than 2).
    Label-free, so one fit serves the true labels and their shuffle."""
    from sklearn.cluster import KMeans

    g = np.asarray(gradients, dtype=np.float64)
    unit = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-30)
    k = min(num_classes, len({row.tobytes() for row in unit}))  # distinct rows (np.unique on rows is slow)
    if k < 2:
        return None
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(unit), k


def _matched_accuracy(clusters: tuple[np.ndarray, int] | None, labels: np.ndarray, num_classes: int) -> float:
    from scipy.optimize import linear_sum_assignment

    if clusters is None:
        return majority_share(labels)
    assign, k = clusters
    agree = np.zeros((k, num_classes))
    np.add.at(agree, (assign, np.asarray(labels)), 1)
    rows, cols = linear_sum_assignment(-agree)
    return float(agree[rows, cols].sum() / len(labels))


def majority_share(labels: np.ndarray) -> float:
    """Accuracy of always guessing the most frequent class: what a passive knows without any gradient."""
    labels = np.asarray(labels)
    return float(np.bincount(labels).max() / len(labels)) if labels.size else math.nan


def _shuffle(y: np.ndarray) -> np.ndarray:
    """The fixed shuffle of the labels every attack is also scored against (its chance level)."""
    return np.random.default_rng(0).permutation(y)


def attack(gradients: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Every applicable attack on one passive's gradient rows of one round (users with unknown labels skipped)."""
    labels = np.asarray(labels)
    known = labels >= 0
    g, y = np.asarray(gradients)[known], labels[known]
    shuffled = _shuffle(y)  # the same attacks with nothing to find: their chance level
    clusters = _clusters(g, num_classes)
    out = {"cluster_accuracy": _matched_accuracy(clusters, y, num_classes), "majority_share": majority_share(y),
           "cluster_chance": _matched_accuracy(clusters, shuffled, num_classes)}
    if num_classes == 2:
        scores = {"norm": norm_scores(g), "direction": direction_scores(g), "projection": projection_scores(g)}
        out.update({f"{name}_auc": leak_auc(score, y) for name, score in scores.items()})
        out["auc_chance"] = max(leak_auc(score, shuffled) for score in scores.values())
    return out


def _label_free(g: np.ndarray, y: np.ndarray, num_classes: int, names: tuple[str, ...]) -> dict[str, float]:
    """Label-free attacks ``names`` on rows ``g``: ``<name>`` and ``<name>_chance`` (binary: AUC of the projection
    / direction score; multi-class: k-means accuracy of the rows, reduced to a few principal directions when wide)."""
    shuffled = _shuffle(y)
    out: dict[str, float] = {}
    if num_classes == 2:
        for name in names:
            score = projection_scores(g) if name.endswith("projection") else direction_scores(g)
            out[f"{name}_auc"], out[f"{name}_chance"] = leak_auc(score, y), leak_auc(score, shuffled)
        return out
    if g.shape[1] > 64:  # k-means on thousands of columns is slow and no better than on the top directions
        centred = g - g.mean(axis=0)
        g = centred @ _top_directions(centred, 32).T
    clusters = _clusters(g, num_classes)
    out["cluster_accuracy"] = _matched_accuracy(clusters, y, num_classes)
    out["cluster_chance"] = _matched_accuracy(clusters, shuffled, num_classes)
    return out


def _kept_counts(available: int) -> list[int]:
    """The numbers of kept rounds scored: those of :data:`MULTIROUND_KEPT` available, and all of them."""
    return sorted({n for n in MULTIROUND_KEPT if n <= available} | ({available} if available else set()))


def multiround_attack(rows_by_round: Mapping[int, np.ndarray], labels: np.ndarray, num_classes: int
                      ) -> list[dict[str, float]]:
    """The attacker who keeps every round: per number ``n`` of kept rounds (the first ``n``, in round order),

    * **averaged**: each user's rows averaged over the ``n`` rounds — fresh noise averages out while the label
      signal, the same every round, stays — then the projection and direction attacks (binary) or k-means;
    * **stacked**: each user's rows concatenated (``n x rounds*d``), then the projection attack (k-means for
      multi-class): it does not assume that the label direction is the same every round.

    Each with ``*_chance``, the same attack against the fixed shuffle of the labels.
    """
    labels = np.asarray(labels)
    known = labels >= 0
    y = labels[known]
    ordered = [np.asarray(rows_by_round[r], dtype=np.float64)[known] for r in sorted(rows_by_round)]
    out = []
    for n in _kept_counts(len(ordered)):
        kept = ordered[:n]
        row: dict[str, float] = {"rounds_kept": float(n)}
        averaged = _label_free(np.mean(kept, axis=0), y, num_classes, ("averaged_projection", "averaged_direction"))
        stacked = _label_free(np.concatenate(kept, axis=1), y, num_classes, ("stacked_projection",))
        row.update(averaged if num_classes == 2 else {f"averaged_{k}": v for k, v in averaged.items()})
        row.update(stacked if num_classes == 2 else {f"stacked_{k}": v for k, v in stacked.items()})
        out.append(row)
    return out


# ------------------------------------------------------------------------------------------------ prototypes
def _unit(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def _pairs(embeddings: Mapping[int, np.ndarray], prototypes: Mapping[int, np.ndarray],
           masks: Mapping[int, np.ndarray], normalize: bool) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per round with both: (the passive's embeddings as the active party's prototype math saw them, the prototypes
    made from them, their class mask)."""
    out = []
    for r in sorted(set(embeddings) & set(prototypes)):
        z = np.asarray(embeddings[r], dtype=np.float64)
        p = np.asarray(prototypes[r], dtype=np.float64).reshape(len(prototypes[r]), -1)
        m = np.asarray(masks.get(r, np.abs(p).sum(axis=1) > 0), dtype=bool)
        out.append((_unit(z) if normalize else z, p, m))
    return out


def _score(scores: np.ndarray, y: np.ndarray, num_classes: int) -> float:
    """Plain AUC of class 1's score minus class 0's (binary: the attacker knows which prototype is which class) or
    accuracy of the largest score (a class that never had a prototype scores lowest: binary AUC 0.5 when one never
    had any); NaN when the users hold one class only."""
    scores = np.nan_to_num(scores, neginf=-1e30)  # a class that never had a prototype: never chosen
    if num_classes == 2:
        diff = scores[:, 1] - scores[:, 0]
        if np.unique(y).size != 2:
            return math.nan
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(y == 1, diff))
    return float(np.mean(np.argmax(scores, axis=1) == y))


def nearest_prototype_scores(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], num_classes: int
                             ) -> np.ndarray:
    """``(n, C)``: minus each user's squared distance to each class prototype, averaged over the rounds where that
    class has one (``-inf`` where never)."""
    total = np.zeros((len(pairs[0][0]), num_classes))
    seen = np.zeros(num_classes)
    for z, p, m in pairs:
        d = ((z[:, None, :] - p[None, :, :]) ** 2).sum(axis=2)
        total[:, m] -= d[:, m]
        seen[m] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(seen > 0, total / np.maximum(seen, 1), -np.inf)


def inversion_scores(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], num_classes: int) -> np.ndarray:
    """``(n, C)``: the min-norm least-squares solution ``a_c`` of ``Z_r^T a_c = n_c p_rc`` stacked over every round
    where class ``c`` has a prototype. The class shares come from ``mean(Z_r) = sum_c f_c p_rc`` (least squares over
    every round, clipped at 0, normalised), ``n_c = f_c n``: all of it from what the passive holds."""
    n = len(pairs[0][0])
    cls = np.flatnonzero(np.logical_or.reduce([m for _, _, m in pairs]))
    if len(cls) == 0:
        return np.zeros((n, num_classes))
    full = [(z, p) for z, p, m in pairs if m[cls].all()]  # rounds where every class has a prototype
    f = np.full(len(cls), 1.0 / len(cls))
    if full:
        a = np.concatenate([p[cls].T for _, p in full])  # (R d, |cls|)
        b = np.concatenate([z.mean(axis=0) for z, _ in full])
        f = np.clip(np.linalg.lstsq(a, b, rcond=None)[0], 0.0, None)
        f = f / f.sum() if f.sum() > 0 else np.full(len(cls), 1.0 / len(cls))
    scores = np.full((n, num_classes), -np.inf)
    for j, c in enumerate(cls):
        rounds = [(z, p) for z, p, m in pairs if m[c]]
        mat = np.concatenate([z.T for z, _ in rounds])  # (R d, n)
        rhs = np.concatenate([f[j] * n * p[c] for _, p in rounds])
        scores[:, c] = np.linalg.lstsq(mat, rhs, rcond=None)[0]
    return scores


def prototype_attacks(embeddings: Mapping[int, np.ndarray], prototypes: Mapping[int, np.ndarray],
                      masks: Mapping[int, np.ndarray], labels: np.ndarray, num_classes: int,
                      normalize: bool = True) -> dict[str, float]:
    """The passive's attacks on the second prototypes (rounds where it holds both its embeddings and the
    prototypes made from them): nearest prototype and inversion over all rounds kept, and nearest prototype on
    the last round alone. Binary: AUC (``*_auc``, the attacker knows which class each prototype is); multi-class:
    accuracy."""
    pairs = _pairs(embeddings, prototypes, masks, normalize)
    if not pairs:
        return {}
    labels = np.asarray(labels)
    known = labels >= 0
    y = labels[known]
    metric = "auc" if num_classes == 2 else "accuracy"
    pairs = [(z[known], p, m) for z, p, m in pairs]
    return {"prototype_pairs": float(len(pairs)),
            f"prototype_nearest_{metric}": _score(nearest_prototype_scores(pairs, num_classes), y, num_classes),
            f"prototype_nearest_last_{metric}": _score(nearest_prototype_scores(pairs[-1:], num_classes), y,
                                                       num_classes),
            f"prototype_inversion_{metric}": _score(inversion_scores(pairs, num_classes), y, num_classes)}


def known_prototype_attack(embeddings: Mapping[int, np.ndarray], labels: np.ndarray, num_classes: int,
                           normalize: bool = True, counts: tuple[int, ...] = KNOWN_LABELS,
                           draws: int = KNOWN_DRAWS) -> dict[str, float]:
    """The baseline the prototype attacks are judged against: a passive that knows ``m`` labels and receives no
    prototype builds its own, the class means of those ``m`` users' embeddings in every round, and scores the other
    users by nearest prototype averaged over all rounds (``known{m}_prototype_*``; mean over ``draws`` draws)."""
    labels = np.asarray(labels)
    known = labels >= 0
    y = labels[known]
    zs = {r: (_unit(z) if normalize else np.asarray(z, dtype=np.float64))[known] for r, z in embeddings.items()}
    metric = "auc" if num_classes == 2 else "accuracy"
    out: dict[str, float] = {}
    for m in counts:
        used = min(m, len(y) // 2)
        if used < max(4, np.unique(y).size) or not zs:
            continue
        scores = []
        for draw in range(draws):
            train = np.zeros(len(y), dtype=bool)
            train[_known_users(y, used, np.random.default_rng([_KNOWN_STREAM, m, draw]))] = True
            pairs = []
            for z in zs.values():
                present = np.array([bool((y[train] == c).any()) for c in range(num_classes)])
                p = np.stack([z[train][y[train] == c].mean(axis=0) if present[c] else np.zeros(z.shape[1])
                              for c in range(num_classes)])
                pairs.append((z[~train], p, present))
            scores.append(_score(nearest_prototype_scores(pairs, num_classes), y[~train], num_classes))
        out[f"known{m}_prototype_{metric}"] = float(np.nanmean(scores))
    return out


# ------------------------------------------------------------------------------------------------ known labels
def _fit_score(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, binary: bool
               ) -> float:
    """The known-label model: standardised inputs, L2 logistic regression; test AUC (binary) or accuracy.

    Plain AUC, not ``max(AUC, 1 - AUC)``: with labels to fit on the attacker knows which end is which."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=KNOWN_C, max_iter=2000, random_state=0))
    model.fit(x_train, y_train)
    if binary:
        if np.unique(y_test).size < 2:
            return math.nan
        return float(roc_auc_score(y_test, model.predict_proba(x_test)[:, 1]))
    return float(np.mean(model.predict(x_test) == y_test))


def _known_users(y: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` random users, one of each present class among them (a model needs both classes to fit)."""
    order = rng.permutation(len(y))
    first = [int(order[np.flatnonzero(y[order] == c)[0]]) for c in np.unique(y)]
    taken = set(first)
    return np.array((first + [int(i) for i in order if int(i) not in taken])[:m])


def known_label_attack(rows_by_round: Mapping[int, np.ndarray], labels: np.ndarray, num_classes: int,
                       features: np.ndarray | None = None, counts: tuple[int, ...] = KNOWN_LABELS,
                       draws: int = KNOWN_DRAWS) -> dict[str, float]:
    """The passive that knows ``m`` labels: a logistic regression on [own features, rows averaged over all rounds],
    scored on the other users, next to the same model on its features only and on the rows only.

    The rows enter as their top ``2 * max(2, classes)`` principal directions (label-free: computed from every user's
    averaged rows, which the passive holds). The label lives in a few directions, and dozens of raw noisy columns
    next to a handful of labels cost the model more than they give: with pure-noise rows the full rows lower the
    score by several points, which would hide a small real leak; the components cost about one.

    ``known{m}_advantage`` = (features + rows) - (features only) is what the messages add to what the passive could
    already infer; without ``features`` only ``known{m}_rows_*`` is reported. ``m`` is capped at half the users
    (``known{m}_used``); each score is the mean over ``draws`` fixed draws of the known users. Binary: AUC
    (``*_auc``); multi-class: accuracy (``*_accuracy``).
    """
    labels = np.asarray(labels)
    known = labels >= 0
    y = labels[known]
    feats = None if features is None else np.asarray(features, dtype=np.float64).reshape(len(labels), -1)[known]
    inputs: dict[str, np.ndarray] = {}
    if rows_by_round:  # else (no row ever sent) the features-only baseline alone
        rows = np.mean([np.asarray(rows_by_round[r], dtype=np.float64)[known] for r in sorted(rows_by_round)],
                       axis=0)
        rows = rows - rows.mean(axis=0)
        inputs["rows"] = rows @ _top_directions(rows, min(rows.shape[1], 2 * max(2, num_classes))).T
    if feats is not None:
        inputs["features"] = feats
        if rows_by_round:
            inputs["both"] = np.concatenate([feats, inputs["rows"]], axis=1)
    if not inputs:
        return {}
    binary = num_classes == 2
    metric = "auc" if binary else "accuracy"
    out: dict[str, float] = {}
    for m in counts:
        used = min(m, len(y) // 2)
        if used < max(4, np.unique(y).size):
            continue
        scores: dict[str, list[float]] = {name: [] for name in inputs}
        for draw in range(draws):
            train = np.zeros(len(y), dtype=bool)
            train[_known_users(y, used, np.random.default_rng([_KNOWN_STREAM, m, draw]))] = True
            for name, x in inputs.items():
                scores[name].append(_fit_score(x[train], y[train], x[~train], y[~train], binary))
        mean = {name: float(np.nanmean(v)) if not all(map(math.isnan, v)) else math.nan for name, v in scores.items()}
        out[f"known{m}_used"] = float(used)
        if "rows" in mean:
            out[f"known{m}_rows_{metric}"] = mean["rows"]
        if "features" in mean:
            out[f"known{m}_features_{metric}"] = mean["features"]
        if "both" in mean:
            out[f"known{m}_{metric}"] = mean["both"]
            out[f"known{m}_advantage"] = mean["both"] - mean["features"]
    return out


# ------------------------------------------------------------------------------------------------ replay
def old_gradient_noise(seed: int, rnd: int, passive: int, shape: tuple[int, ...]) -> np.ndarray:
    """Unit Gaussian noise of the old ``defences.gradient_rng`` stream (seeded by the run config alone)."""
    return np.random.default_rng([seed, OLD_GRADIENT_STREAM, rnd, passive]).normal(0.0, 1.0, size=shape)


def old_prototype_noise(seed: int, rnd: int, shape: tuple[int, ...]) -> np.ndarray:
    """Unit Gaussian noise of the old DP-prototype stream: a torch generator seeded ``round_seed(seed, 0, rnd) + 2``."""
    import torch

    from flwr_vproto.method.batching import round_seed

    gen = torch.Generator().manual_seed(round_seed(seed, 0, rnd) + OLD_PROTOTYPE_OFFSET)
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float64).numpy()


def replay_attack(rows_by_round: Mapping[int, np.ndarray], seed: int, passive: int, labels: np.ndarray
                  ) -> dict[str, Any]:
    """An attacker who regenerates noise from generators the run config determines and subtracts it.

    Per round and per old stream: ``N`` regenerated for the rows' shape, its scale fitted by least squares
    (``s = <rows, N> / <N, N>``, at least 0), ``rows - s N`` attacked (projection AUC for binary labels, k-means
    accuracy otherwise), per round and averaged over rounds. ``scale`` is ``s |N| / |rows|``: the share of the rows
    the replayed noise explains (near 1 when the replay works, ~0 against noise from a secret). ``replay_auc`` is the
    best replay's worst round (``replay_accuracy`` for multi-class); ``noreplay_*`` the same attack on the rows.
    """
    labels = np.asarray(labels)
    known = labels >= 0
    y = labels[known]
    num_classes = max(2, int(y.max()) + 1) if y.size else 2
    metric = "auc" if num_classes == 2 else "accuracy"
    names = ("projection",)
    streams: dict[str, Callable[[int, tuple[int, ...]], np.ndarray]] = {
        "numpy_gradient": lambda rnd, shape: old_gradient_noise(seed, rnd, passive, shape),
        "torch_prototype": lambda rnd, shape: old_prototype_noise(seed, rnd, shape),
    }
    rounds = sorted(rows_by_round)
    rows = {r: np.asarray(rows_by_round[r], dtype=np.float64) for r in rounds}
    out: dict[str, Any] = {"passive": passive, "streams": {}}

    def score(g: np.ndarray) -> tuple[float, float]:
        s = _label_free(g[known], y, num_classes, names)
        return (s["projection_auc"], s["projection_chance"]) if num_classes == 2 else \
            (s["cluster_accuracy"], s["cluster_chance"])

    for name, noise in streams.items():
        per_round, residuals = [], []
        for r in rounds:
            n = noise(r, rows[r].shape)
            s = max(0.0, float(np.vdot(rows[r], n) / max(np.vdot(n, n), 1e-300)))
            residual = rows[r] - s * n
            scale = s * float(np.linalg.norm(n)) / max(float(np.linalg.norm(rows[r])), 1e-300)
            per_round.append({"round": r, "scale": scale})
            residuals.append(residual)
        # binary: every round scored (cheap); multi-class: the round the replay explains most, and the average
        scored = range(len(rounds)) if num_classes == 2 else [int(np.argmax([p["scale"] for p in per_round]))]
        for i in scored:
            per_round[i][metric], per_round[i]["chance"] = score(residuals[i])
        averaged, averaged_chance = score(np.mean(residuals, axis=0))
        worst = max(scored, key=lambda i: per_round[i][metric])
        out["streams"][name] = {"rounds": per_round, f"worst_round_{metric}": per_round[worst][metric],
                                "worst_round_chance": per_round[worst]["chance"], f"averaged_{metric}": averaged,
                                "averaged_chance": averaged_chance, "scale": max(p["scale"] for p in per_round),
                                "scored": list(scored)}
    best = max(out["streams"].values(), key=lambda s: s[f"worst_round_{metric}"])
    out.update({f"replay_{metric}": best[f"worst_round_{metric}"], "replay_chance": best["worst_round_chance"],
                f"replay_averaged_{metric}": max(s[f"averaged_{metric}"] for s in out["streams"].values()),
                "replay_scale": max(s["scale"] for s in out["streams"].values()),
                # the same attack on the same rounds without the replay: what the replay must beat
                f"noreplay_{metric}": max(score(rows[rounds[i]])[0] for i in best.pop("scored"))})
    for s in out["streams"].values():
        s.pop("scored", None)
    return out


# ------------------------------------------------------------------------------------------------ recording
def _save(path: Path, arrays: Mapping[str, Any]) -> Path:
    """Write ``arrays`` to ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


def record_round(folder: str | Path, rnd: int, gradients: list[np.ndarray], labels: np.ndarray,
                 prototypes: list[np.ndarray] | None = None, channels: Mapping[str, np.ndarray] | None = None
                 ) -> Path:
    """Write what every passive receives from round ``rnd`` (passive ``k`` = entry ``k - 1``) and the true labels.

    ``channels``: anything else the active party released that round (e.g. ``pseudo_thresholds``), stored as
    ``channel.<name>`` and listed in the audit's ``channels``."""
    arrays = {LABELS: np.asarray(labels, dtype=np.int64)}
    for k, g in enumerate(gradients, start=1):
        arrays[f"passive{k}.gradients"] = np.asarray(g, dtype=np.float32)
    for k, p in enumerate(prototypes or [], start=1):
        arrays[f"passive{k}.prototypes"] = np.asarray(p, dtype=np.float32)
    for name, value in (channels or {}).items():
        if value is not None:
            arrays[CHANNEL + name] = np.asarray(value)
    return _save(Path(folder) / f"round-{rnd}.npz", arrays)


def record_received(folder: str | Path, passive: int, rnd: int,
                    received: Mapping[str, np.ndarray | float | bool | str | None]) -> Path:
    """The attacker's own view: write ``passive<k>/received-<r>.npz`` with everything passive ``k`` (1-based, as in
    :func:`record_round`) received in round ``rnd`` (``gradients``, ``prototypes``, ``prototype_mask``,
    ``pseudo_threshold``, ``test_previous``, ``splits``, ...). ``None`` entries are skipped. The audit attacks these
    rows when present (they are what the passive holds), else the rows the active party recorded as sent."""
    arrays = {name: np.asarray(value) for name, value in received.items() if value is not None}
    return _save(Path(folder) / f"passive{passive}" / f"received-{rnd}.npz", arrays)


def record_embeddings(folder: str | Path, passive: int, rnd: int, embeddings: np.ndarray) -> Path:
    """Write ``passive<k>/embeddings-<r>.npz``: the embeddings of its aligned training users passive ``k`` sent in
    round ``rnd`` (it computed them, so it holds them); the prototypes of round ``rnd`` are their class means."""
    return _save(Path(folder) / f"passive{passive}" / f"embeddings-{rnd}.npz",
                 {EMBEDDINGS: np.asarray(embeddings, dtype=np.float32)})


def record_features(folder: str | Path, passive: int, features: np.ndarray) -> Path:
    """Write ``passive<k>/features.npz``: passive ``k``'s own features of its aligned training users, flattened to
    2-D, in the shared order (row ``i`` is the user of gradient row ``i``). The known-label attack's baseline: what
    the passive can infer without any message."""
    f = np.asarray(features)
    return _save(Path(folder) / f"passive{passive}" / "features.npz",
                 {FEATURES: f.reshape(f.shape[0], -1).astype(np.float32)})


def recorded_rounds(folder: str | Path) -> list[int]:
    """The rounds with an active-side ``round-<r>.npz``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _ROUND_FILE.match(p.name)))


# ------------------------------------------------------------------------------------------------ reading a folder
@dataclass
class PassiveView:
    """What one passive holds over the run, as the audit reads it from the folder."""

    index: int
    rows: dict[int, np.ndarray] = field(default_factory=dict)  # round -> (n, d), the rows the attacks use
    source: str = "sent"  # "received" (passive<k>/received-*.npz) or "sent" (the active's round-*.npz)
    sent: dict[int, np.ndarray] = field(default_factory=dict)
    sent_prototypes: dict[int, np.ndarray] = field(default_factory=dict)
    received: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    features: np.ndarray | None = None
    embeddings: dict[int, np.ndarray] = field(default_factory=dict)  # round -> what it sent (aligned training)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"passive{self.index}"


def read_folder(folder: str | Path) -> tuple[np.ndarray, dict[int, PassiveView], dict[int, dict[str, np.ndarray]]]:
    """The true labels, every passive's view and the active's extra channels per round. Rows whose count is not the
    labels' (never expected: the shared order is fixed) are left out with a note."""
    folder = Path(folder)
    rounds = recorded_rounds(folder)
    if not rounds:
        raise FileNotFoundError(f"{folder}: no round-<r>.npz files; run with audit.record=true first")
    views: dict[int, PassiveView] = {}
    channels: dict[int, dict[str, np.ndarray]] = {}
    labels: np.ndarray | None = None
    for rnd in rounds:
        with np.load(folder / f"round-{rnd}.npz") as data:
            labels = data[LABELS] if labels is None else labels
            for key in data.files:
                head, _, kind = key.partition(".")
                if key.startswith(CHANNEL):
                    channels.setdefault(rnd, {})[key[len(CHANNEL):]] = data[key]
                elif (m := _PASSIVE_DIR.match(head)) and kind in ("gradients", "prototypes"):
                    view = views.setdefault(int(m.group(1)), PassiveView(int(m.group(1))))
                    (view.sent if kind == "gradients" else view.sent_prototypes)[rnd] = data[key]
    assert labels is not None
    for sub in folder.iterdir():
        if sub.is_dir() and (m := _PASSIVE_DIR.match(sub.name)):
            view = views.setdefault(int(m.group(1)), PassiveView(int(m.group(1))))
            for p in sub.iterdir():
                if r := _RECEIVED_FILE.match(p.name):
                    with np.load(p) as data:
                        view.received[int(r.group(1))] = {k: data[k] for k in data.files}
                elif r := _EMBEDDINGS_FILE.match(p.name):
                    with np.load(p) as data:
                        view.embeddings[int(r.group(1))] = data[EMBEDDINGS]
            if (sub / "features.npz").is_file():
                with np.load(sub / "features.npz") as data:
                    view.features = data[FEATURES]
    for view in views.values():
        got = {r: v["gradients"] for r, v in sorted(view.received.items()) if "gradients" in v}
        view.rows, view.source = (got, "received") if got else (dict(sorted(view.sent.items())), "sent")
        for rnd in [rnd for rnd, g in view.rows.items() if g.ndim != 2 or g.shape[0] != len(labels)]:
            view.notes.append(f"round {rnd}: {view.rows.pop(rnd).shape} rows for {len(labels)} labels, left out")
        if view.features is not None and view.features.shape[0] != len(labels):
            view.notes.append(f"features: {view.features.shape[0]} rows for {len(labels)} labels, left out")
            view.features = None
    return labels, dict(sorted(views.items())), channels


def _values(arrays: Mapping[int, np.ndarray]) -> dict[str, Any]:
    """A channel's values by round: small arrays as lists, large ones by shape."""
    return {str(r): (a.tolist() if a.size <= 64 else {"shape": list(a.shape)}) for r, a in sorted(arrays.items())}


def channel_report(view: PassiveView) -> dict[str, Any]:
    """Everything passive ``k`` received besides the gradient rows, so the report lists every channel.

    Second prototypes cannot be attacked user by user here (the record holds no embeddings of the passive), so the
    report gives how many rounds sent them and how far apart the class prototypes are (the label information they
    carry as a whole)."""
    out: dict[str, Any] = {"rows_from": view.source, "gradient_rounds": sorted(view.rows), "notes": view.notes,
                           "features": view.features is not None}
    common = sorted(set(view.sent) & {r for r, v in view.received.items() if "gradients" in v})
    if common:
        out["sent_received_max_diff"] = max(
            float(np.max(np.abs(view.sent[r].astype(np.float64) - view.received[r]["gradients"]), initial=0.0))
            for r in common)
    protos = {r: v["prototypes"] for r, v in view.received.items() if "prototypes" in v} or view.sent_prototypes
    masks = {r: v["prototype_mask"] for r, v in view.received.items() if "prototype_mask" in v}
    if protos:
        gaps = {}
        for r, p in sorted(protos.items()):
            p = np.asarray(p, dtype=np.float64).reshape(len(p), -1)
            present = np.flatnonzero(masks.get(r, np.ones(len(p), dtype=bool)))
            d = [np.linalg.norm(p[i] - p[j]) for a, i in enumerate(present) for j in present[a + 1:]]
            gaps[str(r)] = [float(min(d)), float(max(d))] if d else []
        out["prototypes"] = {"rounds": len(protos), "class_gap_min_max": gaps}
    flags = [bool(np.asarray(v["test_previous"])) for v in view.received.values() if "test_previous" in v]
    if flags:
        out["test_previous_rounds"] = sum(flags)
    for key in ("pseudo_threshold", "splits"):
        found = {r: v[key] for r, v in view.received.items() if key in v}
        if found:
            out[key] = _values(found)
    others = sorted({k for v in view.received.values() for k in v} - {"gradients", "prototypes", "prototype_mask",
                                                                       "test_previous", "pseudo_threshold", "splits"})
    for key in others:
        out[key] = _values({r: v[key] for r, v in view.received.items() if key in v})
    return out


# ------------------------------------------------------------------------------------------------ the audit
def view_prototypes(view: PassiveView) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """The prototypes made from the embeddings passive ``k`` sent in round ``r`` (received with round ``r + 1``, or
    as the active party recorded them sent after round ``r``), keyed ``r``, and their class masks."""
    got = {r - 1: v["prototypes"] for r, v in view.received.items() if "prototypes" in v}
    masks = {r - 1: v["prototype_mask"] for r, v in view.received.items() if "prototype_mask" in v}
    return (got, masks) if got else (dict(view.sent_prototypes), {})


def audit_folder(folder: str | Path, num_classes: int, seed: int | None = None, normalize: bool = True
                 ) -> dict[str, Any]:
    """Score a recorded folder: ``{"rounds", "multiround", "known_label", "replay", "prototypes", "channels",
    "strongest", "summary"}``. ``seed`` (the run's) enables the replay check; ``None`` skips it. ``normalize``
    (``method.research.normalize``): the prototypes are means of unit embeddings."""
    labels, views, active_channels = read_folder(folder)
    rows, multi, known, replay, protos = [], [], [], [], []
    channels: dict[str, Any] = {"active": {name: _values({r: c[name] for r, c in active_channels.items()
                                                          if name in c})
                                           for name in sorted({n for c in active_channels.values() for n in c})}}
    for k, view in views.items():
        for rnd, g in view.rows.items():
            rows.append({"round": rnd, "passive": view.name, **attack(g, labels, num_classes)})
        channels[view.name] = channel_report(view)
        sent, masks = view_prototypes(view)
        if sent and view.embeddings:
            protos.append({"passive": view.name, **prototype_attacks(view.embeddings, sent, masks, labels,
                                                                      num_classes, normalize),
                           **known_prototype_attack(view.embeddings, labels, num_classes, normalize)})
        if not view.rows:
            if view.features is not None:  # the baseline: a passive that knows m labels and its own features
                known.append({"passive": view.name, **known_label_attack({}, labels, num_classes, view.features)})
            continue
        multi += [{"passive": view.name, **r} for r in multiround_attack(view.rows, labels, num_classes)]
        known.append({"passive": view.name, **known_label_attack(view.rows, labels, num_classes, view.features)})
        if seed is not None:
            replay.append({**replay_attack(view.rows, seed, k, labels), "passive": view.name})
    rows.sort(key=lambda r: (r["round"], r["passive"]))
    report: dict[str, Any] = {"rounds": rows, "multiround": multi, "known_label": known, "replay": replay,
                              "prototypes": protos, "channels": channels}
    report["strongest"] = strongest(report, num_classes)
    # Rounds whose rows some passive received (0: no gradient row ever left, e.g. defence=no_gradients).
    rows_rounds = float(max((len(v.rows) for v in views.values()), default=0))
    report["summary"] = {"rows_rounds": rows_rounds, **summarise(rows), **summarise_attacker(report, num_classes)}
    return report


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Worst case over rounds and passives of each per-round attack (what the run's promise must hold against), and
    the mean."""
    out: dict[str, float] = {}
    for key in ("norm_auc", "direction_auc", "projection_auc", "auc_chance", "cluster_accuracy", "cluster_chance"):
        values = [r[key] for r in rows if key in r and not math.isnan(r[key])]
        if values:
            out[f"max_{key}"] = float(max(values))
            out[f"mean_{key}"] = float(np.mean(values))
    if rows:
        out["majority_share"] = float(rows[0]["majority_share"])
    return out


def _label_free_results(report: Mapping[str, Any], num_classes: int) -> list[tuple[str, float, float]]:
    """Every label-free attack's (name, score, chance): per round, multi-round, replay. Binary: AUCs; multi-class:
    k-means accuracies."""
    out = []
    for r in report["rounds"]:
        where = f"{r['passive']} round {r['round']}"
        if num_classes == 2:
            out += [(f"{name} {where}", r[f"{name}_auc"], r["auc_chance"]) for name in ("norm", "direction",
                                                                                       "projection")]
        else:
            out.append((f"cluster {where}", r["cluster_accuracy"], r["cluster_chance"]))
    for r in report["multiround"]:
        where = f"{r['passive']} {int(r['rounds_kept'])} rounds"
        for name in ("averaged_projection", "averaged_direction", "stacked_projection") if num_classes == 2 else \
                ("averaged_cluster", "stacked_cluster"):
            key = f"{name}_auc" if num_classes == 2 else f"{name}_accuracy"
            if key in r:
                out.append((f"{name} {where}", r[key], r[f"{name}_chance"]))
    metric = "auc" if num_classes == 2 else "accuracy"
    for r in report["replay"]:
        out.append((f"replay {r['passive']}", r[f"replay_{metric}"], r["replay_chance"]))
    return [(n, float(s), float(c)) for n, s, c in out if not (math.isnan(s) or math.isnan(c))]


def strongest(report: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
    """The strongest label-free attack: the largest score of all, and as its chance the largest score of the same
    attacks against the shuffled labels (the maximum over many attacks is compared with the maximum over the same
    many attacks when nothing can be found)."""
    results = _label_free_results(report, num_classes)
    if not results:
        return {}
    name, score, _ = max(results, key=lambda t: t[1])
    return {"attack": name, "score": score, "chance": max(c for _, _, c in results)}


def summarise_attacker(report: Mapping[str, Any], num_classes: int) -> dict[str, float]:
    """The summary's multi-round, known-label, replay, channel and strongest-attack keys (worst case over passives;
    every value a finite float, as results.json needs)."""
    out: dict[str, float] = {}
    binary = num_classes == 2

    def worst(rows: list[Mapping[str, Any]], key: str, name: str | None = None) -> None:
        values = [float(r[key]) for r in rows if key in r and not math.isnan(float(r[key]))]
        if values:
            out[name or key] = max(values)

    last: dict[str, Mapping[str, Any]] = {}  # per passive, the multi-round row with every round kept
    for r in report["multiround"]:
        if r["rounds_kept"] >= last.get(r["passive"], {}).get("rounds_kept", 0):
            last[r["passive"]] = r
    if binary:
        worst(list(last.values()), "averaged_projection_auc", "multiround_projection_auc")
        worst(list(last.values()), "averaged_direction_auc", "multiround_direction_auc")
        worst(list(last.values()), "stacked_projection_auc", "multiround_stacked_auc")
        chances = [r[k] for r in last.values() for k in ("averaged_projection_chance", "averaged_direction_chance",
                                                          "stacked_projection_chance") if k in r]
    else:
        worst(list(last.values()), "averaged_cluster_accuracy", "multiround_cluster_accuracy")
        worst(list(last.values()), "stacked_cluster_accuracy", "multiround_stacked_accuracy")
        chances = [r[k] for r in last.values() for k in ("averaged_cluster_chance", "stacked_cluster_chance") if k in r]
    chances = [c for c in chances if not math.isnan(c)]
    if chances:
        out["multiround_chance"] = float(max(chances))
    if last:
        out["multiround_rounds"] = float(max(r["rounds_kept"] for r in last.values()))
    metric = "auc" if binary else "accuracy"
    for m in KNOWN_LABELS:
        rows = [r for r in report["known_label"] if f"known{m}_advantage" in r and not
                math.isnan(r[f"known{m}_advantage"])]
        if rows:  # the passive the messages help most
            top = max(rows, key=lambda r: r[f"known{m}_advantage"])
            for key in (f"known{m}_advantage", f"known{m}_{metric}", f"known{m}_features_{metric}"):
                if not math.isnan(top[key]):
                    out[key] = float(top[key])
        worst(report["known_label"], f"known{m}_rows_{metric}")
        if f"known{m}_features_{metric}" not in out:  # no rows: the baseline alone
            worst(report["known_label"], f"known{m}_features_{metric}")
    for key in ("prototype_nearest", "prototype_nearest_last", "prototype_inversion", *(f"known{m}_prototype"
                                                                                        for m in KNOWN_LABELS)):
        worst(report.get("prototypes", []), f"{key}_{metric}")
    worst(report["replay"], f"replay_{metric}")
    worst(report["replay"], "replay_scale")
    worst(report["replay"], "replay_chance")
    worst(report["replay"], f"replay_averaged_{metric}")
    worst(report["replay"], f"noreplay_{metric}")
    channels = [c for name, c in report["channels"].items() if name != "active"]
    worst(channels, "test_previous_rounds")
    protos = [c["prototypes"]["rounds"] for c in channels if "prototypes" in c]  # (rounds sent)
    if protos:
        out["prototype_rounds"] = float(max(protos))
    thresholds = [c["pseudo_threshold"] for c in channels if "pseudo_threshold" in c]
    if thresholds:
        out["pseudo_threshold_rounds"] = float(max(len(t) for t in thresholds))
    best = report["strongest"]
    if best:
        out[f"strongest_{metric}"] = best["score"]
        out["strongest_chance"] = best["chance"]
    return out


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    """``python -m flwr_vproto.audit <run dir>``: score ``<run dir>/audit`` and add the result to results.json."""
    parser = argparse.ArgumentParser(prog="python -m flwr_vproto.audit", description=main.__doc__)
    parser.add_argument("run_dir", help="a run's output folder (holds results.json and audit/)")
    parser.add_argument("--audit-dir", help="the recorded folder, if not <run dir>/audit")
    parser.add_argument("--classes", type=int, help="the task's number of classes, if results.json's config cannot "
                                                    "tell it (a run of another flwr_vproto version)")
    args = parser.parse_args(argv)
    run = Path(args.run_dir)
    results_path = run / "results.json"
    if not results_path.is_file():
        raise SystemExit(f"audit error: {results_path} not found (give a run's output folder)")
    results = json.loads(results_path.read_text())
    folder = Path(args.audit_dir) if args.audit_dir else run / "audit"
    num_classes = args.classes or _num_classes(results, results_path)
    seed = results.get("config", {}).get("seed")
    method = results.get("config", {}).get("method") or {}
    # method.research.normalize; a run written before it moved has it at method.normalize
    normalize = bool((method.get("research") or method).get("normalize", True))
    try:
        report = audit_folder(folder, num_classes, seed=None if seed is None else int(seed), normalize=normalize)
    except FileNotFoundError as err:
        raise SystemExit(f"audit error: {err}") from None
    results["audit"] = report["summary"]
    results_path.write_text(json.dumps(results, indent=2, allow_nan=False, default=float))
    (run / "audit.json").write_text(json.dumps(report, indent=2, default=float))
    print(format_summary(report["summary"], report.get("strongest")))
    return 0


def _num_classes(results: dict[str, Any], path: Path) -> int:
    from flwr_vproto.config import ConfigError, config_from_dict
    from flwr_vproto.data import dataset_classes

    try:
        return int(dataset_classes(config_from_dict(results["config"]))[0])
    except (ConfigError, KeyError) as err:
        raise SystemExit(f"audit error: {path}: its config does not load here ({err}); give the number of classes "
                         f"with --classes") from None


_ROUND_KEYS = ("max_norm_auc", "max_direction_auc", "max_projection_auc", "max_auc_chance", "max_cluster_accuracy",
               "max_cluster_chance", "majority_share")


def format_summary(summary: Mapping[str, float], strongest_attack: Mapping[str, Any] | None = None) -> str:
    """A few lines: per round (worst round/passive), multi-round, known labels, replay, channels, strongest."""
    def join(keys: list[str]) -> str:
        return ", ".join(f"{k} {summary[k]:.3f}" for k in keys if k in summary)

    others = join(["prototype_rounds", "test_previous_rounds", "pseudo_threshold_rounds"])
    protos = join([k for k in summary if k.startswith("prototype_") and k != "prototype_rounds"])
    known = join([k for k in summary if k.startswith("known")])
    if summary.get("rows_rounds", 1.0) == 0:
        if protos:
            return "\n".join([f"label-leakage audit: no gradient row reached any passive; other channels: {others}",
                              f"  second prototypes (all rounds kept): {protos}",
                              f"  known labels (model on features only): {known}"])
        return ("label-leakage audit: no gradient row reached any passive (nothing label-dependent to attack"
                + (f"; other channels: {others}" if others else "") + ")")
    lines = ["label-leakage audit (worst round/passive): " + join([k for k in _ROUND_KEYS])]
    multi = join([k for k in summary if k.startswith("multiround_") and k != "multiround_rounds"])
    if multi:
        lines.append(f"  every round kept ({summary.get('multiround_rounds', 0):.0f}): {multi}")
    if known:
        lines.append(f"  known labels (model on features + averaged rows vs features only): {known}")
    if protos:
        lines.append(f"  second prototypes (all rounds kept): {protos}")
    replay = join([k for k in summary if k.startswith(("replay_", "noreplay_"))])
    if replay:
        lines.append(f"  replay of config-seeded noise: {replay}")
    channels = join(["prototype_rounds", "test_previous_rounds", "pseudo_threshold_rounds"])
    if channels:
        lines.append(f"  other channels: {channels}")
    for metric in ("auc", "accuracy"):
        if f"strongest_{metric}" in summary:
            score, chance = summary[f"strongest_{metric}"], summary["strongest_chance"]
            name = f" ({strongest_attack['attack']})" if strongest_attack else ""
            lines.append(f"  strongest label-free attack{name}: {metric} {score:.3f} vs chance {chance:.3f} "
                         f"(margin {score - chance:+.3f})")
    return "\n".join(lines)


if __name__ == "__main__":
    from flwr_vproto.threads import apply_default_threads

    apply_default_threads()  # one thread unless OMP_NUM_THREADS says otherwise (README "Threads")
    raise SystemExit(main())
