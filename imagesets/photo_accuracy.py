"""Accuracy on phone photos (imagesets.photos), per kind: our preprocessing and the seed
app's, both feeding model v2.

    .venv/bin/python -m imagesets.photo_accuracy [--per-kind 100] [--start 3000] [--seed 11]

The model runs through TensorFlow in this process, for speed (the function itself never
imports TensorFlow). Besides accuracy: "no digit" counts photos preprocessing found blank
(scored wrong), "touches edge" those whose ink map the verdict (default policy) finds
touching the frame's edge, and "doubted" those it does not call a digit (unsure or not a
digit, for any reason). Put another copy of function/ first on PYTHONPATH to measure its
preprocessing instead.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from imagesets import photos
from imagesets.seed_style import seed_style
from recognizer import preprocess, verdict
from training.data import load_mnist

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "mnist" / "2"

Model = Callable[[np.ndarray], np.ndarray]  # uint8 [-1, 28, 28] -> probabilities [-1, 10]


@dataclass(frozen=True)
class Score:
    """One kind's results; every count is of photos."""

    photos: int
    ours: int
    seed: int
    no_digit: int
    touches_edge: int
    doubted: int


def measure(shots: list[tuple[str, int, bytes]], model: Model | None = None) -> dict[str, Score]:
    """Score every photo through both preprocessings, by kind, in the order of `shots`."""
    model = model or tensorflow_model()
    policy = verdict.VerdictPolicy()
    inks, ours, seed = [], [], []
    for _, _, data in shots:
        image = preprocess.decode(data, max_pixels=40_000_000)
        try:
            ink = preprocess.ink_map(image)
        except preprocess.BlankImage:
            ink = None
        inks.append(ink)
        ours.append(np.zeros((28, 28), np.uint8) if ink is None else preprocess.to_field(ink))
        seed.append(seed_style(data))
    labels = np.array([label for _, label, _ in shots])
    probabilities = model(np.stack(ours))
    right_seed = model(np.stack(seed)).argmax(axis=1) == labels
    found = np.array([ink is not None for ink in inks])
    right_ours = (probabilities.argmax(axis=1) == labels) & found
    shapes = [None if ink is None else verdict.measure(ink, policy) for ink in inks]
    edge = np.array([shape is not None and shape.touches_edge for shape in shapes])
    doubted = np.array(
        [
            shape is None or verdict.judge(p, shape, policy).kind != verdict.DIGIT
            for p, shape in zip(probabilities, shapes, strict=True)
        ]
    )
    kinds = np.array([kind for kind, _, _ in shots])
    scores = {}
    for kind in dict.fromkeys(kinds.tolist()):
        of = kinds == kind
        scores[kind] = Score(
            photos=int(of.sum()),
            ours=int(right_ours[of].sum()),
            seed=int(right_seed[of].sum()),
            no_digit=int((~found)[of].sum()),
            touches_edge=int(edge[of].sum()),
            doubted=int(doubted[of].sum()),
        )
    return scores


def tensorflow_model(path: Path = MODEL) -> Model:
    """Model v2's serving signature as a function of a uint8 [-1, 28, 28] batch."""
    from training import saved_model  # only here: the rest is usable without TensorFlow

    return saved_model.served(path)


def table(scores: dict[str, Score]) -> str:
    """The per-kind figures as a Markdown table, with the total last."""
    rows = [
        "| kind | photos | ours | seed-style | no digit | touches edge | doubted |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    total = Score(*(sum(getattr(s, f.name) for s in scores.values()) for f in fields(Score)))
    for kind, score in [*scores.items(), ("**all photos**", total)]:
        rows.append(
            f"| {kind} | {score.photos} | {score.ours / score.photos:.1%} "
            f"| {score.seed / score.photos:.1%} | {score.no_digit} | {score.touches_edge} "
            f"| {score.doubted} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-kind", type=int, default=100)
    parser.add_argument("--start", type=int, default=3000, help="first MNIST test index")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    mnist = load_mnist()
    digits = mnist.x_test[args.start : args.start + args.per_kind]
    labels = mnist.y_test[args.start : args.start + args.per_kind]
    shots = photos.render_photos(digits, labels, args.seed, args.per_kind)
    print(table(measure(shots)))


if __name__ == "__main__":
    main()
