"""Per-version figures from the prediction store: how the canary compares with stable.

Every record names the version that answered (and the label that routed it), so the
log alone is enough to compare versions. Figures are per record, i.e. per image: a
request with several images counts once per image, each with the request's latency.

Accuracy comes from people's corrections (PUT /predictions/<id>/feedback): among a
version's records in the window that carry one, the share whose answer was right, with
a 95% Wilson interval; None ("n/a") for a version nobody corrected. `is_right` says what
counts as right. People mostly correct wrong answers, so this accuracy is lower than the
version's accuracy over all its answers: it compares versions that are corrected the
same way (same page, traffic split at random), it does not measure either one alone.

Reading: SQLite directly (read-only). Cassandra through the function's own
`CassandraStore.recent`, which reads day partitions newest first, at most
`CASSANDRA_RECENT_LOOKBACK_DAYS` of them and 10,000 records. For longer windows or
bigger volumes run the equivalent query per day in the window, e.g. in cqlsh:

    SELECT model_version, model_label, confidence, latency_ms, verdict, digit, feedback_digit,
           feedback_at FROM mnist.predictions
     WHERE day = '2026-11-23' AND id >= minTimeuuid('2026-11-23 08:00:00+0000');
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from infra.rollout import stats
from infra.rollout.errors import RolloutError
from recognizer import drift

PINNED = "(pinned)"  # how a record without a label (a pinned version) is counted
NOT_A_DIGIT = "not_a_digit"


@dataclass(frozen=True)
class Row:
    """The part of a record the figures need."""

    version: int
    label: str | None
    confidence: float
    latency_ms: float
    verdict: str | None  # None for a record from before the service gave verdicts
    digit: int = 0  # the model's digit
    corrected: bool = False  # a person corrected this answer
    feedback_digit: int | None = None  # their digit; None with `corrected`: "not a digit"


def is_right(row: Row) -> bool:
    """Whether a corrected answer was right, reading each verdict as what the page said.

    "digit" (or no verdict: a record from before verdicts) said "it is <digit>"; "unsure"
    said "not sure: <digit> or ...", read as its first candidate, the model's digit;
    "not_a_digit" said "that is not a digit". So: a person's digit d makes a "digit" or
    "unsure" answer right when the model's digit is d, and a "not_a_digit" answer wrong;
    a person's "not a digit" makes only a "not_a_digit" answer right.
    """
    if row.feedback_digit is None:
        return row.verdict == NOT_A_DIGIT
    return row.verdict != NOT_A_DIGIT and row.digit == row.feedback_digit


@dataclass(frozen=True)
class VersionFigures:
    version: int
    requests: int
    share: float  # of all records in the window
    by_label: dict[str, int]
    mean_confidence: float
    low_confidence: int  # records below the low-confidence threshold
    latency_p50_ms: float
    latency_p99_ms: float
    verdicts: dict[str, int]  # records per verdict; records without one are not counted
    corrected: int  # records a person corrected
    right: int  # of those, the ones whose answer was right (is_right)
    # Bin counts of the answer's drift signals (recognizer.drift.count_answers).
    drift_counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def low_confidence_share(self) -> float:
        return self.low_confidence / self.requests

    @property
    def verdict_shares(self) -> dict[str, float]:
        """Share of each verdict among the records that have one; empty if none has."""
        judged = sum(self.verdicts.values())
        return {kind: count / judged for kind, count in self.verdicts.items()}

    @property
    def accuracy(self) -> float | None:
        """Right among corrected; None when nobody corrected this version."""
        return self.right / self.corrected if self.corrected else None

    @property
    def accuracy_ci(self) -> tuple[float, float] | None:
        """The accuracy's 95% Wilson score interval; None with the accuracy."""
        return stats.wilson(self.right, self.corrected) if self.corrected else None


def summarize(rows: Iterable[Row], low_confidence: float) -> list[VersionFigures]:
    """Figures per answering version, oldest version first."""
    by_version: dict[int, list[Row]] = {}
    for row in rows:
        by_version.setdefault(row.version, []).append(row)
    total = sum(len(group) for group in by_version.values())
    figures = []
    for version, group in sorted(by_version.items()):
        latencies = sorted(r.latency_ms for r in group)
        labels = Counter(r.label or PINNED for r in group)
        verdicts = Counter(r.verdict for r in group if r.verdict is not None)
        corrected = [r for r in group if r.corrected]
        figures.append(
            VersionFigures(
                version=version,
                requests=len(group),
                share=len(group) / total,
                by_label=dict(labels.most_common()),
                mean_confidence=math.fsum(r.confidence for r in group) / len(group),
                low_confidence=sum(r.confidence < low_confidence for r in group),
                latency_p50_ms=percentile(latencies, 50),
                latency_p99_ms=percentile(latencies, 99),
                verdicts=dict(verdicts),
                corrected=len(corrected),
                right=sum(is_right(r) for r in corrected),
                drift_counts=drift.count_answers(
                    (r.digit, r.confidence, r.verdict or "none") for r in group
                ),
            )
        )
    return figures


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) of sorted values."""
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def sqlite_rows(path: Path, since: datetime) -> list[Row]:
    """Records at or after `since` in the function's SQLite log, opened read-only."""
    if not path.is_file():
        raise RolloutError(f"no prediction store at {path} (set SQLITE_PATH or --sqlite)")
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            # A log written before verdicts or corrections has no such columns (and opened
            # read-only, it gets none): read NULL, i.e. no verdict and no correction.
            columns = {row[1] for row in connection.execute("PRAGMA table_info(predictions)")}
            added = ", ".join(
                name if name in columns else "NULL"
                for name in ("verdict", "feedback_at_ms", "feedback_digit")
            )
            result = connection.execute(
                f"SELECT model_version, model_label, confidence, latency_ms, digit, {added} "
                "FROM predictions WHERE created_at_ms >= ?",
                (int(since.timestamp() * 1000),),
            ).fetchall()
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise RolloutError(f"cannot read the prediction store {path}: {error}") from None
    return [
        Row(version, label, confidence, latency, verdict, digit, at_ms is not None, feedback)
        for version, label, confidence, latency, digit, verdict, at_ms, feedback in result
    ]


def cassandra_rows(since: datetime) -> list[Row]:
    """Records at or after `since` through the function's CassandraStore (CASSANDRA_* settings)."""
    from recognizer.cassandra_store import MAX_RECENT, CassandraStore
    from recognizer.records import StoreUnavailable

    store = CassandraStore.from_env()
    try:
        records = store.recent(MAX_RECENT)
    except StoreUnavailable as error:
        raise RolloutError(str(error)) from None
    finally:
        store.close()
    return [
        Row(
            r.model_version,
            r.model_label,
            r.confidence,
            r.latency_ms,
            None if r.verdict is None else r.verdict.kind,
            r.digit,
            r.feedback is not None,
            None if r.feedback is None else r.feedback.digit,
        )
        for r in records
        if r.created_at >= since
    ]
