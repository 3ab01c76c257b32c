"""Image sets as the model sees them in service: upload files through the function's own
preprocessing, to 28x28 fields, cached on disk (making them costs minutes of CPU).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from imagesets import nondigits, renderings
from imagesets.nondigits import Split
from recognizer.preprocess import BlankImage, to_mnist
from training.data import Mnist

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / "var" / "cache" / "uploads"
# A cache is valid for the code that made it: the generators and the preprocessing.
SOURCES = (
    ROOT / "imagesets" / "nondigits.py",
    ROOT / "imagesets" / "renderings.py",
    ROOT / "function" / "recognizer" / "preprocess.py",
)


def to_fields(uploads: list[tuple[str, bytes]]) -> dict[str, np.ndarray]:
    """`fields` uint8 [n, 28, 28], their `kinds` and their `index` in `uploads`.

    Uploads that are blank are left out (the service answers those 422 without asking the
    model) and their kinds listed in `blank_kinds`.
    """
    fields, kept, blank = [], [], []
    for index, (kind, data) in enumerate(uploads):
        try:
            fields.append(to_mnist(data))
            kept.append(index)
        except BlankImage:
            blank.append(kind)
    return {
        "fields": np.stack(fields).astype(np.uint8),
        "kinds": np.array([uploads[i][0] for i in kept], dtype=str),
        "index": np.array(kept, dtype=np.int64),
        "blank_kinds": np.array(blank, dtype=str),
    }


def cached(
    name: str, make: Callable[[], dict[str, np.ndarray]], inputs: tuple[np.ndarray, ...]
) -> dict[str, np.ndarray]:
    """`make()`'s arrays, from CACHE_DIR/<name>-<hash>.npz when they were made before.

    The hash covers the code (SOURCES) and the `inputs` the set is made from.
    """
    digest = hashlib.sha256()
    for path in SOURCES:
        digest.update(path.read_bytes())
    for array in inputs:
        digest.update(np.ascontiguousarray(array).tobytes())
    path = CACHE_DIR / f"{name}-{digest.hexdigest()[:12]}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return {key: stored[key] for key in stored.files}
    arrays = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp.npz")
    np.savez_compressed(partial, **arrays)
    partial.rename(path)
    return arrays


def nondigit_fields(
    split: Split, per_kind: int | Mapping[str, int], seed: int, mnist: Mnist
) -> dict[str, np.ndarray]:
    """The nondigit set of `split` (imagesets.nondigits.make_set's arguments) as fields, cached."""
    counts = per_kind if isinstance(per_kind, Mapping) else dict.fromkeys(nondigits.KINDS, per_kind)
    drawn_from = nondigits.source(split, mnist)
    return cached(
        f"nondigits-{split}-{sum(counts.values())}-{seed}",
        lambda: to_fields(nondigits.make_set(counts, seed=seed, split=split, mnist=mnist)),
        (drawn_from.digits, drawn_from.labels, np.array(sorted(counts.items()), dtype=str)),
    )


def rendered_digit_fields(count: int, mnist: Mnist) -> dict[str, np.ndarray]:
    """The first `count` MNIST test digits in every `renderings` kind, as fields with `labels`."""

    def make() -> dict[str, np.ndarray]:
        rendered = renderings.render_all(mnist.x_test[:count])
        arrays = to_fields([(kind, data) for kind, _, data in rendered])
        arrays["labels"] = mnist.y_test[[rendered[i][1] for i in arrays["index"]]]
        return arrays

    return cached(f"renderings-{count}", make, (mnist.x_test[:count], mnist.y_test[:count]))
