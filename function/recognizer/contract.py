"""The model contract: what every model version serves and the function asks of it.

One place for it: training exports it, the rollout tool checks a version against it
before offering it to the model server, the function and the benchmarks send and read
it. Plain names, dtypes as strings (numpy's and TensorFlow's names alike) and shapes as
tuples, -1 for any batch size, so that the function reads it without TensorFlow; the
TensorFlow-typed specs are built from it where they are needed.
"""

from __future__ import annotations

from dataclasses import dataclass

MODEL_NAME = "mnist"  # the model's name on the model server, unless configured otherwise
SIGNATURE = "serving_default"
IMAGE = "image"  # the input: 28x28 uint8 pixels, white ink on black
PROBABILITIES = "probabilities"  # one per digit, summing to 1
DIGIT = "digit"  # the most probable digit
SIDE = 28  # pixels per row and per column
CLASSES = 10


@dataclass(frozen=True)
class Tensor:
    """One named tensor of the signature."""

    dtype: str  # "uint8", "float32", "int64": numpy's and TensorFlow's name for it
    shape: tuple[int, ...]  # -1: any size (the batch)


INPUTS = {IMAGE: Tensor("uint8", (-1, SIDE, SIDE))}
OUTPUTS = {PROBABILITIES: Tensor("float32", (-1, CLASSES)), DIGIT: Tensor("int64", (-1,))}
