"""Figures from answers: pure functions over what POST /predict said about each upload."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# The acceptance targets of issues 13 and 29, per group: the share that must come out right.
TARGETS = {
    "non-digits": 0.95,
    "mnist": 0.99,
    "uploads": 0.97,
    "photos": 0.97,
    "degraded": 0.97,
    "held-out": 0.90,
}
SHAPE_REASONS = frozenset({"touches_edge", "too_little_ink", "unusual_shape"})


@dataclass(frozen=True)
class Answer:
    group: str
    kind: str
    label: int | None
    status: int
    error: str | None  # the error code when status is not 200
    verdict: str | None
    digit: int | None
    reasons: tuple[str, ...]
    probabilities: tuple[float, ...]


def is_right(answer: Answer) -> bool:
    """A digit is right when the service stands by the right digit; a non-digit is right
    when it does not stand by any (an "unsure", a "not_a_digit", or "no digit found")."""
    if answer.label is None:
        return answer.error == "blank_image" or (answer.status == 200 and answer.verdict != "digit")
    return answer.status == 200 and answer.verdict == "digit" and answer.digit == answer.label


@dataclass(frozen=True)
class Row:
    group: str
    kind: str  # "all" for the group's total
    count: int
    right: float
    verdicts: dict[str, float]  # share of each verdict, and of "blank" (no digit found)


def table(answers: Iterable[Answer]) -> list[Row]:
    """A row per kind and one per group ("all"), groups in first-seen order."""
    by_kind: dict[tuple[str, str], list[Answer]] = defaultdict(list)
    by_group: dict[str, list[Answer]] = defaultdict(list)
    for answer in answers:
        by_kind[answer.group, answer.kind].append(answer)
        by_group[answer.group].append(answer)
    rows = []
    for group, members in by_group.items():
        rows += [_row(group, kind, found) for (g, kind), found in by_kind.items() if g == group]
        rows.append(_row(group, "all", members))
    return rows


def _row(group: str, kind: str, answers: Sequence[Answer]) -> Row:
    outcomes: dict[str, int] = defaultdict(int)
    for answer in answers:
        outcomes[answer.verdict or ("blank" if answer.error == "blank_image" else "error")] += 1
    return Row(
        group,
        kind,
        len(answers),
        sum(map(is_right, answers)) / len(answers),
        {name: count / len(answers) for name, count in sorted(outcomes.items())},
    )


def tradeoff(
    answers: Sequence[Answer], thresholds: Sequence[float]
) -> list[tuple[float, float, float]]:
    """(min_confidence, non-digits rejected, digits rejected) had VERDICT_MIN_CONFIDENCE
    been each threshold, every other rule as it was: a digit is stood by when its shape
    passed and the top probability reaches the threshold."""
    digits = [a for a in answers if a.label is not None and a.status == 200]
    others = [a for a in answers if a.label is None]
    out = []
    for threshold in thresholds:
        kept = [_stood_by(a, threshold) for a in digits]
        let_through = [a.status == 200 and _stood_by(a, threshold) for a in others]
        out.append(
            (
                threshold,
                1 - sum(let_through) / max(1, len(others)),
                1 - sum(kept) / max(1, len(digits)),
            )
        )
    return out


@dataclass(frozen=True)
class OpenSet:
    """How well the service's score tells the digits from one group of non-digits."""

    negatives: str  # the non-digit group
    auroc: float  # the chance a digit scores above a non-digit (ties count half)
    fpr_at_95: float  # the share of non-digits scoring at or above 95% of the digits


def score(answer: Answer) -> float:
    """How far the service stands by a digit for this upload: the top probability, or 0
    when a shape rule refused it or no digit was found (it would never be stood by)."""
    if answer.status != 200 or SHAPE_REASONS & set(answer.reasons):
        return 0.0
    return max(answer.probabilities)


def open_set(answers: Sequence[Answer], negatives: str) -> OpenSet:
    """AUROC and FPR at 95% recall of every digit upload against the group `negatives`,
    the figures the outlier-exposure literature reports (digits are the positives)."""
    positive = np.sort([score(a) for a in answers if a.label is not None])
    negative = np.array([score(a) for a in answers if a.group == negatives])
    if not len(positive) or not len(negative):
        raise ValueError(f"no digits or no {negatives!r} among the answers")
    below = np.searchsorted(positive, negative, side="left")
    at_or_below = np.searchsorted(positive, negative, side="right")
    above = len(positive) - at_or_below
    auroc = float(np.mean((above + 0.5 * (at_or_below - below)) / len(positive)))
    threshold = positive[int(np.floor(0.05 * len(positive)))]  # 95% of digits score this or more
    return OpenSet(negatives, auroc, float(np.mean(negative >= threshold)))


def _stood_by(answer: Answer, threshold: float) -> bool:
    return not SHAPE_REASONS & set(answer.reasons) and max(answer.probabilities) >= threshold
