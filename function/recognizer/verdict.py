"""How far to trust an answer: "digit", "unsure" or "not_a_digit", with the reasons why.

A model trained on MNIST names a digit for anything, and usually with high confidence.
The verdict combines two kinds of evidence, both pure functions of what the function
already has: the shape of the ink that preprocessing found (is it inside the picture,
of a digit's size and proportions?) and the model's probabilities (does one
digit stand out, or several, or none?). The thresholds are settings (`VerdictPolicy`);
their defaults were chosen on the project's validation sets (docs/verdicts.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from recognizer.preprocess import FIELD

DIGIT = "digit"
UNSURE = "unsure"
NOT_A_DIGIT = "not_a_digit"
VERDICTS = (DIGIT, UNSURE, NOT_A_DIGIT)
# Reason codes, the contract's machine words (README, "API"); the shape's come first.
TOUCHES_EDGE = "touches_edge"  # the ink runs off the edge of the picture
TOO_LITTLE_INK = "too_little_ink"  # a dot or a speck, not a written digit
UNUSUAL_SHAPE = "unusual_shape"  # far wider than tall: no digit is
LOW_CONFIDENCE = "low_confidence"  # the model favours no digit
AMBIGUOUS = "ambiguous"  # two or three digits are plausible
REASONS = (TOUCHES_EDGE, TOO_LITTLE_INK, UNUSUAL_SHAPE, LOW_CONFIDENCE, AMBIGUOUS)

STRONG_INK = 0.25  # ink map level that counts as a stroke, not a shadow or a halo
MAX_CANDIDATES = 3


@dataclass(frozen=True)
class VerdictPolicy:
    """The thresholds, each a setting (VERDICT_* in the README)."""

    # The top probability the service stands by: the stable version's (v5, chosen for v4), and
    # each version calibrated otherwise its own (VERDICT_MIN_CONFIDENCE_BY_VERSION), so that a
    # canary and a rollback are judged as they were chosen (docs/verdicts.md).
    min_confidence: float = 0.45
    min_confidence_by_version: Mapping[int, float] = field(
        default_factory=lambda: MappingProxyType({3: 0.6})
    )
    min_candidate: float = 0.1  # a digit this probable is a candidate
    min_unsure_mass: float = 0.8  # unsure (not "not a digit") if the candidates hold this much
    min_ink_extent: float = 0.08  # the ink's longer side over the picture's: below it, a dot
    max_aspect: float = 1.6  # width over height of the ink: above it, not one digit
    edge_margin: float = 0.01  # the border band, as a share of the picture's longer side

    def min_confidence_of(self, version: int | None) -> float:
        """The top probability stood by for answers of model `version`."""
        return self.min_confidence_by_version.get(version, self.min_confidence)


@dataclass(frozen=True)
class Shape:
    """What the verdict needs to know about the ink, measured once per image."""

    touches_edge: bool
    ink_extent: float  # the ink's bounding box's longer side over the picture's
    aspect: float  # the ink's width over its height


@dataclass(frozen=True)
class Verdict:
    kind: str  # one of VERDICTS
    candidates: tuple[int, ...]  # the plausible digits, most likely first
    reasons: tuple[str, ...]  # REASONS codes, most important first; none for DIGIT


def measure(ink: np.ndarray, policy: VerdictPolicy) -> Shape:
    """The ink's shape, from preprocessing's ink map (paper, light and noise removed)."""
    strong = ink >= STRONG_INK
    rows = np.flatnonzero(strong.any(axis=1))
    cols = np.flatnonzero(strong.any(axis=0))
    if rows.size == 0:  # faint ink only: all of it is a speck as far as shape goes
        return Shape(touches_edge=False, ink_extent=0.0, aspect=1.0)
    height, width = ink.shape
    band = max(1, round(policy.edge_margin * max(height, width)))
    # A picture no larger than MNIST's field is already centred by MNIST's own rule, which
    # lets about 1% of its test digits touch the border: only larger pictures are checked.
    touches = max(height, width) > FIELD and (
        rows[0] < band or cols[0] < band or rows[-1] >= height - band or cols[-1] >= width - band
    )
    ink_height, ink_width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    return Shape(
        touches_edge=bool(touches),
        ink_extent=max(ink_height, ink_width) / max(height, width),
        aspect=ink_width / ink_height,
    )


def judge(
    probabilities: np.ndarray, shape: Shape, policy: VerdictPolicy, version: int | None = None
) -> Verdict:
    """The verdict on one image from its shape and model `version`'s ten probabilities."""
    order = np.argsort(-probabilities, kind="stable")
    candidates = tuple(
        int(d) for d in order[:MAX_CANDIDATES] if probabilities[d] >= policy.min_candidate
    )
    reasons = _shape_reasons(shape, policy)
    if reasons:
        return Verdict(NOT_A_DIGIT, candidates, reasons)
    top = int(order[0])
    if probabilities[top] >= policy.min_confidence_of(version):
        return Verdict(DIGIT, (top,), ())
    mass = float(sum(probabilities[d] for d in candidates))
    if len(candidates) >= 2 and mass >= policy.min_unsure_mass:
        return Verdict(UNSURE, candidates, (AMBIGUOUS,))
    return Verdict(NOT_A_DIGIT, candidates, (LOW_CONFIDENCE,))


def _shape_reasons(shape: Shape, policy: VerdictPolicy) -> tuple[str, ...]:
    found = (
        (TOUCHES_EDGE, shape.touches_edge),
        (TOO_LITTLE_INK, shape.ink_extent < policy.min_ink_extent),
        (UNUSUAL_SHAPE, shape.aspect > policy.max_aspect),
    )
    return tuple(code for code, present in found if present)
