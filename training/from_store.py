"""`python -m training --from-store`: a new version from MNIST and what users corrected.

1. Read the corrected records from the prediction store (training/corrections.py), one per
   upload SHA-256 (its latest correction).
2. Hold out a share of them, chosen by each upload's SHA-256, so the same uploads are
   held out however the store grows.
3. Fine-tune the version that serves `stable` (or `--from-version`) as it was made. One
   like v3 (training/outlier_exposure.py): on MNIST's training digits plus the corrected
   digits, with the nondigit uploads and the uploads people marked "not a digit" as
   outliers, then a temperature fitted on MNIST's held-out validation digits. One with a
   rejector, like v4 (training/rejection.py): its digit head kept, its rejector trained on
   with the corrected digits as digits and the "not a digit" marks as non-digits.
4. Evaluate the new model beside the one it started from on MNIST's test set and on the
   held-out corrections, and export it only if it is no worse on either (by more than
   `--max-drop`); otherwise print the report and export nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from training import corrections, outlier_exposure, rejection, uploads
from training.corrections import Correction
from training.data import Mnist, load_mnist
from training.export import export_version
from training.saved_model import served
from training.train import OUTLIER_KINDS, RECIPES, VALIDATION_IMAGES, WIDE_KINDS

HELD_OUT_SHARE = 0.2


@dataclass(frozen=True)
class Options:
    version: int  # the new version's number
    start_from: int  # the version fine-tuned
    models_dir: Path
    epochs: int = 1
    mnist_images: int | None = None  # a subset of MNIST's training digits, for a quick run
    outliers_per_kind: int | None = None  # nondigit uploads per kind (default: v3's)
    # A rejecting start's digits as uploads, per kind of upload and of photo (default: v4's).
    digit_uploads_per_kind: int | None = None
    held_out_share: float = HELD_OUT_SHARE
    max_drop: float = 0.0  # how much worse than the start the new version may be
    seed: int = 42


@dataclass(frozen=True)
class Scores:
    mnist_test: float
    held_out: float | None  # None when no correction was held out


def train_from_store(found: list[Correction], options: Options, mnist: Mnist | None = None) -> dict:
    """Train, compare, and export if no worse; the report (also printed) either way."""
    data = mnist or load_mnist()
    distinct = corrections.deduplicated(found)
    unique = corrections.capped(distinct, corrections.CORRECTIONS_PER_CLIENT)
    is_held = [corrections.held_out(c, options.held_out_share, options.seed) for c in unique]
    held = [c for c, out in zip(unique, is_held, strict=True) if out]
    kept = [c for c, out in zip(unique, is_held, strict=True) if not out]
    print(
        f"corrections: {len(found)} read, {len(distinct)} distinct 28x28 inputs after removing "
        f"duplicates, {len(unique)} after at most {corrections.CORRECTIONS_PER_CLIENT} per "
        f"correcting client; {len(kept)} to train on, {len(held)} held out"
    )
    print(f"trained on: {corrections.distribution(kept)}")
    x_fit, y_fit = data.x_train[:-VALIDATION_IMAGES], data.y_train[:-VALIDATION_IMAGES]
    if options.mnist_images is not None:
        x_fit, y_fit = x_fit[: options.mnist_images], y_fit[: options.mnist_images]
    digits = [c for c in kept if c.digit is not None]
    if digits:
        x_fit = np.concatenate([x_fit, np.stack([c.image for c in digits])])
        y_fit = np.concatenate([y_fit, np.array([c.digit for c in digits], dtype=y_fit.dtype)])
    start_dir = options.models_dir / "mnist" / str(options.start_from)
    rejecting = rejection.is_rejecting(start_dir)
    # A rejecting start is trained on with the newest rejector's negatives (v5's), v3 with its own.
    kinds = WIDE_KINDS if rejecting else OUTLIER_KINDS
    if options.outliers_per_kind is not None:
        kinds = dict.fromkeys(kinds, options.outliers_per_kind)
    print(f"outliers: {sum(kinds.values())} nondigit uploads (made once, then cached)")
    negatives = uploads.nondigit_fields("train", kinds, options.seed, data)["fields"]
    marked = [c.image for c in kept if c.digit is None]
    if marked:
        negatives = np.concatenate([negatives, np.stack(marked)])
    started = time.monotonic()
    print(f"fine-tuning v{options.start_from} on {len(x_fit)} digits, {len(negatives)} outliers")
    x_val, y_val = data.x_train[-VALIDATION_IMAGES:], data.y_train[-VALIDATION_IMAGES:]
    if rejecting:
        corrected = np.stack([c.image for c in digits]) if digits else None
        model, temperature = _refit_rejector(
            start_dir, x_fit, corrected, negatives, x_val, y_val, options, data
        )
    else:
        fitted = outlier_exposure.fit(
            x_fit,
            y_fit,
            x_val,
            y_val,
            negatives,
            start_from=start_dir,
            epochs=options.epochs,
            batch_size=RECIPES["cnn_oe"].batch_size,
            learning_rate=RECIPES["cnn_oe"].learning_rate,
            seed=options.seed,
        )
        mix = outlier_exposure.mixed(fitted.start, fitted.tuned, outlier_exposure.MIX)
        model, temperature = outlier_exposure.calibrated(mix, x_val, y_val)
    seconds = time.monotonic() - started

    def new(images: np.ndarray) -> np.ndarray:
        return np.argmax(model.predict(images.astype(np.float32), verbose=0), axis=1)

    started_from = served(start_dir)
    before = _scores(lambda images: started_from(images).argmax(axis=1), data, held)
    after = _scores(new, data, held)
    worse = [
        name
        for name, old, now in (
            ("MNIST test", before.mnist_test, after.mnist_test),
            ("held-out corrections", before.held_out, after.held_out),
        )
        if old is not None and now is not None and now < old - options.max_drop
    ]
    report = {
        "version": options.version,
        "fine_tuned_from": options.start_from,
        "recipe": "cnn_reject (its rejector)" if rejecting else "cnn_oe",
        "corrections_read": len(found),
        "inputs": len(distinct),
        "per_client_cap": corrections.CORRECTIONS_PER_CLIENT,
        "after_cap": len(unique),
        "clients": len({c.client for c in unique if c.client is not None}),
        "trained_on": len(kept),
        "trained_on_by_digit": corrections.distribution(kept),
        "held_out": len(held),
        "epochs": options.epochs,
        "train_seconds": round(seconds, 1),
        "temperature": round(temperature, 4),
        "mnist_test": {"before": before.mnist_test, "after": after.mnist_test},
        "held_out_corrections": {"before": before.held_out, "after": after.held_out},
        "max_drop": options.max_drop,
        "exported": not worse,
        "worse_on": worse,
    }
    if not worse:
        path = export_version(
            model, options.models_dir / "mnist", options.version, data.x_test[:64]
        )
        report["path"] = str(path)
    print(json.dumps(report, indent=2))
    return report


def _refit_rejector(
    start_dir: Path,
    x_fit: np.ndarray,
    corrected: np.ndarray | None,
    negatives: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    options: Options,
    data: Mnist,
) -> tuple[keras.Model, float]:
    """A version with a rejector (v4, v5), fine-tuned again as it was made: its digit head kept,
    its rejector trained on, with the corrected digits among the digits that came through
    the upload path and the uploads marked "not a digit" among the non-digits. The head
    is unchanged, so what the corrections teach is where to doubt, not how to read."""
    per_kind = options.digit_uploads_per_kind
    sizes = () if per_kind is None else (per_kind, per_kind)
    digit_uploads = rejection.digit_upload_fields(data, options.seed, *sizes)["fields"]
    if corrected is not None:
        digit_uploads = np.concatenate([digit_uploads, corrected])
    recipe = RECIPES["cnn_reject_wide"]
    fitted = rejection.fit(
        x_fit,
        digit_uploads,
        negatives,
        x_val,
        y_val,
        start=rejection.saved_start(start_dir, x_val, y_val),
        epochs=options.epochs,
        batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        seed=options.seed,
    )
    return fitted.model, fitted.temperature


def _scores(digits_of, data: Mnist, held: list[Correction]) -> Scores:
    """Accuracy on MNIST test, and on the held-out corrections (a "not a digit" correction
    is matched by no digit: held-out corrections measure digits only)."""
    mnist_test = float(np.mean(digits_of(data.x_test) == data.y_test))
    digits = [c for c in held if c.digit is not None]
    if not digits:
        return Scores(mnist_test, None)
    predicted = digits_of(np.stack([c.image for c in digits]))
    return Scores(mnist_test, float(np.mean(predicted == np.array([c.digit for c in digits]))))
