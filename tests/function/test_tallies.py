"""Per-version counts (recognizer/tallies.py) give the rollout tool's figures from records."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from infra.rollout import figures
from recognizer import tallies
from recognizer.verdict import Verdict
from tests.function.records_factory import make_record


def records(seed: int = 7, count: int = 2000) -> list:
    rng = random.Random(seed)
    kinds = ["digit", "unsure", "not_a_digit", None]
    made = []
    for n in range(count):
        kind = rng.choice(kinds)
        made.append(
            replace(
                make_record(digit=rng.randrange(10), model_label=rng.choice(["stable", None])),
                confidence=round(rng.random(), 4),
                latency_ms=rng.lognormvariate(3.0, 0.8),
                verdict=None if kind is None else Verdict(kind, (n % 10,), ()),
            )
        )
    return made


def rows_of(made: list) -> list[figures.Row]:
    return [
        figures.Row(
            r.model_version,
            r.model_label,
            r.confidence,
            r.latency_ms,
            None if r.verdict is None else r.verdict.kind,
            r.digit,
        )
        for r in made
    ]


def test_figures_from_counts_match_figures_from_the_records() -> None:
    made = records()
    half = len(made) // 2
    counted = tallies.tally(made[:half])
    counted.merge(tallies.tally(made[half:]))  # two writers' rows, summed on reading
    [from_counts] = figures.from_tallies({2: counted}, [], low_confidence=0.5)
    [from_rows] = figures.summarize(rows_of(made), low_confidence=0.5)
    assert from_counts.requests == from_rows.requests == len(made)
    assert from_counts.by_label == from_rows.by_label
    assert from_counts.verdicts == from_rows.verdicts
    assert from_counts.low_confidence == from_rows.low_confidence  # a threshold in hundredths
    assert from_counts.mean_confidence == pytest.approx(from_rows.mean_confidence)
    assert from_counts.drift_counts == from_rows.drift_counts
    for got, exact in (
        (from_counts.latency_p50_ms, from_rows.latency_p50_ms),
        (from_counts.latency_p99_ms, from_rows.latency_p99_ms),
    ):
        assert abs(got - exact) <= 0.1 * exact  # within the bins' 10%


@pytest.mark.parametrize("ms", [0.0, 0.5, 0.51, 1.0, 20.0, 999.9, 5e7])
def test_a_latency_falls_in_the_bin_whose_bounds_hold_it(ms: float) -> None:
    k = tallies.latency_bin(ms)
    low, high = tallies.latency_bounds(k)
    assert low < ms <= high or k in (0, tallies.LATENCY_BINS - 1)
