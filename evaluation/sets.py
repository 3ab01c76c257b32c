"""The labelled upload sets the verdicts are judged on, in two disjoint splits.

"validation" is where thresholds are chosen; "test" is what the acceptance figures
report, and nothing was tuned on it. Digits come from MNIST images no model trained on
(the 5,000 training images held out for validation, and the test set); non-digits are
imagesets.nondigits' "eval" split (its held-out fonts, shapes and MNIST test pairs, never
the "train" split that v3 saw), with a different seed per split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from imagesets import degraded, nondigits, photos, renderings
from training.data import Mnist

Split = Literal["validation", "test"]
VALIDATION_IMAGES = 5_000  # the last MNIST training images: held out by training (train.py)


@dataclass(frozen=True)
class Upload:
    group: str  # "mnist", "uploads", "photos", "degraded", "non-digits" or "held-out"
    kind: str  # the rendering within its group
    label: int | None  # the digit drawn, None for a non-digit
    data: bytes


@dataclass(frozen=True)
class Sizes:
    mnist: int = 10_000
    uploads_per_kind: int = 100
    photos_per_kind: int = 50
    nondigits_per_kind: int = 60
    degraded_per_kind: int = 50
    held_out_per_kind: int = 60


def build(split: Split, mnist: Mnist, sizes: Sizes) -> list[Upload]:
    """Every upload of `split`: MNIST as PNG, realistic uploads, phone photos, blurred and
    low-resolution scans, non-digits of the kinds training used and of kinds it never saw."""
    if split == "test":
        images, labels, seed = mnist.x_test, mnist.y_test, 1
    else:
        images = mnist.x_train[-VALIDATION_IMAGES:]
        labels, seed = mnist.y_train[-VALIDATION_IMAGES:], 2
    sets = [
        Upload("mnist", "MNIST as PNG", int(labels[i]), _png(images[i]))
        for i in range(min(sizes.mnist, len(images)))
    ]
    # Other digits than the MNIST-as-PNG ones where the split has enough, so each group
    # adds evidence of its own.
    start = min(2_000, len(images) - sizes.uploads_per_kind)
    chosen = slice(start, start + sizes.uploads_per_kind)
    sets += [
        Upload("uploads", kind, int(labels[chosen][index]), data)
        for kind, index, data in renderings.render_all(images[chosen], seed=7 + seed)
    ]
    taken = slice(len(images) - sizes.photos_per_kind, len(images))
    sets += [
        Upload("photos", kind, label, data)
        for kind, label, data in photos.render_photos(
            images[taken], labels[taken], seed=11 + seed, per_kind=sizes.photos_per_kind
        )
    ]
    # Blurred and low-resolution scans of digits the other groups do not use (issue 29).
    chosen = slice(4_000, len(images))
    sets += [
        Upload("degraded", kind, label, data)
        for kind, label, data in degraded.render_degraded(
            images[chosen], labels[chosen], seed=13 + seed, per_kind=sizes.degraded_per_kind
        )
    ]
    sets += [
        Upload("non-digits", kind, None, data)
        for kind, data in nondigits.make_set(
            sizes.nondigits_per_kind, seed=seed, split="eval", mnist=mnist
        )
    ]
    sets += [
        Upload("held-out", kind, None, data)
        for kind, data in nondigits.make_held_out(sizes.held_out_per_kind, seed=seed)
    ]
    return sets


def _png(pixels: np.ndarray) -> bytes:
    return renderings.encode(Image.fromarray(pixels), "PNG")
