"""Calibration measures, temperature fitting, and folding T into the exported network."""

from __future__ import annotations

import numpy as np
import pytest

from training import models, outlier_exposure
from training.calibration import (
    expected_calibration_error,
    fit_temperature,
    max_probability_summary,
    nll,
    softmax,
)


def answers(confidence: float, right: int, total: int) -> tuple[np.ndarray, np.ndarray]:
    """`total` answers given with top probability `confidence`, of which `right` are right."""
    probabilities = np.full((total, 10), (1 - confidence) / 9)
    probabilities[:, 0] = confidence
    labels = np.zeros(total, dtype=np.int64)
    labels[right:] = 1
    return probabilities, labels


def test_ece_is_zero_when_confidence_matches_accuracy():
    assert expected_calibration_error(*answers(0.8, 800, 1000)) == pytest.approx(0, abs=1e-9)


def test_ece_is_the_count_weighted_gap_per_bin():
    sure, sure_labels = answers(0.95, 500, 500)  # 0.95 given, all right: gap 0.05
    unsure, unsure_labels = answers(0.55, 200, 500)  # 0.55 given, 40% right: gap 0.15
    probabilities = np.vstack([sure, unsure])
    labels = np.concatenate([sure_labels, unsure_labels])
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.10)


def test_nll_of_an_even_split_between_two_classes_is_log_2():
    probabilities = np.zeros((4, 10))
    probabilities[:, :2] = 0.5
    assert nll(probabilities, np.array([0, 1, 0, 1])) == pytest.approx(np.log(2))


def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_at():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (20_000, 10))
    truth = softmax(logits, 2.5)
    labels = np.array([rng.choice(10, p=row) for row in truth])
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)


def test_max_probability_summary_counts_shares_at_or_over_the_thresholds():
    probabilities = np.vstack([answers(c, 1, 1)[0] for c in (0.95, 0.9, 0.6, 0.3)])
    summary = max_probability_summary(probabilities)
    assert summary["share_at_least_0.9"] == 0.5 and summary["share_at_least_0.5"] == 0.75
    assert summary["mean_max_probability"] == pytest.approx((0.95 + 0.9 + 0.6 + 0.3) / 4)


def test_the_folded_temperature_gives_softmax_of_logits_over_t():
    network = models.small_cnn(logits=True)
    images = np.random.default_rng(1).integers(0, 256, (16, 28, 28)).astype(np.float32)
    logits = network.predict(images, verbose=0)
    served = outlier_exposure._with_temperature(network, 0.4)
    np.testing.assert_allclose(served.predict(images, verbose=0), softmax(logits, 0.4), atol=1e-5)


def test_digit_accuracy_ignores_the_uniform_rows():
    metric = outlier_exposure.DigitAccuracy()
    targets = np.vstack([np.eye(10)[[3, 5]], np.full((2, 10), 0.1)]).astype(np.float32)
    scores = np.eye(10)[[3, 2, 0, 0]].astype(np.float32)  # one digit right, one wrong
    metric.update_state(targets, scores)
    assert float(metric.result()) == pytest.approx(0.5)


def test_each_batch_is_digits_then_nondigits_with_the_uniform_target_and_their_weight():
    rng = np.random.default_rng(2)
    digits = rng.integers(0, 256, (40, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, 40)
    negatives = rng.integers(0, 256, (100, 28, 28)).astype(np.uint8)
    batch = outlier_exposure._batches(digits, labels, negatives, batch_size=8, seed=0)
    images, targets, weights = (t.numpy() for t in next(iter(batch)))
    outliers = outlier_exposure.NEGATIVES_PER_BATCH
    assert images.shape == (8 + outliers, 28, 28)
    assert (targets[:8].max(axis=1) == 1).all() and (targets[:8].sum(axis=1) == 1).all()
    np.testing.assert_allclose(targets[8:], 0.1)
    np.testing.assert_allclose(weights[:8], 1)
    np.testing.assert_allclose(weights[8:], outlier_exposure.LAMBDA * 8 / outliers)


def test_the_weight_mix_runs_from_the_start_to_the_fine_tuned_weights():
    start = models.small_cnn(logits=True).get_weights()
    tuned = [w + 1 for w in start]
    for share in (0.0, 0.5, 1.0):
        mixed = outlier_exposure.mixed(start, tuned, share).get_weights()
        for got, a in zip(mixed, start, strict=True):
            np.testing.assert_allclose(got, a + share, atol=1e-6)
