"""The verdict: what the ink's shape and the model's probabilities say about trusting an answer."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from imagesets import renderings
from recognizer import preprocess
from recognizer.config import Settings
from recognizer.verdict import (
    AMBIGUOUS,
    DIGIT,
    LOW_CONFIDENCE,
    NOT_A_DIGIT,
    TOO_LITTLE_INK,
    TOUCHES_EDGE,
    UNSURE,
    UNUSUAL_SHAPE,
    Shape,
    Verdict,
    VerdictPolicy,
    judge,
    measure,
)

POLICY = VerdictPolicy()
ONE_MARK = Shape(touches_edge=False, ink_extent=0.7, aspect=0.8)


def shape_of(image: Image.Image) -> Shape:
    """Measured as the service measures an upload: on its ink map and its 28x28 input."""
    return measure(preprocess.ink_map(image), POLICY)


def page(ink: np.ndarray) -> Image.Image:
    """Dark ink (1 = full) on white paper, as a canvas drawing is."""
    return Image.fromarray(np.rint(255 * (1 - np.clip(ink, 0, 1))).astype(np.uint8))


def digit_ink(mnist, index: int, height: int) -> np.ndarray:
    return renderings.strokes(mnist.x_test[index], height, 0.5)


def placed(canvas: tuple[int, int], *pieces: tuple[np.ndarray, int, int]) -> np.ndarray:
    out = np.zeros(canvas, dtype=np.float32)
    for ink, top, left in pieces:
        region = out[top : top + ink.shape[0], left : left + ink.shape[1]]
        np.maximum(region, ink[: region.shape[0], : region.shape[1]], out=region)
    return out


def test_an_mnist_digit_is_well_inside_the_picture_and_shaped_like_a_digit(mnist):
    for index in range(200):  # test image 26 touches the border: MNIST's own centring
        shape = shape_of(Image.fromarray(mnist.x_test[index]))
        assert not shape.touches_edge, index
        assert shape.ink_extent > 0.5 and shape.aspect < POLICY.max_aspect


def test_a_canvas_drawing_of_one_digit_is_judged_by_the_model_alone(mnist):
    shape = shape_of(page(placed((280, 280), (digit_ink(mnist, 0, 160), 40, 50))))
    assert judge(one_hot(7, 0.99), shape, POLICY) == Verdict(DIGIT, (7,), ())


def test_two_digits_side_by_side_are_wider_than_any_digit(mnist):
    one, two = digit_ink(mnist, 2, 120), digit_ink(mnist, 1, 120)  # MNIST test: a 1 and a 2
    shape = shape_of(page(placed((240, 400), (one, 50, 40), (two, 50, 200))))
    assert shape.aspect > POLICY.max_aspect
    verdict = judge(one_hot(2, 0.993), shape, POLICY)
    assert verdict.kind == NOT_A_DIGIT and UNUSUAL_SHAPE in verdict.reasons


def test_a_digit_that_runs_off_the_edge_of_the_pad_touches_the_edge(mnist):
    zero = digit_ink(mnist, 3, 200)  # MNIST test image 3 is a 0
    shape = shape_of(page(placed((280, 280), (zero, 120, 60))))  # its bottom is cut off
    assert shape.touches_edge
    assert judge(one_hot(6, 0.999), shape, POLICY).reasons[0] == TOUCHES_EDGE


def test_a_dot_on_the_pad_is_too_little_ink():
    image = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(image).ellipse((130, 130, 142, 142), fill=0)
    shape = shape_of(image)
    assert shape.ink_extent < POLICY.min_ink_extent
    assert judge(one_hot(0, 0.997), shape, POLICY) == Verdict(NOT_A_DIGIT, (0,), (TOO_LITTLE_INK,))


def test_a_long_dash_has_a_shape_no_digit_has():
    image = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(image).line((40, 140, 240, 150), fill=0, width=12)
    shape = shape_of(image)
    assert shape.aspect > POLICY.max_aspect
    assert UNUSUAL_SHAPE in judge(one_hot(1, 0.9), shape, POLICY).reasons


def test_a_photo_measures_like_the_drawing_it_shows(mnist):
    data = renderings.paper_jpeg(mnist.x_test[0], np.random.default_rng(3))
    shape = shape_of(preprocess.decode(data, 40_000_000))
    assert not shape.touches_edge and shape.ink_extent >= 0.1 and shape.aspect < POLICY.max_aspect


def one_hot(digit: int, confidence: float) -> np.ndarray:
    rest = (1 - confidence) / 9
    return np.array([confidence if d == digit else rest for d in range(10)], dtype=np.float32)


def test_one_clear_digit_is_a_digit_verdict():
    assert judge(one_hot(4, 0.95), ONE_MARK, POLICY) == Verdict(DIGIT, (4,), ())


def test_two_plausible_digits_are_unsure_most_likely_first():
    probabilities = np.full(10, 0.02, dtype=np.float32)
    probabilities[[6, 0]] = 0.40, 0.44
    assert judge(probabilities, ONE_MARK, POLICY) == Verdict(UNSURE, (0, 6), (AMBIGUOUS,))


def test_probability_spread_over_many_digits_is_not_a_digit():
    probabilities = np.full(10, 0.1, dtype=np.float32)
    assert judge(probabilities, ONE_MARK, POLICY).kind == NOT_A_DIGIT
    assert judge(probabilities, ONE_MARK, POLICY).reasons == (LOW_CONFIDENCE,)
    assert len(judge(probabilities, ONE_MARK, POLICY).candidates) == 3  # at most three named


def test_one_digit_somewhat_likely_and_the_rest_spread_is_not_a_digit():
    verdict = judge(one_hot(3, 0.4), ONE_MARK, POLICY)
    assert verdict == Verdict(NOT_A_DIGIT, (3,), (LOW_CONFIDENCE,))


def test_each_version_is_stood_by_at_its_own_confidence():
    """v4 is stood by from 0.45 and v3 from 0.6, each as chosen on the validation split, so
    a canary of one beside the other is judged as it was chosen; others take the default."""
    answer = one_hot(5, 0.5)
    assert judge(answer, ONE_MARK, POLICY, version=4).kind == DIGIT
    assert judge(answer, ONE_MARK, POLICY, version=3).kind == NOT_A_DIGIT
    assert judge(answer, ONE_MARK, POLICY, version=7).kind == DIGIT
    chosen = Settings.from_env(
        {"VERDICT_MIN_CONFIDENCE": "0.55", "VERDICT_MIN_CONFIDENCE_BY_VERSION": "4=0.3, 7=0.9"}
    ).verdict_policy
    assert judge(answer, ONE_MARK, chosen, version=3).kind == NOT_A_DIGIT  # the default is gone
    assert judge(answer, ONE_MARK, chosen, version=4).kind == DIGIT
    assert judge(answer, ONE_MARK, chosen, version=7).kind == NOT_A_DIGIT


def test_the_shape_outranks_a_confident_model():
    shape = Shape(touches_edge=True, ink_extent=0.05, aspect=2.5)
    verdict = judge(one_hot(0, 0.999), shape, POLICY)
    assert verdict.reasons == (TOUCHES_EDGE, TOO_LITTLE_INK, UNUSUAL_SHAPE)


def test_the_thresholds_are_settings_checked_at_start_up():
    policy = Settings.from_env({"VERDICT_MIN_CONFIDENCE": "0.75", "VERDICT_MAX_ASPECT": "2"})
    assert policy.verdict_policy == VerdictPolicy(min_confidence=0.75, max_aspect=2.0)
    assert judge(one_hot(3, 0.8), ONE_MARK, policy.verdict_policy).kind == DIGIT
    for name, bad in [
        ("VERDICT_MIN_CONFIDENCE", "1.5"),
        ("VERDICT_MIN_CANDIDATE", "nan"),
        ("VERDICT_MIN_UNSURE_MASS", "-0.1"),
        ("VERDICT_MAX_ASPECT", "0"),
        ("VERDICT_EDGE_MARGIN", "wide"),
        ("VERDICT_MIN_CONFIDENCE_BY_VERSION", "3"),
        ("VERDICT_MIN_CONFIDENCE_BY_VERSION", "0=0.5"),
        ("VERDICT_MIN_CONFIDENCE_BY_VERSION", "3=1.5"),
        ("VERDICT_MIN_CONFIDENCE_BY_VERSION", "3=0.5,3=0.6"),
    ]:
        with pytest.raises(ValueError, match=name):
            Settings.from_env({name: bad})


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.real_model
def test_every_answer_says_how_far_to_trust_it_and_the_log_keeps_it(client, mnist):
    """Through HTTP and the store: an MNIST digit, and two digits side by side."""
    pair = placed(
        (240, 400), (digit_ink(mnist, 2, 120), 50, 40), (digit_ink(mnist, 1, 120), 50, 200)
    )
    files = [png_bytes(Image.fromarray(mnist.x_test[0])), png_bytes(page(pair))]
    response = client.post("/predict", data={"image": [(io.BytesIO(f), "x.png") for f in files]})
    assert response.status_code == 200, response.get_data(as_text=True)
    digit, several = response.get_json()["predictions"]
    assert (digit["verdict"], digit["candidates"], digit["reasons"]) == ("digit", [7], [])
    assert several["verdict"] == "not_a_digit" and "unusual_shape" in several["reasons"]
    stored = client.get(f"/predictions/{several['id']}").get_json()
    assert (stored["verdict"], stored["reasons"]) == (several["verdict"], several["reasons"])
    history = client.get("/predictions").get_json()["predictions"]
    assert [p["verdict"] for p in history[:2]] == ["not_a_digit", "digit"]
