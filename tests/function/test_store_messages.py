"""Store errors reach clients as messages: they name no internal host (issue 12)."""

from __future__ import annotations

import pytest
from cassandra import OperationTimedOut
from cassandra.cluster import NoHostAvailable

from recognizer.cassandra_store import _describe

ADDRESSES = ["10.0.3.7", "10.0.3.7:9042", "[fd00::7]:9042", "fd00:0:0:0:0:0:0:7", "node-2:9042"]


@pytest.mark.parametrize(
    "error",
    [
        NoHostAvailable(
            "Unable to connect to any servers",
            {"10.0.3.7:9042": ConnectionRefusedError(111, "refused"), "node-2:9042": OSError()},
        ),
        OperationTimedOut(errors={"[fd00::7]:9042": "timed out"}, last_host="10.0.3.7"),
        OSError("connect to fd00:0:0:0:0:0:0:7 failed"),
    ],
)
def test_a_driver_error_is_described_without_node_addresses(error):
    described = _describe(error)
    assert type(error).__name__ in described
    for address in ADDRESSES:
        assert address not in described, described
