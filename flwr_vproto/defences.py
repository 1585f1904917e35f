"""Defences of the active party's labels against what the passive parties receive (``defence.*``). Plain numpy.

Every round a joint passive receives one gradient row per aligned training user, and those rows carry the users'
labels (:mod:`flwr_vproto.audit` measures how much). Two defences, both applied by the active party:

* **Label differential privacy** (:func:`randomized_response`): the aligned users' labels are replaced once per run
  by k-ary randomised response, and everything the active party trains, calibrates or selects on sees only those
  labels for aligned users. Whatever the passives receive is then a post-processing of the noised labels (and of
  data that is not those users' labels), so it is ``epsilon``-label-DP for every aligned user's label.
* **Gradient perturbation** (:func:`clip_and_noise`): each gradient row is clipped to a multiple of the round's
  median row norm and gets isotropic Gaussian noise before it leaves; this blurs the norm and direction signals
  without a formal guarantee.
"""

from __future__ import annotations

import math

import numpy as np

LABEL_DP_STREAM = 0x1ABE1  # random streams of the defences, apart from every other use of the run seed
GRADIENT_STREAM = 0x6AD


def keep_probability(epsilon: float, num_classes: int) -> float:
    """Probability that k-ary randomised response keeps a label: ``e^eps / (e^eps + C - 1)``."""
    return math.exp(epsilon) / (math.exp(epsilon) + num_classes - 1)


def randomized_response(labels: np.ndarray, epsilon: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """k-ary randomised response: each known label (>= 0) is kept with :func:`keep_probability`, else replaced by one
    of the other ``C - 1`` classes uniformly. Unknown labels (-1) stay unknown. epsilon-label-DP per label."""
    labels = np.asarray(labels, dtype=np.int64)
    keep = rng.random(labels.shape) < keep_probability(epsilon, num_classes)
    shift = rng.integers(1, num_classes, size=labels.shape)  # another class, uniformly
    noised = np.where(keep, labels, (labels + shift) % num_classes)
    return np.where(labels >= 0, noised, labels)


def label_rng(seed: int, split: str) -> np.random.Generator:
    """The randomised response's generator: fixed by the run seed and the split, so every engine, every process of a
    deployment and a resumed run draw the same noised labels."""
    return np.random.default_rng([seed, LABEL_DP_STREAM, ("train", "val", "test").index(split)])


def clip_and_noise(gradients: np.ndarray, clip: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Each row clipped to L2 norm ``clip`` times the median row norm of ``gradients``, plus isotropic Gaussian noise
    whose expected norm is ``noise`` times that clip norm (per-coordinate standard deviation ``noise * c / sqrt(d)``).

    Relative to the median because the rows' scale moves by an order of magnitude across rounds and methods
    (BENCHMARKS.md): a fixed threshold would clip nothing in one round and everything in another.
    """
    g = np.asarray(gradients, dtype=np.float64)
    if g.size == 0:
        return g.astype(np.float32)
    norms = np.linalg.norm(g, axis=1, keepdims=True)
    bound = clip * float(np.median(norms))
    g = g * np.minimum(1.0, bound / np.maximum(norms, 1e-30))
    if noise > 0:
        g = g + rng.normal(0.0, noise * bound / math.sqrt(g.shape[1]), size=g.shape)
    return g.astype(np.float32)


def gradient_rng(seed: int, rnd: int, passive: int) -> np.random.Generator:
    """The gradient noise's generator for one passive's rows of one round (same in both engines)."""
    return np.random.default_rng([seed, GRADIENT_STREAM, rnd, passive])
