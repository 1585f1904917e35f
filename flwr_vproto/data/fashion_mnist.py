"""Fashion-MNIST (28x28 grey images, 10 classes) from the IDX files of the Debian package ``dataset-fashion-mnist``.

Uses the official 60,000 train / 10,000 test split. The files are read from ``dataset.root`` (default: where the
Debian package installs them); gzipped and plain IDX files are both accepted. Nothing is ever downloaded.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flwr_vproto.data.partition import SimulatedSource, image_blocks
from flwr_vproto.data.types import DataError

if TYPE_CHECKING:  # only annotations: config never needs the data package, nor this it
    from flwr_vproto.config import Config

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_INSTALL = "install it with `apt-get install dataset-fashion-mnist` or set dataset.root to a directory of IDX files"


def _find(root: Path, stem: str) -> Path:
    """The IDX file ``stem`` under ``root``: gzipped or not, with the '-idx' or the '.idx' spelling."""
    candidates = [stem, stem.replace("-idx", ".idx")]
    for name in candidates:
        for suffix in (".gz", ""):
            path = root / f"{name}{suffix}"
            if path.is_file():
                return path
    raise DataError(f"Fashion-MNIST file {stem}[.gz] not found in {root}; {_INSTALL}")


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (unsigned-byte data only, which is what MNIST-style datasets use)."""
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)  # one call: much faster than streaming through gzip.open
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read IDX file {path}: {err}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise DataError(f"{path}: size does not match its IDX header shape {shape} (truncated file?)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


@functools.lru_cache(maxsize=1)
def _load(root: str) -> dict[str, np.ndarray]:
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"Fashion-MNIST directory {root} does not exist; {_INSTALL}")
    arrays = {key: read_idx(_find(base, stem)) for key, stem in _FILES.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]) or arrays[f"{split}_images"].ndim != 3:
            raise DataError(f"Fashion-MNIST {split} images and labels under {root} do not match")
    return arrays


def source(cfg: Config) -> SimulatedSource:
    """Official train/test pools, pixels scaled to [0, 1], cut into one vertical strip per party."""
    arrays = _load(str(cfg.dataset.root or DEFAULT_ROOT))
    blocks = image_blocks(arrays["train_images"], arrays["test_images"], cfg.dataset.num_passive + 1, max_value=255.0)
    return SimulatedSource(y_train=arrays["train_labels"].astype(np.int64),
                           y_test=arrays["test_labels"].astype(np.int64), class_names=CLASS_NAMES, blocks=blocks)
