"""A model version as the model server runs it: its SavedModel, asked through its serving
signature (recognizer.contract), here in this process with TensorFlow."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from recognizer import contract

BATCH = 1000  # images per call (256 gave the same probabilities, to the bit, on MNIST test)
_PIXELS = contract.INPUTS[contract.IMAGE].dtype

Predict = Callable[[np.ndarray], np.ndarray]  # uint8 [n, 28, 28] -> probabilities [n, 10]


def served(version_dir: Path) -> Predict:
    """The version's `probabilities` for [n, 28, 28] pixels (made uint8), in batches."""
    signature = tf.saved_model.load(str(version_dir)).signatures[contract.SIGNATURE]

    def probabilities(images: np.ndarray) -> np.ndarray:
        pixels = np.asarray(images, dtype=_PIXELS)
        batches = (pixels[start : start + BATCH] for start in range(0, len(pixels), BATCH))
        outputs = [signature(**{contract.IMAGE: tf.constant(batch)}) for batch in batches]
        return np.concatenate([output[contract.PROBABILITIES].numpy() for output in outputs])

    return probabilities
