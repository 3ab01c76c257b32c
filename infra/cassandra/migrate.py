"""`python -m infra.cassandra migrate`: copy the released layout into the new tables, online.

The released layout kept each UTC day in one partition of `predictions`. This copies every
row of it into `records`, `uploads`, `record_buckets` and `corrections` (the layout of
infra/cassandra/schema.cql), by token ranges of `predictions` read in parallel, while the
function keeps serving: until this tool writes the keyspace's `store_layout` row
'migration' = 'done', the function reads both layouts (a record is found in either) and
erases from both.

Resumable and idempotent. The ring is cut into `--ranges` token ranges; each one copied
is noted in `migration_ranges`, and a run skips the noted ones, so a run killed half-way
is finished by running it again, which copies the unnoted ranges (a range cut short is
copied whole again). Every write is an upsert of the same values, so copying a row twice
leaves one row. Each write carries the source row's own write time (USING TIMESTAMP) and
its remaining lifetime (RETENTION_DAYS and UPLOAD_RETENTION_DAYS counted from the record's
time), so a row erased or corrected through the function while the copy runs stays
erased or corrected: the function's later write wins over the older copy.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from recognizer.cassandra_store import (
    DRIVER_ERRORS,
    LEGACY_COLUMNS,
    LEGACY_TABLE,
    CassandraSettings,
    Layout,
    build_cluster,
    day_of,
    legacy_record,
)
from recognizer.env import Reader, SettingsError
from recognizer.records import Record, Retention

MIN_TOKEN, MAX_TOKEN = -(2**63), 2**63 - 1
RANGES = 256  # token ranges: the unit of work, of progress and of parallelism
WORKERS = 4


def token_ranges(count: int) -> list[tuple[int, int]]:
    """`count` ranges (start, end] covering the Murmur3 ring; the first starts at its minimum
    (token(day) >= MIN_TOKEN for it, since no token is below it)."""
    width = (MAX_TOKEN - MIN_TOKEN) // count
    edges = [MIN_TOKEN + i * width for i in range(count)] + [MAX_TOKEN]
    return list(itertools.pairwise(edges))


@dataclass(frozen=True)
class Copier:
    session: Any
    keyspace: str
    layout: Layout
    retention: Retention
    now: datetime

    def statements(self) -> dict[str, Any]:
        ks = self.keyspace
        columns = (
            "bucket, shard, id, created_at, digit, confidence, probabilities, model_name, "
            "model_version, model_label, input_image, upload_content_type, upload_sha256, "
            "upload_size, upload_kept, latency_ms, verdict, verdict_candidates, "
            "verdict_reasons, feedback_digit, feedback_at"
        )
        marks = ", ".join("?" for _ in columns.split(", "))
        timed = "USING TTL ? AND TIMESTAMP ?"
        queries = {
            "record": f"INSERT INTO {ks}.records ({columns}) VALUES ({marks}) {timed}",
            "upload": f"INSERT INTO {ks}.uploads (id, content) VALUES (?, ?) {timed}",
            "bucket": f"INSERT INTO {ks}.record_buckets (day, bucket, shard) VALUES (?, ?, ?) "
            "USING TTL ?",
            "correction": f"INSERT INTO {ks}.corrections (day, id, model_version, digit, "
            f"verdict, feedback_digit, feedback_at) VALUES (?, ?, ?, ?, ?, ?, ?) {timed}",
            "scan": f"SELECT {LEGACY_COLUMNS}, WRITETIME(created_at) AS written "
            f"FROM {ks}.{LEGACY_TABLE} WHERE token(day) >= ? AND token(day) <= ?",
            "done": f"INSERT INTO {ks}.migration_ranges (range_start, range_end, copied, "
            "finished_at) VALUES (?, ?, ?, ?)",
        }
        prepared = {name: self.session.prepare(query) for name, query in queries.items()}
        for statement in prepared.values():
            statement.is_idempotent = True
        return prepared

    def copy_range(self, statements: dict[str, Any], start: int, end: int) -> int:
        """Copy one token range; the rows copied (those still within their retention)."""
        low = start if start == MIN_TOKEN else start + 1  # ranges are (start, end]
        copied, writes = 0, []
        for row in self.session.execute(statements["scan"], (low, end)):
            these = self._writes(statements, legacy_record(row), row["written"])
            copied += bool(these)
            writes += these
            if len(writes) >= 64:
                _all(self.session, writes)
                writes = []
        _all(self.session, writes)
        finished = datetime.now(UTC)
        self.session.execute(statements["done"], (start, end, copied, finished))
        return copied

    def _writes(self, statements: dict[str, Any], record: Record, written: int) -> list[Any]:
        age = (self.now - record.created_at).total_seconds()
        keep = int(self.retention.records_seconds - age)
        if keep <= 0:
            return []  # past its retention: the new layout would expire it at once
        bucket, shard = self.layout.key(record.id)
        upload = record.upload
        kept_upload = int(self.retention.uploads_seconds - age)
        stored = upload.content is not None and kept_upload > 0
        feedback = record.feedback
        verdict = record.verdict
        writes = [
            statements["bucket"].bind(
                (bucket.date(), bucket, shard, self.layout.index_seconds(keep))
            ),
            statements["record"].bind(
                (
                    bucket,
                    shard,
                    record.id,
                    record.created_at,
                    record.digit,
                    record.confidence,
                    list(record.probabilities),
                    record.model_name,
                    record.model_version,
                    record.model_label,
                    record.input_image,
                    upload.content_type,
                    upload.sha256,
                    upload.size,
                    stored,
                    record.latency_ms,
                    None if verdict is None else verdict.kind,
                    None if verdict is None else list(verdict.candidates),
                    None if verdict is None else list(verdict.reasons),
                    None if feedback is None else feedback.digit,
                    None if feedback is None else feedback.created_at,
                    keep,
                    written,
                )
            ),
        ]
        if stored:
            writes.append(
                statements["upload"].bind((record.id, upload.content, kept_upload, written))
            )
        if feedback is not None:
            writes.append(
                statements["correction"].bind(
                    (
                        day_of(record.id),
                        record.id,
                        record.model_version,
                        record.digit,
                        None if verdict is None else verdict.kind,
                        feedback.digit,
                        feedback.created_at,
                        keep,
                        written,
                    )
                )
            )
        return writes


def _all(session: Any, statements: Sequence[Any]) -> None:
    """Every write at once, then each answer: any failure stops the range (not noted)."""
    for future in [session.execute_async(s) for s in statements]:
        future.result()


def migrate(
    settings: CassandraSettings,
    retention: Retention,
    *,
    ranges: int = RANGES,
    workers: int = WORKERS,
    stop_after: int | None = None,
    report: Callable[[str], None] = print,
) -> bool:
    """Copy every range not copied yet; True (and the layout marked done) when all are."""
    cluster = build_cluster(settings)
    try:
        session = cluster.connect()
        ks = settings.keyspace
        tables = {
            row["table_name"]
            for row in session.execute(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (ks,)
            )
        }
        if "store_layout" not in tables or "migration_ranges" not in tables:
            raise MigrationError(f"apply infra/cassandra/schema.cql to keyspace {ks} first")
        if LEGACY_TABLE not in tables:
            _mark_done(session, ks)
            report(f"keyspace {ks} has no {LEGACY_TABLE} table: nothing to migrate")
            return True
        row = session.execute(
            f"SELECT shards, bucket_seconds FROM {ks}.store_layout WHERE name = 'records'"
        ).one()
        copier = Copier(
            session, ks, Layout(row["shards"], row["bucket_seconds"]), retention, datetime.now(UTC)
        )
        statements = copier.statements()
        noted = {
            (r["range_start"], r["range_end"])
            for r in session.execute(f"SELECT range_start, range_end FROM {ks}.migration_ranges")
        }
        todo = [r for r in token_ranges(ranges) if r not in noted][:stop_after]
        report(f"{len(noted)} of {ranges} token ranges copied before; copying {len(todo)}")
        started = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            copied = sum(pool.map(lambda r: copier.copy_range(statements, *r), todo))
        left = ranges - len(noted) - len(todo)
        report(f"copied {copied} records in {time.monotonic() - started:.1f} s; {left} ranges left")
        if left == 0:
            _mark_done(session, ks)
            report(
                "migration done: restart (or roll) the functions so they stop reading "
                f"{LEGACY_TABLE}; then it can be dropped"
            )
        return left == 0
    finally:
        cluster.shutdown()


def _mark_done(session: Any, keyspace: str) -> None:
    session.execute(
        f"INSERT INTO {keyspace}.store_layout (name, state, updated_at) "
        "VALUES ('migration', 'done', toTimestamp(now()))"
    )


class MigrationError(Exception):
    """The keyspace is not ready to be migrated."""


def main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="python -m infra.cassandra migrate", description=__doc__)
    parser.add_argument("--ranges", type=int, default=RANGES, help="token ranges (%(default)s)")
    parser.add_argument("--workers", type=int, default=WORKERS, help="in parallel (%(default)s)")
    parser.add_argument("--stop-after", type=int, help="copy at most this many ranges, then stop")
    args = parser.parse_args(argv)
    try:
        settings = CassandraSettings.from_env(env)
        read = Reader(env)
        retention = Retention(
            read.whole("RETENTION_DAYS", Retention().records_days, 1, 3650),
            read.whole("UPLOAD_RETENTION_DAYS", Retention().uploads_days, 1, 3650),
        )
        read.check()
        done = migrate(
            settings,
            retention,
            ranges=args.ranges,
            workers=args.workers,
            stop_after=args.stop_after,
        )
    except (SettingsError, MigrationError) as error:
        print(f"infra.cassandra migrate: {error}", file=sys.stderr)
        return 1
    except DRIVER_ERRORS as error:
        print(f"infra.cassandra migrate: stopped, run it again: {error}", file=sys.stderr)
        return 1
    return 0 if done else 3
