"""The intervals, test and sample size against published values, not against themselves."""

from __future__ import annotations

import pytest

from infra.rollout.stats import newcombe, per_group, wilson, z_test


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_newcombe_1998_table_1(k, n, low, high):
    assert wilson(k, n) == pytest.approx((low, high), abs=5e-5)


@pytest.mark.parametrize(
    ("k1", "n1", "k2", "n2", "low", "high"),
    [
        (56, 70, 48, 80, 0.0524, 0.3339),
        (9, 10, 3, 10, 0.1705, 0.8090),
        (6, 7, 2, 7, 0.0582, 0.8062),
        (5, 56, 0, 29, -0.0381, 0.1926),
    ],
)
def test_the_difference_interval_matches_newcombe_1998_method_10(k1, n1, k2, n2, low, high):
    assert newcombe(k1, n1, k2, n2) == pytest.approx((low, high), abs=5e-5)


def test_a_wider_confidence_gives_a_wider_interval():
    low95, high95 = wilson(30, 100)
    low99, high99 = wilson(30, 100, confidence=0.99)
    assert low99 < low95 < 0.3 < high95 < high99


def test_the_z_test_p_value():
    # 56/70 vs 48/80: pooled 104/150, z = 0.2 / 0.07547 = 2.650, two-sided p = 0.0080.
    assert z_test(56, 70, 48, 80) == pytest.approx(0.00805, abs=5e-5)
    assert z_test(48, 80, 56, 70) == z_test(56, 70, 48, 80)
    assert z_test(10, 10, 20, 20) == 1.0  # nothing varies: no evidence of a difference


def test_the_sample_size_per_group():
    # Fleiss without continuity correction: 97% vs 95%, two-sided 5%, 80% power.
    assert per_group(0.97, 0.95, 0.05, 0.8) == 1506
    # The worst case, around 50%: (1.96 * 0.7070 + 0.8416 * 0.7068)^2 / 0.02^2 = 9806.
    assert per_group(0.5, 0.48, 0.05, 0.8) == 9806
    assert per_group(0.97, 0.95, 0.05, 0.9) > 1506 > per_group(0.97, 0.93, 0.05, 0.8)
    with pytest.raises(ValueError):
        per_group(0.9, 0.9, 0.05, 0.8)
