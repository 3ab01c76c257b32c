"""Per-version counts of the predictions of one hour, kept as they are written.

`rollout status` and `analyze` read these instead of the records: their work is bounded by
the hours in the window (times the versions and writing processes), not by the traffic.

Why a retried write never counts twice: each writing process keeps, per (hour, version),
the cumulative totals of the records *it* wrote, and stores them as one row keyed by
(day, hour, version, writer) with a plain INSERT, an upsert of the whole row. Writing the
same totals again (a retry, a timed-out write the replicas applied after all) leaves the
row as it was; a later flush carries totals that include the earlier ones and replaces
them (the driver's client-side timestamps order the two). A process counts a record only
after its own write of it succeeded, and only once (the ids it counted are remembered):
a request retried into the same ids after a failed save is counted by whichever attempt
wrote it. What a process counted but had not flushed when it died (at most
FLUSH_SECONDS of its traffic) is missing: the figures can fall short, never double.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from recognizer import drift
from recognizer.records import Record

CONFIDENCE_BINS = 100  # of 0.01 each: a low-confidence threshold in hundredths is exact
LATENCY_BINS = 160
LATENCY_FIRST_MS = 0.5  # bin 0: up to 0.5 ms; bin k: (0.5 * 1.1^(k-1), 0.5 * 1.1^k] ms
LATENCY_GROWTH = 1.1  # so a percentile read from the bins is within 10% of the value
PINNED = ""  # how a record without a label (a pinned version) is keyed in `labels`


def hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def latency_bin(ms: float) -> int:
    if ms <= LATENCY_FIRST_MS:
        return 0
    k = math.ceil(math.log(ms / LATENCY_FIRST_MS) / math.log(LATENCY_GROWTH) - 1e-9)
    return min(LATENCY_BINS - 1, max(1, k))


def latency_bounds(k: int) -> tuple[float, float]:
    if k == 0:
        return 0.0, LATENCY_FIRST_MS
    return LATENCY_FIRST_MS * LATENCY_GROWTH ** (k - 1), LATENCY_FIRST_MS * LATENCY_GROWTH**k


def confidence_bin(confidence: float) -> int:
    return min(CONFIDENCE_BINS - 1, max(0, int(confidence * CONFIDENCE_BINS)))


@dataclass
class Tally:
    """What the figures need of a version's records, without the records."""

    requests: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    verdicts: Counter[str] = field(default_factory=Counter)
    confidence_sum: float = 0.0
    confidence_bins: list[int] = field(default_factory=lambda: [0] * CONFIDENCE_BINS)
    latency_bins: list[int] = field(default_factory=lambda: [0] * LATENCY_BINS)
    digits: list[int] = field(default_factory=lambda: [0] * 10)  # the model's digits

    def add(self, record: Record) -> None:
        self.requests += 1
        self.labels[record.model_label or PINNED] += 1
        if record.verdict is not None:
            self.verdicts[record.verdict.kind] += 1
        self.confidence_sum += record.confidence
        self.confidence_bins[confidence_bin(record.confidence)] += 1
        self.latency_bins[latency_bin(record.latency_ms)] += 1
        self.digits[record.digit] += 1

    def merge(self, other: Tally) -> None:
        self.requests += other.requests
        self.labels.update(other.labels)
        self.verdicts.update(other.verdicts)
        self.confidence_sum += other.confidence_sum
        self.confidence_bins = _add(self.confidence_bins, other.confidence_bins)
        self.latency_bins = _add(self.latency_bins, other.latency_bins)
        self.digits = _add(self.digits, other.digits)

    def below(self, threshold: float) -> int:
        """Records with a confidence under `threshold` (exact for a threshold in hundredths)."""
        edge = round(threshold * CONFIDENCE_BINS, 9)
        return sum(self.confidence_bins[: max(0, min(CONFIDENCE_BINS, math.ceil(edge)))])

    def latency_percentile(self, q: float) -> float:
        """The q-th percentile, interpolated within its bin (numpy's rank, to the bin)."""
        if not self.requests:
            return math.nan
        rank = (self.requests - 1) * q / 100
        seen = 0
        for k, count in enumerate(self.latency_bins):
            if count and rank < seen + count:
                low, high = latency_bounds(k)
                return low + (high - low) * (rank - seen + 0.5) / count
            seen += count
        return latency_bounds(LATENCY_BINS - 1)[1]


def answer_counts(t: Tally) -> dict[str, dict[str, int]]:
    """drift.count_answers of the tallied records: each confidence bin counted at its
    middle (exact: drift's confidence edges are hundredths, like the bins)."""
    counts = {signal: dict.fromkeys(drift.bins(signal), 0) for signal in drift.ANSWER_SIGNALS}
    for digit, n in enumerate(t.digits):
        counts["digit"][drift.bin_of("digit", digit)] += n
    for k, n in enumerate(t.confidence_bins):
        counts["confidence"][drift.bin_of("confidence", (k + 0.5) / CONFIDENCE_BINS)] += n
    for kind, n in [*t.verdicts.items(), ("none", t.requests - sum(t.verdicts.values()))]:
        counts["verdict"][drift.bin_of("verdict", kind)] += n
    return counts


def tally(records: Iterable[Record]) -> Tally:
    result = Tally()
    for record in records:
        result.add(record)
    return result


def _add(a: Sequence[int], b: Sequence[int]) -> list[int]:
    return [x + y for x, y in zip(a, b, strict=True)]
