"""The model generations. All take float pixels in [0, 255] shaped [-1, 28, 28]."""

from __future__ import annotations

import keras
from keras import layers


def softmax_regression() -> keras.Model:
    """v1: the classic tutorial model, one dense layer (about 92% on the test set)."""
    return keras.Sequential(
        [
            keras.Input((28, 28)),
            layers.Rescaling(1 / 255),
            layers.Flatten(),
            layers.Dense(10, activation="softmax"),
        ],
        name="softmax_regression",
    )


def small_cnn(logits: bool = False) -> keras.Model:
    """v2 and v3: a compact CNN (about 73k parameters) that reaches 99.4%+ and trains on a CPU.

    `logits`: end in the raw scores instead of the softmax, for losses and temperature
    scaling that work on logits (v3); the weights are the same either way.
    """

    def conv(filters: int) -> list[layers.Layer]:
        return [
            layers.Conv2D(filters, 3, padding="same", use_bias=False),
            layers.BatchNormalization(),
            layers.ReLU(),
        ]

    return keras.Sequential(
        [
            keras.Input((28, 28)),
            layers.Rescaling(1 / 255),
            layers.Reshape((28, 28, 1)),
            *conv(16),
            *conv(16),
            layers.MaxPooling2D(),
            *conv(32),
            *conv(32),
            layers.MaxPooling2D(),
            *conv(64),
            *conv(64),
            layers.GlobalAveragePooling2D(),
            layers.Dropout(0.2),
            layers.Dense(10, activation=None if logits else "softmax"),
        ],
        name="small_cnn",
    )


def augmentation(seed: int) -> keras.Sequential:
    """Small rotations, zooms and shifts, like the variation of real uploads after preprocessing."""
    return keras.Sequential(
        [
            layers.Reshape((28, 28, 1)),
            layers.RandomRotation(0.03, fill_mode="constant", seed=seed),
            layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 1),
            layers.RandomTranslation(0.08, 0.08, fill_mode="constant", seed=seed + 2),
            layers.Reshape((28, 28)),
        ],
        name="augmentation",
    )
