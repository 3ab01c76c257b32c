"""Per-version figures from the prediction log: how the canary compares with stable.

Every record names the version that answered (and the label that routed it), so the
log alone is enough to compare versions. Figures are per record, i.e. per image: a
request with several images counts once per image, each with the request's latency.

Accuracy needs the right answers, and users cannot correct a prediction yet; until a
correction feature exists it is reported as "n/a" rather than guessed.

Reading: SQLite directly (read-only). Cassandra through the function's own
`CassandraLog.recent`, which reads day partitions newest first, at most
`CASSANDRA_RECENT_LOOKBACK_DAYS` of them and 10,000 records. For longer windows or
bigger volumes run the equivalent query per day in the window, e.g. in cqlsh:

    SELECT model_version, model_label, confidence, latency_ms, verdict FROM mnist.predictions
     WHERE day = '2026-11-23' AND id >= minTimeuuid('2026-11-23 08:00:00+0000');
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from infra.rollout.errors import RolloutError

PINNED = "(pinned)"  # how a record without a label (a pinned version) is counted


@dataclass(frozen=True)
class Row:
    """The part of a record the figures need."""

    version: int
    label: str | None
    confidence: float
    latency_ms: float
    verdict: str | None  # None for a record from before the service gave verdicts


@dataclass(frozen=True)
class VersionFigures:
    version: int
    requests: int
    share: float  # of all records in the window
    by_label: dict[str, int]
    mean_confidence: float
    low_confidence_share: float
    latency_p50_ms: float
    latency_p95_ms: float
    # Share of each verdict among the records that have one; empty if none has.
    verdict_shares: dict[str, float]
    accuracy: float | None  # None until users can correct answers


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
        judged = sum(verdicts.values())
        figures.append(
            VersionFigures(
                version=version,
                requests=len(group),
                share=len(group) / total,
                by_label=dict(labels.most_common()),
                mean_confidence=math.fsum(r.confidence for r in group) / len(group),
                low_confidence_share=sum(r.confidence < low_confidence for r in group) / len(group),
                latency_p50_ms=percentile(latencies, 50),
                latency_p95_ms=percentile(latencies, 95),
                verdict_shares={kind: count / judged for kind, count in verdicts.items()},
                accuracy=None,
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
        raise RolloutError(f"no prediction log at {path} (set SQLITE_PATH or --sqlite)")
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            # A log written before verdicts has no such column (and read-only, it keeps none).
            columns = {row[1] for row in connection.execute("PRAGMA table_info(predictions)")}
            verdict = "verdict" if "verdict" in columns else "NULL"
            result = connection.execute(
                f"SELECT model_version, model_label, confidence, latency_ms, {verdict} "
                "FROM predictions WHERE created_at_ms >= ?",
                (int(since.timestamp() * 1000),),
            ).fetchall()
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise RolloutError(f"cannot read the prediction log {path}: {error}") from None
    return [Row(*row) for row in result]


def cassandra_rows(since: datetime) -> list[Row]:
    """Records at or after `since` through the function's CassandraLog (CASSANDRA_* settings)."""
    from function.recognizer.cassandra_log import MAX_RECENT, CassandraLog
    from function.recognizer.records import StoreUnavailable

    log = CassandraLog.from_env()
    try:
        records = log.recent(MAX_RECENT)
    except StoreUnavailable as error:
        raise RolloutError(str(error)) from None
    finally:
        log.close()
    return [
        Row(
            r.model_version,
            r.model_label,
            r.confidence,
            r.latency_ms,
            None if r.verdict is None else r.verdict.kind,
        )
        for r in records
        if r.created_at >= since
    ]
