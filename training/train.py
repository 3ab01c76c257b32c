"""Train one model generation, evaluate it, and export it as a new version."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training import models
from training.data import Mnist, load_mnist
from training.evaluate import write_report
from training.export import export_version

VALIDATION_IMAGES = 5_000  # held out from the 60,000 training images for the curves


@dataclass(frozen=True)
class Recipe:
    build: str  # a function name in training.models
    epochs: int
    batch_size: int
    learning_rate: float
    augment: bool


RECIPES = {
    "softmax": Recipe(
        "softmax_regression", epochs=5, batch_size=100, learning_rate=1e-3, augment=False
    ),
    "cnn": Recipe("small_cnn", epochs=16, batch_size=128, learning_rate=3e-3, augment=True),
}


def train_version(
    arch: str,
    version: int,
    models_dir: Path,
    reports_dir: Path,
    seed: int = 42,
    epochs: int | None = None,
    mnist: Mnist | None = None,
) -> dict[str, object]:
    """Train `arch`, export it as `models_dir/mnist/<version>`, write its report; return metrics."""
    recipe = RECIPES[arch]
    epochs = epochs or recipe.epochs
    keras.utils.set_random_seed(seed)
    data = mnist or load_mnist()
    print(f"data: {data.source}")
    x_fit, y_fit = data.x_train[:-VALIDATION_IMAGES], data.y_train[:-VALIDATION_IMAGES]
    x_val, y_val = data.x_train[-VALIDATION_IMAGES:], data.y_train[-VALIDATION_IMAGES:]

    model = getattr(models, recipe.build)()
    steps = epochs * int(np.ceil(len(x_fit) / recipe.batch_size))
    model.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(recipe.learning_rate, steps)
        ),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    started = time.monotonic()
    history = model.fit(
        _training_batches(x_fit, y_fit, recipe, seed),
        validation_data=(x_val.astype(np.float32), y_val),
        epochs=epochs,
        verbose=2,
    )
    train_seconds = time.monotonic() - started

    predicted = np.argmax(model.predict(data.x_test.astype(np.float32), verbose=0), axis=1)
    path = export_version(model, models_dir / "mnist", version, warmup_images=data.x_test[:64])
    size = sum(
        f.stat().st_size for f in path.rglob("*") if f.is_file() and "assets.extra" not in f.parts
    )
    details = {
        "version": version,
        "architecture": model.name,
        "parameters": model.count_params(),
        "epochs": epochs,
        "seed": seed,
        "augmentation": recipe.augment,
        "train_seconds": round(train_seconds, 1),
        "saved_model_bytes": size,
        "data_source": data.source.split("site-packages/")[-1],
    }
    metrics = write_report(
        reports_dir / f"v{version}",
        f"mnist v{version} ({model.name})",
        data.y_test,
        predicted,
        {key: [float(v) for v in values] for key, values in history.history.items()},
        details,
    )
    print(
        f"v{version}: test accuracy {metrics['test_accuracy']:.4f}, "
        f"SavedModel {size:,} bytes, {path}"
    )
    return metrics


def _training_batches(x: np.ndarray, y: np.ndarray, recipe: Recipe, seed: int) -> tf.data.Dataset:
    batches = (
        tf.data.Dataset.from_tensor_slices((x.astype(np.float32), y))
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(recipe.batch_size)
    )
    if recipe.augment:
        augment = models.augmentation(seed)
        batches = batches.map(
            lambda images, labels: (augment(images, training=True), labels),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return batches.prefetch(tf.data.AUTOTUNE)
