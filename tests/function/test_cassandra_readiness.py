"""Readiness on Cassandra follows the writes, as on SQLite (test_faults.py, the full disk).

The live node answers `SELECT ... FROM system.local` from itself alone, so a node that can
take no write at all still passed the old ping. Here the keyspace asks for two replicas on
the one-node cluster: every write at LOCAL_QUORUM is Unavailable (503), reads of
system.local still work. /readyz must fail from the first failed write until a write works
again (its own probe write), and recover without a restart once the keyspace is fixed.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from recognizer.cassandra_store import CassandraStore, build_cluster
from recognizer.records import IdempotencyClaim, StoreUnavailable, new_record_id
from tests.conftest import ROOT
from tests.function.records_factory import make_record
from tests.support.cassandra_function import function_app, stored

SEVEN = (ROOT / "tests" / "data" / "samples" / "seven.png").read_bytes()


@contextmanager
def replication(cassandra, keyspace: str, factor: int):
    """The keyspace with `factor` replicas (one node holds only one), then one again."""
    cluster = build_cluster(cassandra.settings(keyspace))
    try:
        session = cluster.connect()

        def alter(n: int) -> None:
            session.execute(
                f"ALTER KEYSPACE {keyspace} WITH replication = "
                f"{{'class': 'SimpleStrategy', 'replication_factor': {n}}}"
            )

        alter(factor)
        try:
            yield lambda: alter(1)
        finally:
            alter(1)
    finally:
        cluster.shutdown()


def test_readiness_fails_after_a_failed_write_until_a_write_works(
    function_env, cassandra, monkeypatch
):
    keyspace = cassandra.keyspace("ready")
    with function_app(monkeypatch, **cassandra.env(keyspace)) as app:
        client = app.test_client()
        assert client.post("/predict", data=SEVEN, content_type="image/png").status_code == 200
        assert client.get("/readyz").status_code == 200
        with replication(cassandra, keyspace, 2) as fix:
            refused = client.post("/predict", data=SEVEN, content_type="image/png")
            assert refused.status_code == 503, refused.get_data(as_text=True)
            assert refused.get_json()["error"]["code"] == "store_unavailable"
            for _ in range(2):  # and stays so: the probe write fails as well
                ready = client.get("/readyz")
                assert ready.status_code == 503, ready.get_data(as_text=True)
                check = ready.get_json()["checks"]["prediction_store"]
                assert check.startswith("failing: writes are failing"), check
                assert "127.0.0.1" not in check  # no node address reaches a client
            fix()
            assert client.get("/readyz").status_code == 200  # the probe wrote: ready again
        assert client.post("/predict", data=SEVEN, content_type="image/png").status_code == 200
    assert len(stored(cassandra, keyspace)) == 2  # the refused one left no row


def test_a_failed_claim_counts_as_a_failed_write_and_a_save_that_works_clears_it(cassandra):
    keyspace = cassandra.keyspace("ready")
    log = CassandraStore(cassandra.settings(keyspace))
    try:
        log.save([make_record()])
        with replication(cassandra, keyspace, 2) as fix:
            with pytest.raises(StoreUnavailable):
                log.claim("a" * 64, IdempotencyClaim("b" * 64, (new_record_id(),)))
            with pytest.raises(StoreUnavailable, match="writes are failing"):
                log.ping()
            fix()
            log.save([make_record()])  # a write that works ends the failure by itself
        log.ping()
    finally:
        log.close()
