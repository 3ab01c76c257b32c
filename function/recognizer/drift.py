"""Drift: how far a version's recent answers and inputs are from its reference profile.

Label-free signals a model owner watches, each a distribution over a few fixed bins:
the predicted digit, the top-class confidence, the verdict, and three statistics of the
28x28 input the model saw (share of ink pixels, the ink's bounding box, mean brightness).
A reference profile holds each signal's shares over the validation set, written when a
version is trained (training/profile.py, function/recognizer/profiles/v<n>.json); a
window of live predictions is compared with it by the population stability index

    PSI = sum over bins of (p - q) * ln(p / q)

(p live, q reference shares, both smoothed so that an empty bin stays finite). Pure
functions: the function counts per bin for Prometheus (metrics.py), the rollout tool
reads windows from the store, bench/drift_canary.py measures detection and false alarms.

Thresholds (docs/monitoring.md has the measurements): PSI above 0.25 is the usual
"significant shift" line; a window under MIN_WINDOW predictions is not judged, because
with 10 bins the PSI of a window drawn from the reference itself is about
(bins - 1) / n, 0.045 at n = 200, and its spread would otherwise reach the line.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from recognizer.records import Record

PROFILES = Path(__file__).with_name("profiles")
PSI_DRIFT = 0.25  # significant shift (the credit-scoring convention PSI comes from)
MIN_WINDOW = 200  # predictions before a window is judged at all
SMOOTHING = 0.5  # added to each bin's count (Jeffreys' prior): no ln(0)
INK_LEVEL = 128  # a pixel of the model's input at or above this is ink

# Each signal's bins: named categories, or the upper edges of numeric bins (the last bin
# is open). The edges follow what the function's preprocessing makes of a digit: the ink
# fitted into 20x20 of 28x28, so extents cluster near 0.71 and ink shares near 0.1-0.2.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "digit": tuple(str(d) for d in range(10)),
    "verdict": ("digit", "unsure", "not_a_digit", "none"),
}
EDGES: dict[str, tuple[float, ...]] = {
    "confidence": (0.5, 0.7, 0.9, 0.99),
    "ink_share": (0.05, 0.1, 0.15, 0.2, 0.3),
    "ink_extent": (0.6, 0.68, 0.72, 0.76),
    "brightness": (0.05, 0.1, 0.15, 0.2),
}
SIGNALS = (*CATEGORIES, *EDGES)


def bins(signal: str) -> tuple[str, ...]:
    """The bin names of a signal: its categories, or `<edge` for each edge then `>=last`."""
    if signal in CATEGORIES:
        return CATEGORIES[signal]
    edges = EDGES[signal]
    return (*(f"<{edge:g}" for edge in edges), f">={edges[-1]:g}")


@dataclass(frozen=True)
class Observation:
    """One prediction's signals: the answer and its input (28x28 uint8, ink white)."""

    digit: int
    confidence: float
    verdict: str  # a verdict kind, or "none" for a record made before verdicts
    input_image: np.ndarray | bytes  # bytes: a record's 784, row-major


def of_record(record: Record) -> Observation:
    """A recorded prediction's signals."""
    kind = record.verdict.kind if record.verdict else "none"
    return Observation(record.digit, record.confidence, kind, record.input_image)


def input_statistics(image: np.ndarray) -> dict[str, float]:
    """Ink share, the ink bounding box's longer side over the side, mean brightness."""
    pixels = np.frombuffer(bytes(image), dtype=np.uint8).reshape(28, 28)
    ink = pixels >= INK_LEVEL
    if ink.any():
        rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
        extent = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) / 28
    else:
        extent = 0.0
    return {
        "ink_share": float(ink.mean()),
        "ink_extent": float(extent),
        "brightness": float(pixels.mean() / 255),
    }


def bin_of(signal: str, value: float | str) -> str:
    """The bin a value falls in."""
    if signal in CATEGORIES:
        name = str(value)
        return name if name in CATEGORIES[signal] else CATEGORIES[signal][-1]
    edges = EDGES[signal]
    return bins(signal)[bisect.bisect_right(edges, float(value))]


def binned(observation: Observation) -> dict[str, str]:
    """Each signal's bin for one prediction."""
    values: dict[str, float | str] = {
        "digit": observation.digit,
        "confidence": observation.confidence,
        "verdict": observation.verdict,
        **input_statistics(observation.input_image),
    }
    return {signal: bin_of(signal, values[signal]) for signal in SIGNALS}


Counts = dict[str, dict[str, int]]  # signal -> bin -> count
Profile = Mapping[str, Mapping[str, float]]  # signal -> bin -> reference share


def count(observations: Iterable[Observation]) -> Counts:
    """Bin counts of every signal over a window (every bin present, zeros included)."""
    counts: Counts = {signal: dict.fromkeys(bins(signal), 0) for signal in SIGNALS}
    for observation in observations:
        for signal, name in binned(observation).items():
            counts[signal][name] += 1
    return counts


ANSWER_SIGNALS = ("digit", "confidence", "verdict")


def count_answers(answers: Iterable[tuple[int, float, str]]) -> Counts:
    """Bin counts of the answer signals alone, from (digit, confidence, verdict) triples:
    what the rollout tool's rows hold (they carry no input)."""
    counts: Counts = {signal: dict.fromkeys(bins(signal), 0) for signal in ANSWER_SIGNALS}
    for answer in answers:
        for signal, value in zip(ANSWER_SIGNALS, answer, strict=True):
            counts[signal][bin_of(signal, value)] += 1
    return counts


def shares(counts: Mapping[str, int]) -> dict[str, float]:
    """Smoothed shares of a signal's bin counts (never 0, summing to 1)."""
    total = sum(counts.values()) + SMOOTHING * len(counts)
    return {name: (n + SMOOTHING) / total for name, n in counts.items()}


def psi(observed: Mapping[str, int], reference: Mapping[str, float]) -> float:
    """Population stability index of observed counts against reference shares."""
    live = shares(observed)
    return sum(
        (live[name] - reference[name]) * math.log(live[name] / reference[name])
        for name in reference
    )


@dataclass(frozen=True)
class Assessment:
    """A window against a reference: each signal's PSI, and whether it has drifted."""

    window: int  # predictions in the window
    psi: Mapping[str, float]

    @property
    def judged(self) -> bool:
        return self.window >= MIN_WINDOW

    @property
    def drifted(self) -> tuple[str, ...]:
        """The signals past the line (none while the window is too small to judge)."""
        if not self.judged:
            return ()
        return tuple(s for s in SIGNALS if s in self.psi and self.psi[s] > PSI_DRIFT)


def assess(counts: Counts, reference: Mapping[str, Mapping[str, float]]) -> Assessment:
    """The PSI of each signal counted in a window (all, or some: the rollout tool's rows
    carry no input) against a reference profile."""
    window = max((sum(c.values()) for c in counts.values()), default=0)
    return Assessment(window, {s: psi(c, reference[s]) for s, c in counts.items()})


def profile(observations: Sequence[Observation]) -> dict[str, dict[str, float]]:
    """A reference profile: each signal's smoothed shares over a (validation) set."""
    return {signal: shares(c) for signal, c in count(observations).items()}


def save_profile(path: Path, reference: Mapping[str, Mapping[str, float]], about: str) -> None:
    """Write a profile as JSON (`about` says what set and version it was made from)."""
    rounded = {s: {b: round(v, 6) for b, v in reference[s].items()} for s in SIGNALS}
    path.write_text(json.dumps({"about": about, "shares": rounded}, indent=1) + "\n")


@cache
def load_profile(version: int, directory: Path = PROFILES) -> dict[str, dict[str, float]] | None:
    """The reference profile of a version, or None if it has none (read once)."""
    path = directory / f"v{version}.json"
    if not path.is_file():
        return None
    shares_ = json.loads(path.read_text())["shares"]
    return {s: {b: float(shares_[s][b]) for b in bins(s)} for s in SIGNALS}
