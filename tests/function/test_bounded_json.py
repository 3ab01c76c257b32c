"""bounded_json: a body's structure is counted before a single object is made (issue 24)."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from recognizer import bounded_json

MiB = 1024 * 1024


def test_a_body_within_its_budgets_parses():
    assert bounded_json.loads(b'{"digit": 1, "token": "abc"}', 1024, 16) == {
        "digit": 1,
        "token": "abc",
    }


def test_a_million_empty_objects_are_refused_before_they_cost_memory():
    body = b'{"digit":1,"pad":[' + b"{}," * (3 * MiB) + b"{}]}"
    tracemalloc.start()
    try:
        started = time.process_time()
        with pytest.raises(bounded_json.JsonTooComplex):
            bounded_json.loads(body, len(body), 64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MiB  # json.loads of it made over 300 MiB of dicts
    assert time.process_time() - started < 0.5


def test_deep_nesting_is_refused_by_the_same_count_not_a_recursion_error():
    with pytest.raises(bounded_json.JsonTooComplex):
        bounded_json.loads(b"[" * 200_000 + b"]" * 200_000, 1_000_000, 900)


def test_a_body_over_its_size_is_refused_unparsed():
    with pytest.raises(bounded_json.JsonTooLarge):
        bounded_json.loads(b'{"digit": 1}' + b" " * 2000, 1024, 16)


@pytest.mark.parametrize("body", [b"{", b"\xff\xfe", b'{"a": 1,}'])
def test_malformed_json_is_invalid(body):
    with pytest.raises(bounded_json.InvalidJson):
        bounded_json.loads(body, 1024, 16)
