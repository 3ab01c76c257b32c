"""The seed app's preprocessing, kept only to show what ours is measured against."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def seed_style(data: bytes) -> np.ndarray:
    """Resize to 28x28, grayscale, invert: what the original seed app did to every upload."""
    image = Image.open(io.BytesIO(data)).convert("L").resize((28, 28))
    return 255 - np.asarray(image, dtype=np.uint8)
