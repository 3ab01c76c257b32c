"""The function's HTTP contract, through functions-framework.

The tests marked real_model read the real models' digits (the development model server);
the rest are answered by the in-process model stand-in.
"""

from __future__ import annotations

import base64
import io
import uuid

import numpy as np
import pytest
from PIL import Image

from imagesets import renderings
from tests.conftest import STABLE_VERSION


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def samples(mnist):
    """Five MNIST test digits the committed v2 model gets right, as PNG files with labels."""
    return [(png(mnist.x_test[i]), int(mnist.y_test[i])) for i in range(5)]


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"]
    return error


@pytest.mark.real_model
def test_a_raw_png_upload_is_recognized_and_recorded(client, samples):
    image, label = samples[0]
    response = client.post("/predict", data=image, content_type="image/png")
    assert response.status_code == 200
    body = response.get_json()
    assert body["recorded"] is True
    (prediction,) = body["predictions"]
    assert prediction["digit"] == label
    assert len(prediction["probabilities"]) == 10
    assert abs(sum(prediction["probabilities"]) - 1) < 1e-3
    assert prediction["confidence"] == max(prediction["probabilities"])
    assert prediction["model"] == {"name": "mnist", "version": STABLE_VERSION, "label": "stable"}
    uuid.UUID(prediction["id"])


@pytest.mark.real_model
def test_multipart_with_several_image_fields_answers_in_request_order(client, samples):
    files = [(io.BytesIO(image), f"digit{n}.png") for n, (image, _) in enumerate(samples)]
    response = client.post("/predict", data={"image": files}, content_type="multipart/form-data")
    assert response.status_code == 200
    assert [p["digit"] for p in response.get_json()["predictions"]] == [y for _, y in samples]


@pytest.mark.real_model
def test_json_base64_single_and_batch(client, samples):
    encoded = [base64.b64encode(image).decode() for image, _ in samples]
    one = client.post("/predict", json={"image": encoded[1]})
    assert one.get_json()["predictions"][0]["digit"] == samples[1][1]
    many = client.post("/predict", json={"images": encoded})
    assert [p["digit"] for p in many.get_json()["predictions"]] == [y for _, y in samples]
    data_url = client.post("/predict", json={"image": "data:image/png;base64," + encoded[2]})
    assert data_url.get_json()["predictions"][0]["digit"] == samples[2][1]


@pytest.mark.real_model
def test_octet_stream_and_real_world_uploads(client, mnist):
    rng = np.random.default_rng(5)
    digit, label = mnist.x_test[0], int(mnist.y_test[0])
    for render in (renderings.paper_jpeg, renderings.canvas_png, renderings.sideways_photo):
        response = client.post(
            "/predict", data=render(digit, rng), content_type="application/octet-stream"
        )
        assert response.get_json()["predictions"][0]["digit"] == label, render.__name__


def test_pinning_a_version_or_a_label(client, samples):
    image, _ = samples[0]
    v1 = client.post("/predict?version=1", data=image, content_type="image/png").get_json()
    assert v1["predictions"][0]["model"] == {"name": "mnist", "version": 1, "label": None}
    canary = client.post("/predict?label=canary", data=image, content_type="image/png").get_json()
    assert canary["predictions"][0]["model"]["label"] == "canary"


def test_unknown_version_or_label_is_404(client, samples):
    image, _ = samples[0]
    for query in ("version=99", "label=nonexistent"):
        response = client.post(f"/predict?{query}", data=image, content_type="image/png")
        assert_error(response, 404, "unknown_model_version")


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("version=abc", 400),
        ("version=0", 400),
        ("version=1&label=stable", 400),
        ("label=a%20b", 400),
    ],
)
def test_malformed_pins_are_400(client, samples, query, status):
    response = client.post(f"/predict?{query}", data=samples[0][0], content_type="image/png")
    assert_error(response, status, "invalid_parameter")


@pytest.mark.real_model
def test_every_prediction_in_a_200_can_be_read_back(client, samples):
    image, label = samples[3]
    prediction = client.post("/predict", data=image, content_type="image/png").get_json()[
        "predictions"
    ][0]
    record = client.get(f"/predictions/{prediction['id']}").get_json()
    assert record["digit"] == label == prediction["digit"]
    assert record["probabilities"] == prediction["probabilities"]
    assert record["model"] == prediction["model"]
    assert record["upload"]["content_type"] == "image/png"
    assert record["upload"]["size"] == len(image) and record["upload"]["stored"] is True
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(record["input_png"]))))
    assert seen.shape == (28, 28)
    upload = client.get(f"/predictions/{prediction['id']}/image")
    assert upload.status_code == 200 and upload.mimetype == "image/png"
    assert upload.data == image


@pytest.mark.real_model
def test_include_input_adds_the_28x28_the_model_saw_and_matches_the_record(client, samples):
    images = [(io.BytesIO(image), f"digit{n}.png") for n, (image, _) in enumerate(samples[:2])]
    response = client.post(
        "/predict?include=input", data={"image": images}, content_type="multipart/form-data"
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    predictions = response.get_json()["predictions"]
    assert [p["digit"] for p in predictions] == [y for _, y in samples[:2]]
    for prediction in predictions:
        seen = Image.open(io.BytesIO(base64.b64decode(prediction["input_png"])))
        assert seen.format == "PNG" and seen.size == (28, 28) and seen.mode == "L"
        assert np.asarray(seen).max() > 0  # the digit's ink, not an empty frame
        record = client.get(f"/predictions/{prediction['id']}").get_json()
        assert record["input_png"] == prediction["input_png"]


def test_the_default_answer_stays_lean_without_input_png(client, samples):
    body = client.post("/predict", data=samples[0][0], content_type="image/png").get_json()
    assert "input_png" not in body["predictions"][0]
    history = client.get("/predictions?limit=1").get_json()["predictions"]
    assert "input_png" not in history[0]


@pytest.mark.parametrize("query", ["include=everything", "include=", "include=input,upload"])
def test_unknown_includes_are_400_before_anything_is_recorded(client, samples, query):
    response = client.post(f"/predict?{query}", data=samples[0][0], content_type="image/png")
    assert_error(response, 400, "invalid_parameter")
    assert client.get("/predictions").get_json()["predictions"] == []


def test_history_is_newest_first_and_limited(client, samples):
    ids = []
    for image, _ in samples[:3]:
        response = client.post("/predict", data=image, content_type="image/png")
        ids.append(response.get_json()["predictions"][0]["id"])
    history = client.get("/predictions?limit=2").get_json()["predictions"]
    assert [p["id"] for p in history] == ids[::-1][:2]
    assert_error(client.get("/predictions?limit=0"), 400, "invalid_parameter")
    assert_error(client.get("/predictions?limit=lots"), 400, "invalid_parameter")


def test_unknown_prediction_ids_are_404(client):
    assert_error(client.get(f"/predictions/{uuid.uuid1()}"), 404, "unknown_prediction")
    assert_error(client.get("/predictions/not-a-uuid"), 404, "unknown_prediction")
    assert_error(client.get(f"/predictions/{uuid.uuid1()}/image"), 404, "unknown_prediction")


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"", "image/png", 400, "empty_body"),
        (b"this is plain text", "image/png", 400, "not_an_image"),
        (b"%PDF-1.4 not an image", "application/octet-stream", 400, "not_an_image"),
        (b"hello", "text/plain", 415, "unsupported_media_type"),
        (b"hello", None, 415, "unsupported_media_type"),
        (b"{not json", "application/json", 400, "invalid_json"),
        (b'{"image": "***"}', "application/json", 400, "invalid_base64"),
        (b'{"picture": "aGVsbG8="}', "application/json", 400, "missing_image"),
        (b"[1, 2]", "application/json", 400, "invalid_json"),
    ],
)
def test_bad_bodies_get_json_errors_never_500(client, body, content_type, status, code):
    headers = {"Content-Type": content_type} if content_type else {}
    assert_error(client.post("/predict", data=body, headers=headers), status, code)


def test_truncated_and_blank_images_are_400(client, samples):
    image, _ = samples[0]
    big = png(np.asarray(Image.open(io.BytesIO(image)).resize((300, 300))))
    truncated = client.post("/predict", data=big[: len(big) // 2], content_type="image/png")
    assert_error(truncated, 400, "not_an_image")
    white = png(np.full((50, 50), 255, dtype=np.uint8))
    assert_error(client.post("/predict", data=white, content_type="image/png"), 400, "blank_image")


def test_a_bad_image_in_a_batch_names_it_and_records_nothing(client, samples, function_env):
    images = [base64.b64encode(samples[0][0]).decode(), base64.b64encode(b"nope").decode()]
    error = assert_error(client.post("/predict", json={"images": images}), 400, "not_an_image")
    assert "image 2" in error["message"]
    assert client.get("/predictions").get_json()["predictions"] == []


def test_a_blank_image_in_a_batch_is_named_by_its_position(client, samples):
    blank = png(np.full((50, 50), 255, dtype=np.uint8))
    images = [base64.b64encode(image).decode() for image in (samples[0][0], blank)]
    error = assert_error(client.post("/predict", json={"images": images}), 400, "blank_image")
    assert error["message"].startswith("image 2:")
    assert client.get("/predictions").get_json()["predictions"] == []


def test_multipart_without_an_image_field_says_what_it_got(client, samples):
    data = {"file": (io.BytesIO(samples[0][0]), "digit.png")}
    error = assert_error(
        client.post("/predict", data=data, content_type="multipart/form-data"), 400, "missing_image"
    )
    assert "'file'" in error["message"]


def test_oversize_requests_are_413(client, samples, monkeypatch, function_env):
    huge = b"\x89PNG" + bytes(11 * 1024 * 1024)
    assert_error(
        client.post("/predict", data=huge, content_type="image/png"), 413, "request_too_large"
    )
    too_many = {"images": [base64.b64encode(samples[0][0]).decode()] * 65}
    assert_error(client.post("/predict", json=too_many), 413, "too_many_images")
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, format="PNG")
    assert_error(
        client.post("/predict", data=bomb.getvalue(), content_type="image/png"),
        413,
        "image_too_large",
    )


def test_unknown_paths_and_methods_are_json_errors(client):
    assert_error(client.get("/nowhere"), 404, "not_found")
    response = client.get("/predict")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"]["model_server"].startswith(
        f"ok: label 'stable' is version {STABLE_VERSION}"
    )


def test_readiness_names_the_model_server_when_it_is_down(function_env, monkeypatch):
    import functions_framework

    from tests.conftest import ROOT, free_port

    monkeypatch.setenv("MODEL_SERVER_URL", f"http://127.0.0.1:{free_port()}")
    client = functions_framework.create_app(
        "recognize", str(ROOT / "function" / "main.py")
    ).test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.headers["Retry-After"]
    body = ready.get_json()
    assert "model_server" in body["error"]["message"]
    assert body["checks"]["prediction_store"].startswith("ok")
    predict = client.post(
        "/predict", data=png(np.eye(28, dtype=np.uint8) * 255), content_type="image/png"
    )
    assert_error(predict, 503, "model_unavailable")
    assert client.get("/predictions").get_json()["predictions"] == []


def test_the_page_is_served_at_the_root(client):
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert b"<canvas" in page.data and b"predict" in page.data
