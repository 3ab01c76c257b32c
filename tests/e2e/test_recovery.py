"""The function rides out a model server restart: no restart of its own, no 500s.

The development model server is killed under steady load and started again on the same
port (bench/model_server_restart.py, which also prints these figures). Meanwhile clients
get 503 (with Retry-After) or 504 JSON errors, never a 500; once the model server is
ready again the function answers 200 within a bound, and keeps doing so.
"""

from __future__ import annotations

import pytest

from bench.model_server_restart import CONTRACT_FAILURES, Outcome, restart_under_load

RECOVERY_BOUND_SECONDS = 60  # generous: two cores shared with other work


@pytest.fixture(scope="module")
def outcome() -> Outcome:
    result = restart_under_load(rate=8, before=3, down=3, after=3, limit=RECOVERY_BOUND_SECONDS)
    print(result.report())
    return result


def test_the_restart_was_felt(outcome):
    """Otherwise the assertions below would hold for a run that tested nothing."""
    assert outcome.by_status[200] > 0
    assert outcome.failures, outcome.report()


def test_failures_are_503_or_504_json_errors_never_500(outcome):
    assert set(outcome.by_status) <= {200, *CONTRACT_FAILURES}, outcome.report()
    assert outcome.malformed == [], outcome.report()


def test_the_function_recovers_within_the_bound_and_stays_recovered(outcome):
    assert outcome.ready_to_first_200 is not None, outcome.report()
    assert outcome.ready_to_first_200 <= RECOVERY_BOUND_SECONDS
    assert outcome.failures_after_recovery == [], outcome.report()


def test_every_200_during_the_restart_was_recorded(outcome):
    assert outcome.unreadable_records == 0
