"""Is a worse canary flagged by drift, and how often is a good one flagged by chance?

    python -m bench.drift_canary            # about a minute (TensorFlow, 2 x 10,000 images)

Live traffic is the 10,000 MNIST test images (never in a profile: profiles come from the
validation split of the training images). A canary's window of n requests, drawn at
random from that traffic, is judged against the stable version's reference profile
(function/recognizer/profiles/v5.json) with recognizer.drift's rule: flagged when any
signal's PSI passes drift.PSI_DRIFT, once the window holds drift.MIN_WINDOW requests.
v1 (softmax regression, 91.8%) as the canary must be flagged within 500 requests; v5
against its own profile must not be, and how often it is (the false alarm rate, per
window judged) is printed with the PSI spread that justifies the line.
"""

from __future__ import annotations

import numpy as np

from recognizer import drift
from training.data import load_mnist
from training.profile import observations

TRIALS = 1000
CHECKPOINTS = (200, 300, 400, 500)  # a window is judged every 100 requests from MIN_WINDOW


def first_flag(
    counted: list[dict[str, str]], reference: dict, checkpoints=CHECKPOINTS
) -> int | None:
    """The first checkpoint at which the window so far is flagged, else None."""
    for n in checkpoints:
        counts = {s: dict.fromkeys(drift.bins(s), 0) for s in drift.SIGNALS}
        for binned in counted[:n]:
            for signal, name in binned.items():
                counts[signal][name] += 1
        if drift.assess(counts, reference).drifted:
            return n
    return None


def main() -> None:
    images = load_mnist().x_test
    reference = drift.load_profile(5)
    assert reference is not None, "run python -m training.profile --version 5"
    binned = {v: [drift.binned(o) for o in observations(v, images)] for v in (1, 5)}
    rng = np.random.default_rng(26)
    print(f"{TRIALS} windows of up to {CHECKPOINTS[-1]} requests from the MNIST test images,")
    print(f"judged at {CHECKPOINTS} against v5's profile; PSI line {drift.PSI_DRIFT}\n")
    for version in (1, 5):
        flags, psi_500 = [], {s: [] for s in drift.SIGNALS}
        for _ in range(TRIALS):
            picked = rng.choice(len(images), CHECKPOINTS[-1], replace=False)
            window = [binned[version][i] for i in picked]
            flags.append(first_flag(window, reference))
            counts = {s: dict.fromkeys(drift.bins(s), 0) for s in drift.SIGNALS}
            for row in window:
                for signal, name in row.items():
                    counts[signal][name] += 1
            for signal, value in drift.assess(counts, reference).psi.items():
                psi_500[signal].append(value)
        flagged = [f for f in flags if f is not None]
        print(f"canary v{version}: flagged in {len(flagged)}/{TRIALS} windows by 500 requests")
        if flagged:
            print(f"  first flagged at: median {int(np.median(flagged))}, max {max(flagged)}")
        for signal in drift.SIGNALS:
            values = np.array(psi_500[signal])
            print(
                f"  PSI {signal:<11} at 500: median {np.median(values):.4f}, "
                f"p99 {np.percentile(values, 99):.4f}, max {values.max():.4f}"
            )
        print()


if __name__ == "__main__":
    main()
