"""The canary decision, one rule at a time: figures in, promote / roll back / wait out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from infra.rollout.analysis import (
    INCONCLUSIVE,
    NOT_JUDGED,
    OK,
    PROMOTE,
    ROLLBACK,
    WAIT,
    WORSE,
    Decision,
    Thresholds,
    decide,
)
from infra.rollout.figures import VersionFigures
from infra.rollout.stats import per_group

DEFAULTS = Thresholds()


def figures(version: int, **changes) -> VersionFigures:
    """A version with plenty of evidence: 3,000 records, 97% of 3,000 corrections right."""
    base = VersionFigures(
        version=version,
        requests=3000,
        share=0.5,
        by_label={"stable" if version == 2 else "canary": 3000},
        mean_confidence=0.97,
        low_confidence=150,
        latency_p50_ms=10.0,
        latency_p99_ms=20.0,
        verdicts={"digit": 2850, "unsure": 120, "not_a_digit": 30},
        corrected=3000,
        right=2910,
    )
    return replace(base, **changes)


STABLE = figures(2)


def outcomes(decision: Decision) -> dict[str, str]:
    return {check.signal: check.outcome for check in decision.checks}


def check(decision: Decision, signal: str):
    [found] = [c for c in decision.checks if c.signal == signal]
    return found


def test_a_canary_as_good_as_stable_with_enough_evidence_is_promoted():
    decision = decide(STABLE, figures(3), DEFAULTS)
    assert decision.action == PROMOTE
    assert outcomes(decision) == {
        "accuracy": OK,
        "low-confidence share": OK,
        "unsure share": OK,
        "not-a-digit share": OK,
        "latency p50": OK,
        "latency p99": OK,
        "errors": NOT_JUDGED,
    }
    accuracy = check(decision, "accuracy")
    assert accuracy.comparison.interval == pytest.approx((-0.0087, 0.0087), abs=1e-4)
    assert "the canary is at most 2 pp less accurate" in accuracy.reason
    assert "records answered predictions only" in check(decision, "errors").reason


@pytest.mark.parametrize("missing", ["stable", "canary"])
def test_a_version_without_records_in_the_window_is_a_wait(missing):
    stable, canary = (None, figures(3)) if missing == "stable" else (STABLE, None)
    decision = decide(stable, canary, DEFAULTS)
    assert decision.action == WAIT
    assert [c.reason for c in decision.checks] == [
        f"no records of the {missing} version in the window yet"
    ]


def test_a_significantly_less_accurate_canary_is_rolled_back():
    decision = decide(STABLE, figures(3, requests=400, corrected=200, right=160), DEFAULTS)
    assert decision.action == ROLLBACK
    accuracy = check(decision, "accuracy")
    assert accuracy.outcome == WORSE
    assert accuracy.comparison.difference == pytest.approx(0.80 - 0.97)
    assert accuracy.comparison.interval[1] < 0
    assert accuracy.comparison.p_value < 1e-6
    assert "canary 80.0% of 200 vs stable 97.0% of 3,000" in accuracy.reason


def test_too_few_corrections_is_a_wait_that_says_how_many_more_each_side_needs():
    stable = figures(2, corrected=1500, right=1455)
    decision = decide(stable, figures(3, corrected=100, right=97), DEFAULTS)
    assert decision.action == WAIT
    accuracy = check(decision, "accuracy")
    assert accuracy.outcome == INCONCLUSIVE
    # Pooled 1552/1600 = 97.0%: 1,506 per version to see 97% -> 95% (Fleiss, 5%, 80%).
    assert accuracy.needed == 1506
    assert "drop from 97.0%, both versions' accuracy together, with 80% power" in accuracy.reason
    assert "1,506 corrections: stable 6 more, canary 1,406 more" in accuracy.reason
    assert outcomes(decision)["low-confidence share"] == OK  # only the accuracy waits


def test_with_no_correction_at_all_the_worst_case_accuracy_is_assumed():
    decision = decide(figures(2, corrected=0, right=0), figures(3, corrected=0, right=0), DEFAULTS)
    accuracy = check(decision, "accuracy")
    assert (decision.action, accuracy.outcome, accuracy.comparison) == (WAIT, INCONCLUSIVE, None)
    assert "nobody corrected the stable and canary version's answers" in accuracy.reason
    assert "from 50%, the worst case" in accuracy.reason
    assert accuracy.needed == per_group(0.5, 0.48, 0.05, 0.8) == 9806


def test_enough_corrections_but_an_interval_across_both_bounds_still_waits():
    stable = figures(2, corrected=2000, right=1940)
    decision = decide(stable, figures(3, corrected=2000, right=1920), DEFAULTS)
    accuracy = check(decision, "accuracy")
    low, high = accuracy.comparison.interval
    assert low < -0.02 < 0 < high
    assert (decision.action, accuracy.outcome) == (WAIT, INCONCLUSIVE)
    assert "both versions have the 1,686 corrections" in accuracy.reason


def test_a_wider_margin_accepts_what_the_default_waits_on():
    stable = figures(2, corrected=2000, right=1940)
    canary = figures(3, corrected=2000, right=1920)
    assert decide(stable, canary, replace(DEFAULTS, accuracy_margin=0.03)).action == PROMOTE


def test_more_low_confidence_answers_beyond_the_margin_roll_back_an_accurate_canary():
    decision = decide(STABLE, figures(3, low_confidence=300), DEFAULTS)  # 10% against 5%
    assert decision.action == ROLLBACK
    assert outcomes(decision)["accuracy"] == OK
    low_confidence = check(decision, "low-confidence share")
    assert low_confidence.outcome == WORSE
    assert "canary 10.0% vs stable 5.0%, +5.0 pp" in low_confidence.reason


def test_a_significant_rise_within_the_margin_is_not_a_rollback():
    # 6.5% of 5,000 against 5% of 20,000: surely higher, but maybe by less than 2 pp.
    stable = figures(2, requests=20000, low_confidence=1000)
    decision = decide(stable, figures(3, requests=5000, low_confidence=325), DEFAULTS)
    low_confidence = check(decision, "low-confidence share")
    low, high = low_confidence.comparison.interval
    assert 0 < low < 0.02 < high
    assert (decision.action, low_confidence.outcome) == (WAIT, INCONCLUSIVE)
    assert "each version needs about" in low_confidence.reason


def test_more_not_a_digit_answers_roll_back():
    canary = figures(3, verdicts={"digit": 2550, "unsure": 120, "not_a_digit": 330})
    decision = decide(STABLE, canary, DEFAULTS)
    assert decision.action == ROLLBACK
    assert outcomes(decision)["not-a-digit share"] == WORSE
    assert outcomes(decision)["unsure share"] == OK


def test_versions_without_verdicts_are_not_judged_on_them_and_still_promote():
    decision = decide(STABLE, figures(3, verdicts={}), DEFAULTS)
    assert decision.action == PROMOTE
    assert outcomes(decision)["unsure share"] == NOT_JUDGED
    assert outcomes(decision)["not-a-digit share"] == NOT_JUDGED


def test_latency_is_compared_only_from_enough_records():
    decision = decide(STABLE, figures(3), replace(DEFAULTS, min_requests=5000))
    assert decision.action == WAIT
    latency = check(decision, "latency")
    assert latency.outcome == INCONCLUSIVE
    assert "from 5000 records per version; stable has 3,000, canary 3,000" in latency.reason


def test_a_slower_canary_rolls_back_unless_within_the_slack():
    slower = decide(STABLE, figures(3, latency_p99_ms=30.0), DEFAULTS)  # allowed: 26 ms
    assert slower.action == ROLLBACK
    assert (outcomes(slower)["latency p50"], outcomes(slower)["latency p99"]) == (OK, WORSE)
    # Twice as slow at 2 ms is 2 ms more: within the 5 ms slack.
    fast = figures(2, latency_p50_ms=1.0, latency_p99_ms=2.0)
    assert decide(fast, figures(3, latency_p50_ms=2.0, latency_p99_ms=4.0), DEFAULTS).action == (
        PROMOTE
    )
