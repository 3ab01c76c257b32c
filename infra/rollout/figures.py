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
`CassandraStore`: the per-version counts each function keeps by hour (version_counts,
recognizer/tallies.py) and the corrections table, never the records, so a version's
figures cover all its traffic in the window at a cost set by the window's hours.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from infra.rollout import stats
from infra.rollout.errors import RolloutError
from recognizer import drift, tallies

PINNED = "(pinned)"  # how a record without a label (a pinned version) is counted
# Of one client's corrections (its token identity, else its client key), at most this many
# count per version: one client cannot outweigh the rest however many it sends (#23).
CORRECTIONS_PER_CLIENT = 5
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
    # Who corrected it (who asked, when uncorrected); None for a record from before
    # clients were kept, each such one counted as a client of its own.
    client: str | None = None
    pinned: bool = False  # the request chose its version (?version=, ?label=)


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
    # Distinct clients among the corrections counted; None: not known (figures by hand).
    correcting_clients: int | None = None

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


def evidence(rows: Iterable[Row], per_client: int = CORRECTIONS_PER_CLIENT) -> list[Row]:
    """The corrections a comparison counts: none of a pinned request (a pin chose which
    version its correction counts for), and at most `per_client` of one client's."""
    kept: list[Row] = []
    seen: Counter[str] = Counter()
    for row in rows:
        if not row.corrected or row.pinned:
            continue
        if row.client is not None:
            seen[row.client] += 1
            if seen[row.client] > per_client:
                continue
        kept.append(row)
    return kept


def distinct_clients(rows: Iterable[Row]) -> int:
    """Clients behind `rows`; a row without a client counts as one of its own."""
    rows = list(rows)
    return len({r.client for r in rows if r.client is not None}) + sum(
        r.client is None for r in rows
    )


def summarize(rows: Iterable[Row], low_confidence: float) -> list[VersionFigures]:
    """Figures per answering version, oldest version first, from unpinned traffic: a
    request that chose its version is no evidence of how the split versions compare."""
    by_version: dict[int, list[Row]] = {}
    for row in rows:
        if not row.pinned:
            by_version.setdefault(row.version, []).append(row)
    total = sum(len(group) for group in by_version.values())
    figures = []
    for version, group in sorted(by_version.items()):
        latencies = sorted(r.latency_ms for r in group)
        labels = Counter(r.label or PINNED for r in group)
        verdicts = Counter(r.verdict for r in group if r.verdict is not None)
        corrected = evidence(group)
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
                correcting_clients=distinct_clients(corrected),
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
                for name in (
                    "verdict",
                    "feedback_at_ms",
                    "feedback_digit",
                    "client_key",
                    "pinned",
                    "feedback_client",
                )
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
        Row(
            version,
            label,
            confidence,
            latency,
            verdict,
            digit,
            at_ms is not None,
            feedback,
            corrector if at_ms is not None else client,
            bool(pinned),
        )
        for (
            version,
            label,
            confidence,
            latency,
            digit,
            verdict,
            at_ms,
            feedback,
            client,
            pinned,
            corrector,
        ) in result
    ]


def from_tallies(
    counts: dict[int, tallies.Tally], corrected: Iterable[Row], low_confidence: float
) -> list[VersionFigures]:
    """Figures per version from its per-hour counts (recognizer/tallies.py) and its
    corrected records, weighed as `summarize` weighs them (`evidence`); latency
    percentiles are read from the counts' bins (within 10%)."""
    by_version: dict[int, list[Row]] = {}
    for row in evidence(corrected):
        by_version.setdefault(row.version, []).append(row)
    total = sum(t.requests for t in counts.values())
    return [
        VersionFigures(
            version=version,
            requests=t.requests,
            share=t.requests / total,
            by_label={label or PINNED: n for label, n in t.labels.most_common()},
            mean_confidence=t.confidence_sum / t.requests,
            low_confidence=t.below(low_confidence),
            latency_p50_ms=t.latency_percentile(50),
            latency_p99_ms=t.latency_percentile(99),
            verdicts=dict(t.verdicts),
            corrected=len(by_version.get(version, [])),
            right=sum(is_right(r) for r in by_version.get(version, [])),
            drift_counts=tallies.answer_counts(t),
            correcting_clients=distinct_clients(by_version.get(version, [])),
        )
        for version, t in sorted(counts.items())
        if t.requests
    ]


def cassandra_figures(since: datetime, low_confidence: float) -> list[VersionFigures]:
    """Per-version figures through the function's CassandraStore (CASSANDRA_* settings):
    the per-hour counts from `since`'s hour on and the corrections of records made since,
    never the records themselves, so the cost follows the window's hours, not its traffic."""
    from recognizer.cassandra_store import CassandraStore
    from recognizer.records import StoreUnavailable

    store = CassandraStore.from_env()
    try:
        return store_figures(store, since, low_confidence)
    except StoreUnavailable as error:
        raise RolloutError(str(error)) from None
    finally:
        store.close()


def store_figures(store: Any, since: datetime, low_confidence: float) -> list[VersionFigures]:
    """cassandra_figures on an open CassandraStore: its counts of unpinned traffic, as
    `summarize` counts for SQLite, and its corrections since `since`, each with the
    correcting client and whether the request pinned, so one client's flood weighs as
    little here as there."""
    counts: dict[int, tallies.Tally] = {}
    for (version, pinned), counted in store.version_tallies(since).items():
        if not pinned:
            counts.setdefault(version, tallies.Tally()).merge(counted)
    corrected = [
        Row(
            c["model_version"],
            None,
            0.0,
            0.0,
            c["verdict"],
            c["digit"],
            True,
            c["feedback_digit"],
            client=c["client_key"],
            pinned=bool(c["pinned"]),
        )
        for c in store.corrections(since)
    ]
    return from_tallies(counts, corrected, low_confidence)
