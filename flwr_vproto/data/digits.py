"""scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes): the tiny quick-start dataset.

It ships inside scikit-learn, so nothing is downloaded. There is no official test split: ``test_fraction`` of all
users become test users (stratified, seeded by ``cfg.seed``).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

from flwr_vproto.data.partition import TEST_SPLIT, SimulatedSource, image_blocks, rng_for, stratified_choice

if TYPE_CHECKING:  # only annotations: config never needs the data package, nor this it
    from flwr_vproto.config import Config

CLASS_NAMES = [str(i) for i in range(10)]


@functools.lru_cache(maxsize=1)
def _images() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target.astype(np.int64)


def source(cfg: Config) -> SimulatedSource:
    """Digits images split into train/test pools and cut into one vertical strip per party."""
    images, labels = _images()
    n_test = int(round(cfg.dataset.test_fraction * len(labels)))
    test, train = stratified_choice(np.arange(len(labels)), labels, n_test, rng_for(cfg.seed, TEST_SPLIT))
    train, test = np.sort(train), np.sort(test)
    blocks = image_blocks(images[train], images[test], cfg.dataset.num_passive + 1, max_value=16.0)  # pixels 0..16
    return SimulatedSource(y_train=labels[train], y_test=labels[test], class_names=CLASS_NAMES, blocks=blocks)
