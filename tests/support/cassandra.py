"""A live Apache Cassandra node for the tests, started by infra/cassandra/local.py.

One node per test session, on free ports of 127.0.0.1 and in a fresh directory, with the
test-speed settings (no fsync). Each suite takes a keyspace of its own from `keyspace()`,
so suites never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.cassandra.__main__ import apply_local_schema
from infra.cassandra.local import LocalCluster, ToolMissing, on_free_ports
from recognizer.cassandra_store import CassandraSettings

TEST_NODE_HEAP = "4G"


@dataclass
class LiveCassandra:
    cluster: LocalCluster

    @property
    def contact_points(self) -> str:
        return self.cluster.contact_points

    def settings(self, keyspace: str, **changes: object) -> CassandraSettings:
        """The function's settings for this node and keyspace."""
        env = {"CASSANDRA_CONTACT_POINTS": self.contact_points, "CASSANDRA_KEYSPACE": keyspace}
        return CassandraSettings.from_env({**env, **{k: str(v) for k, v in changes.items()}})

    def env(self, keyspace: str) -> dict[str, str]:
        """What the function's environment needs to record into `keyspace`."""
        return {
            "PREDICTION_STORE": "cassandra",
            "CASSANDRA_CONTACT_POINTS": self.contact_points,
            "CASSANDRA_KEYSPACE": keyspace,
        }

    def keyspace(self, prefix: str = "t") -> str:
        """A new keyspace with the whole schema applied."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"  # never an earlier keyspace and its rows
        apply_local_schema(self.cluster, name)
        return name


def start_test_node(root: Path) -> LocalCluster:
    """A one-node test cluster, or a skip naming what is missing (a failure under CI)."""
    # The suites make a keyspace each, and a keyspace is now eight tables (#22): a whole
    # run makes about 130 keyspaces, 1,040 tables, and the node keeps ~1.5 MB of heap per
    # table (1.6 GB of old generation at the end). At 512M it died of OutOfMemoryError a
    # third of the way through, at 1.5G near the end; 4G leaves room for the suites to grow.
    cluster = on_free_ports(root, durable=False, report=lambda line: None, heap=TEST_NODE_HEAP)
    try:
        return cluster.start()
    except ToolMissing as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the live Cassandra tests: {exc}")
        pytest.skip(f"no live Cassandra: {exc}")
