"""v4's fitting: v2's digit head unchanged, beside a second network that says "not a digit".

Outlier exposure (v3) teaches one network both to name digits and to spread its
probability on what is not one; in this small network the two pull against each other:
the fine-tuned weights doubt twice as often as v3 but lose 0.17 points of MNIST test
accuracy, and v3's half-and-half mix keeps the accuracy but turns away only three
non-digits in four. v4 separates the jobs:

- the digit head is v2's network as exported (its argmax, so its MNIST accuracy, is
  v2's), with softmax(logits / T) and T fitted on the validation digits (Guo et al. 2017);
- the rejector is a copy of v2's network with a one-unit head, fine-tuned as a binary
  classifier: digits (MNIST's training digits, and some of them rendered as uploads and
  phone photos through the function's preprocessing, so that "came through the upload
  path" is no clue) against the "train" split of imagesets.nondigits;
- the exported probabilities are p = (1 - q) * softmax(z / T) + q / 10, q the rejector's
  probability that the input is not a digit. They sum to 1, their argmax is the digit
  head's, and a non-digit gets a flat distribution, which the verdict policy turns away
  for its low top probability. The signature is every version's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from imagesets import photos, renderings
from recognizer import contract
from training import models, uploads
from training.calibration import fit_temperature
from training.data import Mnist

RENDERED_DIGITS = 1_000  # fit digits rendered in every renderings kind (5,000 uploads)
PHOTOS_PER_KIND = 100  # fit digits as phone photos, in every photos kind (1,100 uploads)
# Each batch's share of raw MNIST digits, digits through the upload path, and non-digits.
MIX = {"mnist": 0.4, "uploads": 0.2, "nondigits": 0.4}
# Added to the rejector's logit before folding: it was trained on batches MIX["nondigits"]
# non-digits, far more than real uploads hold, and doubted a tail of real digits; the
# shift (a prior correction) was chosen with VERDICT_MIN_CONFIDENCE on the validation split.
DOUBT_SHIFT = -4.0
MAX_DOUBT = 1 - 1e-4  # q below 1, so (1 - q) * softmax keeps its argmax in float32


@dataclass(frozen=True)
class Start:
    """What a fit starts from: a digit head's weights (small_cnn's, with logits), and a
    rejector's when a rejecting version is fine-tuned again (`--from-store`); without one,
    the rejector starts from the head's own trunk, as v4 did."""

    head: list[np.ndarray]
    doubt: list[np.ndarray] | None = None


@dataclass(frozen=True)
class Fitted:
    model: keras.Model  # what is exported: float pixels in, probabilities out
    temperature: float
    history: dict[str, list[float]]


def rejector() -> keras.Model:
    """small_cnn's layers with one logit: is this not a digit?"""
    trunk = models.small_cnn(logits=True)
    head = keras.layers.Dense(1, name="not_a_digit")
    return keras.Sequential([keras.Input((28, 28)), *trunk.layers[:-1], head], name="rejector")


def combined(
    digits: keras.Model, doubt: keras.Model, temperature: float, shift: float = DOUBT_SHIFT
) -> keras.Model:
    """The exported model: both networks on the same pixels, folded into
    (1 - q) * softmax(z / T) + q / 10 with q = sigmoid(rejector logit + shift)."""
    pixels = keras.Input((28, 28))
    q = keras.ops.clip(keras.ops.sigmoid(doubt(pixels) + shift), 0.0, MAX_DOUBT)
    probabilities = (1 - q) * keras.ops.softmax(digits(pixels) / temperature, axis=-1) + q / 10
    return keras.Model(pixels, probabilities, name="small_cnn_with_rejector")


def is_rejecting(version_dir: Path) -> bool:
    """Whether the exported version holds a rejector beside its digit head (as v4 does)."""
    loaded = tf.saved_model.load(str(version_dir))
    return any(v.name.startswith("rejector/") for v in loaded.variables)


def saved_start(version_dir: Path, x_val: np.ndarray, y_val: np.ndarray) -> Start:
    """A rejecting version's two networks, to fine-tune again.

    The export keeps the combined model's variables in its weights' order (rejector first,
    as `combined` calls it first). The split is checked: the rebuilt model, with T fitted
    on the validation digits as the version's own fit did, must answer as the SavedModel.
    """
    loaded = tf.saved_model.load(str(version_dir))
    values = [v.numpy() for v in loaded.variables if not v.name.startswith("seed_generator")]
    head, doubt = models.small_cnn(logits=True), rejector()
    split = len(doubt.weights)
    if [v.shape for v in values] != [tuple(w.shape) for w in doubt.weights + head.weights]:
        raise ValueError(f"{version_dir} does not hold a digit head and a rejector")
    doubt.set_weights(values[:split])
    head.set_weights(values[split:])
    temperature = fit_temperature(head.predict(x_val.astype(np.float32), verbose=0), y_val)
    probe = x_val[:64]
    signature = loaded.signatures[contract.SIGNATURE]
    expected = signature(**{contract.IMAGE: tf.constant(probe)})[contract.PROBABILITIES]
    rebuilt = combined(head, doubt, temperature).predict(probe.astype(np.float32), verbose=0)
    np.testing.assert_allclose(rebuilt, expected.numpy(), atol=1e-4)
    return Start(values[split:], values[:split])


def digit_upload_fields(
    mnist: Mnist, seed: int, rendered: int = RENDERED_DIGITS, per_photo_kind: int = PHOTOS_PER_KIND
) -> dict[str, np.ndarray]:
    """Fit digits (the first MNIST training images) as uploads (`rendered` in each kind) and
    phone photos, through the function's preprocessing, cached: the positives that look
    as non-digits do."""
    count = max(rendered, per_photo_kind)
    digits, labels = mnist.x_train[:count], mnist.y_train[:count]

    def make() -> dict[str, np.ndarray]:
        drawn = [
            (kind, data) for kind, _, data in renderings.render_all(digits[:rendered], seed=seed)
        ]
        shot = [
            (kind, data)
            for kind, _, data in photos.render_photos(
                digits, labels, seed=seed + 1, per_kind=per_photo_kind
            )
        ]
        return uploads.to_fields(drawn + shot)

    name = f"digit-uploads-{count}-{seed}"
    if (rendered, per_photo_kind) != (RENDERED_DIGITS, PHOTOS_PER_KIND):
        name = f"digit-uploads-{rendered}-{per_photo_kind}-{seed}"
    return uploads.cached(name, make, (digits, labels))


def fit(
    digits: np.ndarray,
    digit_uploads: np.ndarray,
    negatives: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    start: Start,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> Fitted:
    """The digit head (`start.head`, T on the validation digits) and a rejector fine-tuned
    from `start.doubt` or else the head's weights, folded into one model. An epoch is as
    many batches as see each of `digits` once (they are MIX["mnist"] of every batch)."""
    head = models.small_cnn(logits=True)
    head.set_weights(start.head)
    head.trainable = False
    temperature = fit_temperature(head.predict(x_val.astype(np.float32), verbose=0), y_val)

    doubt = rejector()
    doubt.set_weights(start.doubt or start.head[:-2] + doubt.layers[-1].get_weights())
    steps_per_epoch = math.ceil(len(digits) / (batch_size * MIX["mnist"]))
    doubt.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(learning_rate, epochs * steps_per_epoch)
        ),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")],
    )
    # Validation: the held-out digits, all of which should be called digits (label 0).
    history = doubt.fit(
        _batches(digits, digit_uploads, negatives, batch_size, seed),
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        validation_data=(x_val.astype(np.float32), np.zeros((len(x_val), 1), np.float32)),
        verbose=2,
    )
    return Fitted(
        combined(head, doubt, temperature),
        temperature,
        {key: [float(v) for v in values] for key, values in history.history.items()},
    )


def _batches(
    digits: np.ndarray, digit_uploads: np.ndarray, negatives: np.ndarray, size: int, seed: int
) -> tf.data.Dataset:
    """Endless batches drawn MIX-wise from the three sets (label 1: not a digit), augmented."""

    def endless(images: np.ndarray, label: float, offset: int) -> tf.data.Dataset:
        return (
            tf.data.Dataset.from_tensor_slices(images.astype(np.float32))
            .shuffle(len(images), seed=seed + offset, reshuffle_each_iteration=True)
            .repeat()
            .map(lambda image: (image, tf.constant([label])))
        )

    parts = [endless(digits, 0.0, 0), endless(digit_uploads, 0.0, 1), endless(negatives, 1.0, 2)]
    augment = models.augmentation(seed)
    return (
        tf.data.Dataset.sample_from_datasets(parts, weights=list(MIX.values()), seed=seed)
        .batch(size)
        .map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
