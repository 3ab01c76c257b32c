"""`python -m infra.cassandra migrate` on a live node holding rows written by the previous
release's own store code (474e2e1, read from git), while this release's store serves."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from infra.cassandra import migrate
from infra.cassandra.apply_schema import SCHEMA, apply, render, split_statements
from recognizer.cassandra_store import CassandraStore, build_cluster
from recognizer.records import Feedback, Retention, order_key, without_upload
from tests.conftest import ROOT
from tests.function.records_factory import make_record

PREVIOUS_RELEASE = "474e2e1"


def previous_release_store(tmp_path: Path) -> Any:
    """The released CassandraStore class, imported from the release's own source."""
    try:
        source = subprocess.run(
            ["git", "show", f"{PREVIOUS_RELEASE}:function/recognizer/cassandra_store.py"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"the previous release's source is not in git here: {error}")
    path = tmp_path / "released_cassandra_store.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("released_cassandra_store", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.CassandraStore


def apply_text(cassandra: Any, text: str, keyspace: str) -> None:
    statements = render(split_statements(text), keyspace=keyspace)
    apply(statements, cassandra.settings(keyspace), report=lambda _: None, wait=30)


def count(session: Any, keyspace: str, table: str) -> int:
    return session.execute(f"SELECT count(*) AS n FROM {keyspace}.{table}").one()["n"]


def test_the_released_layout_is_copied_resumably_once_while_both_are_read(
    cassandra: Any, tmp_path: Path
) -> None:
    keyspace = f"migrate_{uuid.uuid4().hex[:10]}"
    released = subprocess.run(
        ["git", "show", f"{PREVIOUS_RELEASE}:infra/cassandra/schema.cql"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    apply_text(cassandra, released, keyspace)
    old_store = previous_release_store(tmp_path)(cassandra.settings(keyspace))
    now = datetime.now(UTC)
    old = [make_record(at=now - timedelta(days=d, minutes=m)) for d in range(4) for m in range(10)]
    old += [make_record(upload=None, at=now - timedelta(hours=3))]
    expired = make_record(at=now - timedelta(days=100))  # past RETENTION_DAYS' default
    old_store.save([*old, expired])
    assert old_store.correct(old[5].id, Feedback(4, now.replace(microsecond=0)))
    old_store.close()
    old[5] = replace(old[5], feedback=Feedback(4, now.replace(microsecond=0)))

    apply_text(cassandra, SCHEMA.read_text(encoding="utf-8"), keyspace)  # the upgrade
    serving = CassandraStore(cassandra.settings(keyspace))
    new = make_record()
    serving.save([new])  # the function writes the new layout from the start
    assert serving.get(old[0].id) == old[0]  # ... and reads the released one

    settings = cassandra.settings(keyspace)
    retention = Retention()
    assert not migrate.migrate(settings, retention, ranges=16, stop_after=5, report=print)
    half = [serving.get(r.id) for r in old]
    assert half == old  # part copied, part not: every record is found, once
    erased = old[7]
    assert serving.delete(erased.id)  # an erasure while the copy runs
    assert migrate.migrate(settings, retention, ranges=16, report=print)  # the rest
    assert migrate.migrate(settings, retention, ranges=16, report=print)  # again: nothing new

    cluster = build_cluster(settings)
    try:
        session = cluster.connect()
        assert count(session, keyspace, "records") == len(old) - 1 + 1  # - erased + new
        assert count(session, keyspace, "uploads") == len(old) - 2 + 1  # - over the cap
        assert count(session, keyspace, "corrections") == 1
        assert count(session, keyspace, "migration_ranges") == 16
    finally:
        cluster.shutdown()
    serving.close()

    after = CassandraStore(settings)  # a function started after the migration
    try:
        kept = [r for r in old if r.id != erased.id]
        assert [after.get(r.id) for r in kept] == kept
        assert after.get(erased.id) is None and after.get(expired.id) is None
        history = sorted([new, *kept], key=lambda r: order_key(r.id), reverse=True)
        assert after.page(100).records == [without_upload(r) for r in history]
        assert after.corrections(now - timedelta(days=7))[0]["id"] == old[5].id
    finally:
        after.close()
