"""Per-version evaluation report: accuracy, per-class accuracy, confusion matrix, curves."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Rows are true digits, columns predicted digits."""
    matrix = np.zeros((10, 10), dtype=np.int64)
    np.add.at(matrix, (labels.astype(np.int64), predicted.astype(np.int64)), 1)
    return matrix


def write_report(
    out_dir: Path,
    title: str,
    labels: np.ndarray,
    predicted: np.ndarray,
    history: dict[str, list[float]],
    details: dict[str, object],
    notes: str = "",
) -> dict[str, object]:
    """Write report.md, metrics.json, confusion.png and training_curve.png; return the metrics.

    `notes`: more Markdown for the end of report.md (v3's calibration section).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    matrix = confusion_matrix(labels, predicted)
    per_class = (np.diag(matrix) / matrix.sum(axis=1)).tolist()
    metrics = {
        "title": title,
        "test_accuracy": float(np.mean(labels == predicted)),
        "test_images": len(labels),
        "per_class_accuracy": {str(d): round(a, 5) for d, a in enumerate(per_class)},
        "confusion_matrix": matrix.tolist(),
        "history": history,
        **details,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _plot_confusion(matrix, title, out_dir / "confusion.png")
    _plot_history(history, title, out_dir / "training_curve.png")
    (out_dir / "report.md").write_text(_markdown(metrics) + notes)
    return metrics


def _plot_confusion(matrix: np.ndarray, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 5.5))
    # Log scale so the few errors stand out next to the ~1,000 correct answers per class.
    ax.imshow(np.log1p(matrix), cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        if count:
            color = "white" if row == col else "black"
            ax.text(col, row, str(count), ha="center", va="center", fontsize=7, color=color)
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true digit")
    ax.set_title(f"{title}: confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_history(history: dict[str, list[float]], title: str, path: Path) -> None:
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = range(1, len(history["loss"]) + 1)
    for key in ("loss", "val_loss"):
        loss_ax.plot(epochs, history[key], marker="o", label=key)
    for key in ("accuracy", "val_accuracy"):
        acc_ax.plot(epochs, history[key], marker="o", label=key)
    loss_ax.set(xlabel="epoch", title=f"{title}: loss")
    acc_ax.set(xlabel="epoch", title=f"{title}: accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _markdown(metrics: dict[str, object]) -> str:
    per_class = metrics["per_class_accuracy"]
    rows = "\n".join(f"| {d} | {a:.2%} |" for d, a in per_class.items())
    details = "\n".join(
        f"- {key}: {value}"
        for key, value in metrics.items()
        if key not in {"title", "per_class_accuracy", "confusion_matrix", "history"}
    )
    return (
        f"# {metrics['title']}\n\n"
        f"Test accuracy on the {metrics['test_images']:,} MNIST test images: "
        f"**{metrics['test_accuracy']:.2%}**\n\n"
        f"{details}\n\n"
        "| digit | accuracy |\n| --- | --- |\n"
        f"{rows}\n\n"
        "![confusion matrix](confusion.png)\n\n![training curve](training_curve.png)\n"
    )
