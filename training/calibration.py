"""Calibration measures: how far a model's confidence is from how often it is right.

A verdict (digit / unsure / not a digit) reads the top probability, so that number has
to mean what it says: of the answers given with 0.9, about 9 in 10 should be right.
Everything here is numpy on probabilities or logits, so it works for any version.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

BINS = 15  # the usual choice for ECE (Guo et al. 2017), so figures compare with the literature


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def nll(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels (natural log)."""
    picked = probabilities[np.arange(len(labels)), labels.astype(np.int64)]
    return float(-np.mean(np.log(np.clip(picked, 1e-12, None))))


def reliability(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS
) -> list[tuple[float, float, int]]:
    """Per equal-width bin of top-label confidence: (mean confidence, accuracy, count)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    # Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of 0 joins the first.
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        if count:
            rows.append((float(confidence[members].mean()), float(correct[members].mean()), count))
        else:
            rows.append((float("nan"), float("nan"), 0))
    return rows


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS
) -> float:
    """Top-label ECE: the count-weighted mean gap between confidence and accuracy per bin."""
    total = len(labels)
    return float(
        sum(
            count / total * abs(conf - acc)
            for conf, acc, count in reliability(probabilities, labels, bins)
            if count
        )
    )


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T that minimises the NLL of softmax(logits / T) (temperature scaling).

    The NLL is convex in 1/T, so a golden-section search over log T finds the minimum;
    T stays within [0.05, 20], far outside anything a trained network needs.
    """
    low, high = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5) - 1) / 2

    def loss(log_t: float) -> float:
        return nll(softmax(logits, float(np.exp(log_t))), labels)

    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    while high - low > 1e-5:
        if loss_a < loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return float(np.exp((low + high) / 2))


def max_probability_summary(probabilities: np.ndarray) -> dict[str, float]:
    """How sure a model is of inputs: mean top probability, and shares at or over 0.9 and 0.5."""
    top = probabilities.max(axis=1)
    return {
        "count": len(top),
        "mean_max_probability": float(top.mean()),
        "share_at_least_0.9": float(np.mean(top >= 0.9)),
        "share_at_least_0.5": float(np.mean(top >= 0.5)),
    }


def plot_reliability(probabilities: np.ndarray, labels: np.ndarray, title: str, path: Path) -> None:
    """A reliability diagram: accuracy per confidence bin against the diagonal, with counts."""
    rows = reliability(probabilities, labels)
    edges = np.linspace(0, 1, BINS + 1)
    accuracy = [acc if count else 0.0 for _, acc, count in rows]
    counts = [count for _, _, count in rows]
    fig, (ax, count_ax) = plt.subplots(
        2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.bar(edges[:-1], accuracy, width=1 / BINS, align="edge", edgecolor="black", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ece = expected_calibration_error(probabilities, labels)
    ax.set(ylabel="accuracy", ylim=(0, 1), title=f"{title}\nECE {ece:.4f} (15 bins)")
    ax.legend(loc="upper left")
    count_ax.bar(edges[:-1], counts, width=1 / BINS, align="edge", edgecolor="black")
    count_ax.set(xlabel="top-label confidence", ylabel="images", yscale="log", xlim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
