"""recognizer/drift.py: bins, the PSI, the judgement's minimum window, and the shipped
reference profiles (bench/drift_canary.py measures detection and false alarms)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recognizer import drift


def observation(digit=7, confidence=0.995, verdict="digit", image=None) -> drift.Observation:
    if image is None:
        image = np.zeros((28, 28), dtype=np.uint8)
        image[4:24, 12:16] = 255  # a stroke 20 pixels tall, 4 wide
    return drift.Observation(digit, confidence, verdict, image)


def test_input_statistics_of_a_known_stroke():
    stats = drift.input_statistics(observation().input_image)
    assert stats["ink_share"] == pytest.approx(80 / 784)
    assert stats["ink_extent"] == pytest.approx(20 / 28)
    assert stats["brightness"] == pytest.approx(80 / 784)
    blank = drift.input_statistics(np.zeros((28, 28), dtype=np.uint8))
    assert blank == {"ink_share": 0.0, "ink_extent": 0.0, "brightness": 0.0}


@pytest.mark.parametrize(
    ("signal", "value", "expected"),
    [
        ("confidence", 0.2, "<0.5"),
        ("confidence", 0.5, "<0.7"),  # an edge opens the next bin
        ("confidence", 0.995, ">=0.99"),
        ("digit", 3, "3"),
        ("verdict", "unsure", "unsure"),
        ("verdict", "something new", "none"),
    ],
)
def test_a_value_falls_in_its_bin(signal, value, expected):
    assert drift.bin_of(signal, value) == expected


def test_psi_is_zero_for_the_reference_itself_and_grows_with_a_shift():
    counts = {"a": 500, "b": 300, "c": 200}
    reference = drift.shares(counts)
    assert drift.psi(counts, reference) == pytest.approx(0.0, abs=1e-12)
    shifted = {"a": 200, "b": 300, "c": 500}
    live = drift.shares(shifted)
    expected = sum((live[k] - reference[k]) * math.log(live[k] / reference[k]) for k in counts)
    assert drift.psi(shifted, reference) == pytest.approx(expected)
    assert expected > drift.PSI_DRIFT
    # an empty bin stays finite (smoothing)
    assert math.isfinite(drift.psi({"a": 1000, "b": 0, "c": 0}, reference))


def test_a_window_is_judged_only_from_its_minimum_size():
    reference = drift.profile([observation(confidence=0.999)] * 50)
    few = drift.count([observation(confidence=0.3)] * (drift.MIN_WINDOW - 1))
    assert drift.assess(few, reference).psi["confidence"] > drift.PSI_DRIFT
    assert drift.assess(few, reference).drifted == ()
    enough = drift.count([observation(confidence=0.3)] * drift.MIN_WINDOW)
    assert drift.assess(enough, reference).drifted == ("confidence",)


@pytest.mark.parametrize("version", [1, 5])
def test_the_shipped_profiles_cover_every_bin_and_sum_to_one(version):
    reference = drift.load_profile(version)
    assert reference is not None
    for signal in drift.SIGNALS:
        assert tuple(reference[signal]) == drift.bins(signal)
        assert sum(reference[signal].values()) == pytest.approx(1.0, abs=1e-4)
        assert min(reference[signal].values()) > 0


def test_a_profile_round_trips_through_its_file(tmp_path):
    reference = drift.profile([observation(), observation(digit=1, confidence=0.6)])
    drift.save_profile(tmp_path / "v9.json", reference, "two made-up answers")
    loaded = drift.load_profile(9, tmp_path)
    assert loaded is not None
    for signal in drift.SIGNALS:
        assert loaded[signal] == pytest.approx(reference[signal], abs=1e-6)
    assert drift.load_profile(8, tmp_path) is None
