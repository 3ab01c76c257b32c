"""v3's fitting: outlier exposure (Hendrycks et al. 2019), a weight mix with the starting
version (WiSE-FT, Wortsman et al. 2022), then temperature scaling (Guo et al. 2017).

Outlier exposure fine-tunes an earlier version on MNIST plus nondigit uploads (as the
function's preprocessing turns them into fields), minimising

    CE(digits, labels) + LAMBDA * CE(nondigits, uniform)

so that what is not a digit gets probability spread over the ten classes. On its own it
cost this small network 0.2 points of MNIST test accuracy (99.37% against v2's 99.54%):
digits that look like the nondigits nearest them lost their margin. Averaging the
fine-tuned weights with the starting ones (MIX = 0.5, WiSE-FT's default) keeps most of
both; v3's report has the whole curve. Temperature scaling then fits one T on the
validation digits and folds it into the last layer (kernel and bias divided by T): the
exported model is small_cnn ending in softmax(logits / T), with the same signature as
every version before it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from recognizer import contract
from training import models
from training.calibration import fit_temperature, softmax

LAMBDA = 0.5  # the outlier term's weight in Hendrycks et al.
NEGATIVES_PER_BATCH = 64  # beside each batch of 128 digits
MIX = 0.5  # the fine-tuned weights' share in the exported ones; the rest is the start's


@dataclass(frozen=True)
class Fitted:
    start: list[np.ndarray]  # the starting version's weights
    tuned: list[np.ndarray]  # after outlier exposure
    history: dict[str, list[float]]


class DigitAccuracy(keras.metrics.Mean):
    """Accuracy over the digits in a batch only (a uniform target has no right answer)."""

    def __init__(self, name: str = "accuracy", **kwargs: object) -> None:
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):  # Keras's signature
        is_digit = tf.cast(tf.reduce_max(y_true, axis=1) > 0.5, tf.float32)
        right = tf.cast(tf.argmax(y_true, axis=1) == tf.argmax(y_pred, axis=1), tf.float32)
        return super().update_state(right, sample_weight=is_digit)


def fit(
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    negatives: np.ndarray,
    *,
    start_from: Path,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> Fitted:
    """Fine-tune the SavedModel at `start_from` with outlier exposure."""
    model = models.small_cnn(logits=True)
    start = saved_weights(start_from, model)
    model.set_weights(start)
    # Batch normalisation keeps the statistics it learnt on digits: updated on batches a
    # third nondigit, they moved the digits' features and cost 5 points of accuracy in
    # a one-epoch trial (94.4% on validation digits, 0s down to 61%).
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    steps = epochs * math.ceil(len(x_fit) / batch_size)
    model.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(learning_rate, steps)
        ),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=[DigitAccuracy()],
    )
    history = model.fit(
        _batches(x_fit, y_fit, negatives, batch_size, seed),
        validation_data=(x_val.astype(np.float32), _one_hot(y_val)),
        epochs=epochs,
        verbose=2,
    )
    return Fitted(
        start,
        model.get_weights(),
        {key: [float(v) for v in values] for key, values in history.history.items()},
    )


def mixed(start: list[np.ndarray], tuned: list[np.ndarray], share: float) -> keras.Model:
    """small_cnn (logits) with weights (1 - share) * start + share * tuned."""
    model = models.small_cnn(logits=True)
    model.set_weights([(1 - share) * a + share * b for a, b in zip(start, tuned, strict=True)])
    return model


def calibrated(
    model: keras.Model, x_val: np.ndarray, y_val: np.ndarray
) -> tuple[keras.Model, float]:
    """The model to export, softmax(logits / T) with T fitted on the validation digits, and T."""
    val_logits = model.predict(x_val.astype(np.float32), verbose=0)
    temperature = fit_temperature(val_logits, y_val)
    served = _with_temperature(model, temperature)
    folded = served.predict(x_val[:256].astype(np.float32), verbose=0)
    np.testing.assert_allclose(folded, softmax(val_logits[:256], temperature), atol=1e-5)
    return served, temperature


def saved_weights(version_dir: Path, model: keras.Model) -> list[np.ndarray]:
    """The weights of an exported small_cnn version, in `model.weights` order.

    The export tracks the Keras model's variables in that order, with Dropout's random
    seed state among them (not a weight); a check that the copy answers as the SavedModel
    does catches any mismatch.
    """
    loaded = tf.saved_model.load(str(version_dir))
    values = [v.numpy() for v in loaded.variables if not v.name.startswith("seed_generator")]
    if [v.shape for v in values] != [tuple(w.shape) for w in model.weights]:
        raise ValueError(f"{version_dir} does not hold {model.name}'s weights")
    probe = np.random.default_rng(0).integers(0, 256, (8, 28, 28), dtype=np.uint8)
    signature = loaded.signatures[contract.SIGNATURE]
    expected = signature(**{contract.IMAGE: tf.constant(probe)})[contract.PROBABILITIES]
    copy = keras.models.clone_model(model)
    copy.set_weights(values)
    got = softmax(copy.predict(probe.astype(np.float32), verbose=0))
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    return values


def _with_temperature(model: keras.Model, temperature: float) -> keras.Model:
    """small_cnn with softmax(logits / T): the last layer's kernel and bias divided by T."""
    served = models.small_cnn()
    weights = model.get_weights()
    weights[-2] = weights[-2] / temperature
    weights[-1] = weights[-1] / temperature
    served.set_weights(weights)
    return served


def _one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(10, dtype=np.float32)[labels.astype(np.int64)]


def _batches(
    x: np.ndarray, y: np.ndarray, negatives: np.ndarray, batch_size: int, seed: int
) -> tf.data.Dataset:
    """Each batch: `batch_size` digits (one-hot, weight 1) and NEGATIVES_PER_BATCH nondigits
    (target 0.1 for every class), augmented together as v2's batches were."""
    # Keras divides the weighted sum of losses by the batch size: this weight makes the
    # nondigits' share LAMBDA times their mean loss beside the digits' mean loss.
    weight = LAMBDA * batch_size / NEGATIVES_PER_BATCH
    digits = (
        tf.data.Dataset.from_tensor_slices((x.astype(np.float32), _one_hot(y)))
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
    )
    outliers = (
        tf.data.Dataset.from_tensor_slices(negatives.astype(np.float32))
        .shuffle(len(negatives), seed=seed + 1, reshuffle_each_iteration=True)
        .repeat()
        .batch(NEGATIVES_PER_BATCH)
    )
    augment = models.augmentation(seed)

    def join(digit_batch, outlier_images):
        images, targets = digit_batch
        count = tf.shape(outlier_images)[0]
        uniform = tf.fill([count, 10], 0.1)
        weights = tf.concat([tf.ones(tf.shape(images)[:1]), tf.fill([count], weight)], axis=0)
        both = tf.concat([images, outlier_images], axis=0)
        return augment(both, training=True), tf.concat([targets, uniform], axis=0), weights

    return (
        tf.data.Dataset.zip(digits, outliers)
        .map(join, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
