"""A version's reference profile for drift (recognizer/drift.py), from the validation split.

    python -m training.profile --version 5       # writes function/recognizer/profiles/v5.json

The validation split is train.py's: the last 5,000 MNIST training images, held out from
fitting. Each goes through the committed SavedModel as the function sends it (28x28
uint8) and is judged by the version's verdict threshold, as the function judges it; the
profile is each drift signal's shares over those answers and inputs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from recognizer import contract, drift, verdict
from recognizer.config import Settings
from training.data import load_mnist
from training.train import VALIDATION_IMAGES

MODELS = Path(__file__).resolve().parents[1] / "models" / "mnist"


def predict(version: int, images: np.ndarray) -> np.ndarray:
    """The committed version's probabilities for uint8 images [n, 28, 28]."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(MODELS / str(version)))
    signature = loaded.signatures[contract.SIGNATURE]
    out = [
        signature(**{contract.IMAGE: tf.constant(images[i : i + 1000])})[contract.PROBABILITIES]
        for i in range(0, len(images), 1000)
    ]
    return np.concatenate([o.numpy() for o in out])


def observations(version: int, images: np.ndarray) -> list[drift.Observation]:
    """What the function would record for each image: digit, confidence, verdict, input."""
    policy = Settings().verdict_policy
    probabilities = predict(version, images)
    found = []
    for image, p in zip(images, probabilities, strict=True):
        shape = verdict.measure(image.astype(np.float32) / 255, policy)
        kind = verdict.judge(p, shape, policy, version).kind
        found.append(drift.Observation(int(p.argmax()), float(p.max()), kind, image))
    return found


def validation_images() -> np.ndarray:
    return load_mnist().x_train[-VALIDATION_IMAGES:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", type=int, required=True)
    args = parser.parse_args()
    reference = drift.profile(observations(args.version, validation_images()))
    path = drift.PROFILES / f"v{args.version}.json"
    path.parent.mkdir(exist_ok=True)
    about = f"v{args.version} on the {VALIDATION_IMAGES:,} validation images (training.profile)"
    drift.save_profile(path, reference, about)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
