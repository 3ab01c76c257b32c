"""`python -m training.calibration_report`: does each version's confidence mean what it says?

Writes docs/models/calibration.md (with calibration.json and calibration_nondigits.png)
and a reliability diagram per version (docs/models/v<n>/reliability.png). Each version
is loaded as the model server loads it (training.saved_model: its serving signature)
and measured on three sets:
- the 10,000 MNIST test images: accuracy, ECE (15 bins, top label) and NLL;
- the "eval" split of imagesets.nondigits, through the function's own preprocessing:
  seeds, fonts, digits and shapes that v3's training never saw. How sure is the model
  of what is not a digit? (mean top probability, shares at or over 0.9 and 0.5);
- MNIST test digits rendered as real uploads (imagesets.renderings), through the same
  preprocessing: how sure does it stay of real digits?
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from training import uploads
from training.calibration import (
    expected_calibration_error,
    max_probability_summary,
    nll,
    plot_reliability,
)
from training.data import Mnist, load_mnist
from training.saved_model import Predict, served

ROOT = Path(__file__).resolve().parent.parent
EVAL_PER_KIND = 150  # nondigit uploads of each kind in the "eval" split
EVAL_SEED = 0
RENDERED_DIGITS = 200  # MNIST test digits, each in every renderings kind


@dataclass(frozen=True)
class Sets:
    mnist: Mnist
    nondigits: dict[str, np.ndarray]  # uploads.to_fields arrays
    rendered: dict[str, np.ndarray]  # the same, with `labels`


def load_sets(mnist: Mnist) -> Sets:
    return Sets(
        mnist,
        uploads.nondigit_fields("eval", EVAL_PER_KIND, EVAL_SEED, mnist),
        uploads.rendered_digit_fields(RENDERED_DIGITS, mnist),
    )


@dataclass(frozen=True)
class Measured:
    metrics: dict[str, object]
    test_probabilities: np.ndarray
    nondigit_top: np.ndarray
    rendered_top: np.ndarray


def measure(predict: Predict, sets: Sets) -> Measured:
    labels = sets.mnist.y_test
    test = predict(sets.mnist.x_test)
    nondigits = predict(sets.nondigits["fields"])
    rendered = predict(sets.rendered["fields"])
    kinds = sets.nondigits["kinds"]
    blank = sets.nondigits["blank_kinds"]
    metrics = {
        "mnist_test": {
            "images": len(labels),
            "accuracy": float(np.mean(test.argmax(axis=1) == labels)),
            "ece": expected_calibration_error(test, labels),
            "nll": nll(test, labels),
        },
        "nondigits_eval": {
            **max_probability_summary(nondigits),
            "uploads": len(kinds) + len(blank),
            "blank_uploads": len(blank),
            "per_kind": {
                kind: {
                    **max_probability_summary(nondigits[kinds == kind]),
                    "blank_uploads": int(np.sum(blank == kind)),
                }
                for kind in dict.fromkeys(kinds)
            },
        },
        "rendered_digits": {
            **max_probability_summary(rendered),
            "accuracy": float(np.mean(rendered.argmax(axis=1) == sets.rendered["labels"])),
        },
    }
    return Measured(metrics, test, nondigits.max(axis=1), rendered.max(axis=1))


def version_section(version: int, version_dir: Path, mnist: Mnist, out_dir: Path) -> str:
    """Markdown on one exported version's calibration; writes out_dir/reliability.png."""
    measured = measure(served(version_dir), load_sets(mnist))
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_reliability(
        measured.test_probabilities, mnist.y_test, f"v{version}", out_dir / "reliability.png"
    )
    m = measured.metrics
    test, nondigits, rendered = m["mnist_test"], m["nondigits_eval"], m["rendered_digits"]
    rows = "\n".join(
        f"| {kind} | {s['count']} | {s['blank_uploads']} | {s['mean_max_probability']:.3f} | "
        f"{s['share_at_least_0.9']:.1%} | {s['share_at_least_0.5']:.1%} |"
        for kind, s in nondigits["per_kind"].items()
    )
    return (
        "\n## Calibration (the exported model, through its serving signature)\n\n"
        f"- MNIST test: accuracy {test['accuracy']:.2%}, ECE {test['ece']:.4f} "
        f"(15 bins, top label), NLL {test['nll']:.4f}\n"
        f'- Not digits (imagesets.nondigits, "eval" split, {nondigits["uploads"]} uploads, '
        f"{nondigits['blank_uploads']} blank ones answered 422 before the model): mean top "
        f"probability {nondigits['mean_max_probability']:.3f}, "
        f"{nondigits['share_at_least_0.9']:.1%} at or over 0.9, "
        f"{nondigits['share_at_least_0.5']:.1%} at or over 0.5\n"
        f"- Real digit uploads ({rendered['count']} renderings of MNIST test digits): "
        f"accuracy {rendered['accuracy']:.2%}, mean top probability "
        f"{rendered['mean_max_probability']:.3f}, {rendered['share_at_least_0.9']:.1%} "
        "at or over 0.9\n\n"
        "| not a digit | fields | blank | mean top probability | >= 0.9 | >= 0.5 |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
        f"{rows}\n\n"
        "![reliability diagram](reliability.png)\n\n"
        "v2 beside v3, and how these are measured: [calibration.md](../calibration.md)\n"
    )


def write_comparison(
    measured: dict[int, Measured], temperatures: dict[int, float | None], reports_dir: Path
) -> None:
    """docs/models/calibration.md, calibration.json and calibration_nondigits.png."""
    metrics = {f"v{v}": {"temperature": temperatures[v], **m.metrics} for v, m in measured.items()}
    (reports_dir / "calibration.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _plot_top_probabilities(measured, reports_dir / "calibration_nondigits.png")
    (reports_dir / "calibration.md").write_text(_comparison_markdown(measured, temperatures))


def _plot_top_probabilities(measured: dict[int, Measured], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=False)
    bins = np.linspace(0.1, 1, 19)
    for ax, attribute, title in (
        (axes[0], "nondigit_top", 'not digits (nondigits "eval")'),
        (axes[1], "rendered_top", "real digit uploads (renderings)"),
    ):
        for version, m in measured.items():
            values = getattr(m, attribute)
            ax.hist(values, bins=bins, alpha=0.5, label=f"v{version}", edgecolor="black")
        ax.set(xlabel="top probability", ylabel="uploads", yscale="log", title=title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _comparison_markdown(
    measured: dict[int, Measured], temperatures: dict[int, float | None]
) -> str:
    versions = list(measured)
    first = measured[versions[0]].metrics
    nd = first["nondigits_eval"]

    def row(version: int, cells: list[str]) -> str:
        return f"| v{version} | " + " | ".join(cells) + " |"

    test_rows = "\n".join(
        row(
            v,
            [
                f"{m.metrics['mnist_test']['accuracy']:.2%}",
                f"{m.metrics['mnist_test']['ece']:.4f}",
                f"{m.metrics['mnist_test']['nll']:.4f}",
                "none" if temperatures[v] is None else f"{temperatures[v]:.3f}",
            ],
        )
        for v, m in measured.items()
    )

    def summary_cells(s: dict[str, float]) -> list[str]:
        return [
            f"{s['mean_max_probability']:.3f}",
            f"{s['share_at_least_0.9']:.1%}",
            f"{s['share_at_least_0.5']:.1%}",
        ]

    nondigit_rows = "\n".join(
        row(v, summary_cells(m.metrics["nondigits_eval"])) for v, m in measured.items()
    )
    rendered_rows = "\n".join(
        row(
            v,
            [
                f"{m.metrics['rendered_digits']['accuracy']:.2%}",
                *summary_cells(m.metrics["rendered_digits"]),
            ],
        )
        for v, m in measured.items()
    )
    kind_header = " | ".join(f"v{v} mean | v{v} >= 0.9" for v in versions)

    def kind_cells(kind: str) -> str:
        per_version = [measured[v].metrics["nondigits_eval"]["per_kind"][kind] for v in versions]
        return " | ".join(
            f"{s['mean_max_probability']:.3f} | {s['share_at_least_0.9']:.1%}" for s in per_version
        )

    kind_rows = "\n".join(
        f"| {kind} | {s['count']} | {s['blank_uploads']} | {kind_cells(kind)} |"
        for kind, s in nd["per_kind"].items()
    )
    images = "\n".join(f"![v{v} reliability diagram](v{v}/reliability.png)" for v in versions)
    rendered = first["rendered_digits"]
    return f"""# Calibration: {", ".join(f"v{v}" for v in versions)}

Written by `python -m training.calibration_report` (numbers in
[calibration.json](calibration.json)); each version measured as served, through its
`serving_default` signature. A verdict (digit / unsure / not a digit) reads the top
probability, so it has to mean what it says: of the answers given with 0.9, about 9 in
10 right, and what is not a digit should not get 0.9 at all.

## MNIST test ({first["mnist_test"]["images"]:,} images)

ECE: the top-label expected calibration error over 15 equal-width confidence bins (the
count-weighted mean gap between confidence and accuracy). NLL: the mean negative
log-likelihood of the true digit. T: the temperature folded into the exported model.

| version | accuracy | ECE | NLL | T |
| --- | --- | --- | --- | --- |
{test_rows}
{_reading(measured)}
{images}

## Not digits

The "eval" split of `imagesets.nondigits`: {EVAL_PER_KIND} uploads of each kind, seed {EVAL_SEED},
{nd["uploads"]} in all. {nd["blank_uploads"]} of them preprocess to BlankImage, which the service
answers with 422 "no digit found" before any model sees them; the other {nd["count"]} are
measured. Its random streams, fonts (DejaVu Serif and Sans Mono), MNIST digits (the test
set) and four of its shapes never appear in v3's or v4's training, which used the
"train" split, and no cut-off digit was trained on at all.

| version | mean top probability | >= 0.9 | >= 0.5 |
| --- | --- | --- | --- |
{nondigit_rows}

| kind | fields | blank | {kind_header} |
| --- | --- | --- | {" | ".join("--- | ---" for _ in versions)} |
{kind_rows}

## Real digit uploads

The first {RENDERED_DIGITS} MNIST test digits in each `imagesets.renderings` kind (paper
photo, canvas, marker, pen, sideways photo: {rendered["count"]} uploads) through the
function's preprocessing: a model that doubts what is not a digit must not start
doubting real digits.

| version | accuracy | mean top probability | >= 0.9 | >= 0.5 |
| --- | --- | --- | --- | --- |
{rendered_rows}

![top probabilities](calibration_nondigits.png)

## How v3 is calibrated

- Outlier exposure (Hendrycks et al. 2019): fine-tuned from v2's weights for 3 epochs
  on MNIST's 55,000 training digits plus the nondigits' "train" split, as the
  function's preprocessing turns them into fields (64 beside each batch of 128 digits,
  augmented alike), minimising cross-entropy on digits plus 0.5 times cross-entropy to
  the uniform distribution on nondigits (`training/outlier_exposure.py`). Batch
  normalisation keeps v2's statistics (updated on mixed batches they cost accuracy).
  Cut-off digits are measured here but not trained on: once scaled and centred, what
  is left of a digit is often a digit's shape, and teaching the model to doubt those
  taught it to doubt real digits (see `training/train.py`).
- Weight mix (WiSE-FT, Wortsman et al. 2022): outlier exposure alone cost 0.2 points of
  test accuracy, so v3's weights are the average of the fine-tuned weights and v2's
  (share 0.5, WiSE-FT's default); [v3's report](v3/report.md) has the curve from v2 to
  outlier exposure alone.
- Temperature scaling (Guo et al. 2017): one T, fitted by minimising the NLL on the
  5,000 validation digits only, and folded into the last layer (softmax(logits / T)).
  Only digits, because T is there to make the confidence of digit answers honest; the
  spreading of nondigits is outlier exposure's job, and fitting T on nondigits too
  would trade digit calibration for lower scores on the kinds of nondigit it saw
  (and would use up held-out nondigits the evaluation needs). Outlier exposure leaves
  digit answers underconfident, so T comes out below 1: it sharpens digits back, and
  nondigits with them; the figures above are after it.

## How v4 is calibrated

- Two networks on the same pixels (`training/rejection.py`): v2's, unchanged, names
  the digit; a copy of v2's network with a one-unit head, fine-tuned as a binary
  classifier (MNIST's training digits, some of them rendered as uploads and phone
  photos through the function's preprocessing, against the nondigits' "train" split,
  cut-off digits left out as for v3), gives q, the probability that the input is not
  a digit. The served probabilities are (1 - q) * softmax(z / T) + q / 10: they sum
  to 1, their argmax is v2's (so is the MNIST accuracy), and a nondigit gets a flat
  distribution, which the verdict turns away for its low top probability.
- Temperature scaling as for v3, on v2's logits and the validation digits only. v2 is
  a little overconfident there, so T comes out above 1 and softens digit answers:
  the threshold that keeps the digit targets is lower with v4 than with v3.
- The rejector was trained on batches 40% nondigits, far more than real uploads
  hold, and doubted a tail of real digits: its logit is shifted by
  `rejection.DOUBT_SHIFT` (a prior correction), chosen with VERDICT_MIN_CONFIDENCE on
  the validation split of `python -m evaluation` ([v4's verdicts](v4/evaluation.md)).
"""


def _reading(measured: dict[int, Measured]) -> str:
    """A sentence on the MNIST figures when they are all small (as they are for v2 and v3)."""
    worst = max(m.metrics["mnist_test"]["ece"] for m in measured.values())
    images = next(iter(measured.values())).metrics["mnist_test"]["images"]
    if worst >= 0.01:
        return ""
    return (
        f"\nEvery version's ECE here is at most {worst:.2%}, about {worst * images:.0f} "
        "images' worth of confidence: on MNIST digits the confidence already means what it "
        "says, and versions differ on what is not a digit.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.calibration_report", description=__doc__
    )
    parser.add_argument("--versions", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--reports-dir", type=Path, default=ROOT / "docs" / "models")
    args = parser.parse_args()
    mnist = load_mnist()
    sets = load_sets(mnist)
    measured, temperatures = {}, {}
    for version in args.versions:
        measured[version] = measure(served(args.models_dir / "mnist" / str(version)), sets)
        out_dir = args.reports_dir / f"v{version}"
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_reliability(
            measured[version].test_probabilities,
            mnist.y_test,
            f"v{version}",
            out_dir / "reliability.png",
        )
        report = out_dir / "metrics.json"
        temperature = (
            json.loads(report.read_text()).get("temperature") if report.is_file() else None
        )
        temperatures[version] = temperature
    write_comparison(measured, temperatures, args.reports_dir)
    for version, m in measured.items():
        test, nondigits = m.metrics["mnist_test"], m.metrics["nondigits_eval"]
        print(
            f"v{version}: MNIST test accuracy {test['accuracy']:.4f} ECE {test['ece']:.4f} "
            f"NLL {test['nll']:.4f}; nondigits mean top {nondigits['mean_max_probability']:.3f}, "
            f">= 0.9 {nondigits['share_at_least_0.9']:.1%}, "
            f">= 0.5 {nondigits['share_at_least_0.5']:.1%}"
        )


if __name__ == "__main__":
    main()
