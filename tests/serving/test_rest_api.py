"""TF Serving's REST semantics over real HTTP against a running dev server."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path

import pytest
import requests
from serving_testlib import Deployment, expected_digit, image, predict_digit

from serving import ModelServer

SERVING_DIR = Path(__file__).resolve().parents[2] / "serving"


def post(server: ModelServer, path: str, body: object) -> requests.Response:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return requests.post(f"{server.url}{path}", data=data, timeout=10)


# ------------------------------------------------------------------- predict
@pytest.mark.parametrize(
    ("route", "kind"),
    [
        ("", "flipped"),  # omitted version: latest AVAILABLE, i.e. 2
        ("/versions/1", "bucket"),
        ("/versions/2", "flipped"),
        ("/labels/stable", "bucket"),
        ("/labels/canary", "flipped"),
    ],
)
def test_predict_routes_to_the_requested_version(served: ModelServer, route: str, kind: str):
    for value in (0, 30, 130, 255):
        assert predict_digit(served.url, value, route) == expected_digit(value, kind)


def test_row_format_returns_one_object_per_instance(served: ModelServer):
    response = post(
        served, "/v1/models/mnist/versions/1:predict", {"instances": [image(0), image(255)]}
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    predictions = response.json()["predictions"]
    assert [p["digit"] for p in predictions] == [0, 9]
    assert set(predictions[0]) == {"digit", "probabilities"}
    assert predictions[0]["probabilities"] == pytest.approx([0.91] + [0.01] * 9)
    assert predictions[1]["probabilities"][9] == pytest.approx(0.91)


def test_row_format_accepts_named_objects(served: ModelServer):
    body = {"instances": [{"image": image(130)}, {"image": image(255)}]}
    response = post(served, "/v1/models/mnist/versions/1:predict", body)
    assert response.status_code == 200, response.text
    assert [p["digit"] for p in response.json()["predictions"]] == [5, 9]


@pytest.mark.parametrize("named", [False, True])
def test_columnar_format_returns_outputs_by_name(served: ModelServer, named: bool):
    images = [image(30), image(130)]
    body = {"inputs": {"image": images} if named else images}
    response = post(served, "/v1/models/mnist/versions/1:predict", body)
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert outputs["digit"] == [1, 5]
    assert len(outputs["probabilities"]) == 2 and len(outputs["probabilities"][0]) == 10


def test_signature_name_selects_another_signature(served: ModelServer):
    body = {"signature_name": "mean_intensity", "instances": [image(0), image(255)]}
    response = post(served, "/v1/models/mnist:predict", body)
    assert response.status_code == 200, response.text
    # A single output is not wrapped in an object: a plain list, one value per instance.
    assert response.json() == {"predictions": [0.0, 1.0]}
    body = {"signature_name": "mean_intensity", "inputs": [image(51)]}
    assert post(served, "/v1/models/mnist:predict", body).json()["outputs"] == [pytest.approx(0.2)]


def test_explicit_default_signature_name(served: ModelServer):
    body = {"signature_name": "serving_default", "instances": [image(255)]}
    assert (
        post(served, "/v1/models/mnist/versions/1:predict", body).json()["predictions"][0]["digit"]
        == 9
    )


def test_batch_of_64_images(served: ModelServer):
    values = list(range(0, 256, 4))
    body = {"instances": [image(v) for v in values]}
    response = post(served, "/v1/models/mnist/labels/stable:predict", body)
    assert response.status_code == 200
    assert [p["digit"] for p in response.json()["predictions"]] == [
        expected_digit(v, "bucket") for v in values
    ]


# -------------------------------------------------------------------- errors
MNIST = "/v1/models/mnist:predict"
GOOD = {"instances": [image(0)]}


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/models/foo:predict", GOOD, 404, "Servable not found for request: Latest(foo)"),
        (
            "/v1/models/mnist/versions/9:predict",
            GOOD,
            404,
            "Servable not found for request: Specific(mnist, 9)",
        ),
        (
            "/v1/models/mnist/labels/nope:predict",
            GOOD,
            400,
            "Unrecognized servable version label: nope",
        ),
        (MNIST, b"", 400, "JSON Parse error: The document is empty"),
        (MNIST, b"instances = [1, 2]", 400, "JSON Parse error"),
        (MNIST, b'{"instances": [1,', 400, "JSON Parse error"),
        (MNIST, [1, 2], 400, "Is not object"),
        (
            MNIST,
            {"signature_name": 100, "instances": [image(0)]},
            400,
            "'signature_name' key must be a string value.",
        ),
        (
            MNIST,
            {"signature_name": "nope", "instances": [image(0)]},
            400,
            'Serving signature name: "nope" not found in signature def',
        ),
        (
            MNIST,
            {"instances": [image(0)], "inputs": [image(0)]},
            400,
            "expecting only one of 'inputs' or 'instances'",
        ),
        (MNIST, {"image": [image(0)]}, 400, "Missing 'inputs' or 'instances' key"),
        (MNIST, {"instances": []}, 400, "No values in 'instances' array"),
        (MNIST, {"instances": image(0)[0][0]}, 400, "Expecting 'instances' to be an list/array"),
        # No shape is checked: the graph refuses what it cannot compute (Session::Run).
        (MNIST, {"instances": [[0] * 28]}, 400, "Invalid reduction dimension"),
        (MNIST, {"inputs": [[0] * 28] * 28}, 400, "Invalid reduction dimension"),
        (MNIST, {"instances": [image(0), [[0] * 28] * 27]}, 400, "Failed to process element: 1"),
        (MNIST, {"instances": [[[2**31] * 28] * 28]}, 400, "is not of expected type: uint8"),
        (
            MNIST,
            {"instances": [[["x"] * 28] * 28]},
            400,
            'JSON Value: "x" Type: String is not of expected type: uint8',
        ),
        (
            MNIST,
            {"instances": [[[0.5] * 28] * 28]},
            400,
            "JSON Value: 0.5 Type: Number is not of expected type: uint8",
        ),
        (
            MNIST,
            {"instances": [[[True] * 28] * 28]},
            400,
            "JSON Value: true Type: True is not of expected type: uint8",
        ),
        (
            MNIST,
            {"instances": [[[0] * 27 + [False]] * 28]},
            400,
            "Type: False is not of expected type: uint8",
        ),
        (
            MNIST,
            {"instances": [[[None] * 28] * 28]},
            400,
            "Type: Null is not of expected type: uint8",
        ),
        (
            MNIST,
            {"instances": [[[0] * 28] * 27 + [[0] * 27]]},
            400,
            "Encountered list at unexpected size",
        ),
        (MNIST, {"instances": [{"img": image(0)}]}, 400, "does not have named input: img"),
        (
            MNIST,
            {"instances": [{"image": image(0)}, image(0)]},
            400,
            "Expecting object but got list at item 1",
        ),
        (
            MNIST,
            {"instances": [image(0), {"image": image(0)}]},
            400,
            "Expecting value/list but got object at item 1",
        ),
        (
            MNIST,
            {"inputs": {"img": [image(0)]}},
            400,
            "Missing named input: image in 'inputs' object.",
        ),
        (
            "/v1/models/mnist/versions/99999999999999999999:predict",
            GOOD,
            400,
            "Failed to convert version: 99999999999999999999 to numeric.",
        ),
        ("/v1/models/mnist:PREDICT", GOOD, 400, "Malformed request: POST /v1/models/mnist:PREDICT"),
        ("/v1/models/mnist:explain", GOOD, 400, "Malformed request: POST /v1/models/mnist:explain"),
        ("/v1/models/mnist/versions/one:predict", GOOD, 400, "Malformed request"),
        ("/v1/models/mnist/versions/1/labels/stable:predict", GOOD, 400, "Malformed request"),
    ],
)
def test_predict_errors(served: ModelServer, path: str, body: object, status: int, message: str):
    response = post(served, path, body)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    payload = response.json()
    assert set(payload) == {"error"}
    assert message in payload["error"]
    assert "Traceback" not in payload["error"]


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/v1/models/mnist:predict", 400, "Malformed request: GET /v1/models/mnist:predict"),
        ("PUT", "/v1/models/mnist", 400, "Malformed request: PUT /v1/models/mnist"),
        ("DELETE", "/v1/models/mnist", 400, "Malformed request: DELETE /v1/models/mnist"),
        ("POST", "/v1/models/mnist", 400, "Malformed request: POST /v1/models/mnist"),
        ("GET", "/v1/foo", 400, "Malformed request: GET /v1/foo"),
        ("GET", "/v1/models", 400, "Missing model name in request."),
        ("GET", "/v1/models/debug/model_name", 400, "Malformed request"),
        ("OPTIONS", "/v1/models/mnist", 400, ""),  # a CORS preflight without an Origin
    ],
)
def test_unknown_paths_and_methods(
    served: ModelServer, method: str, path: str, status: int, message: str
):
    response = requests.request(method, f"{served.url}{path}", timeout=10)
    assert response.status_code == status, response.text
    if message:
        assert message in response.json()["error"]


def test_unsupported_http_method_is_libevents_501_page(served: ModelServer):
    response = requests.request("BREW", f"{served.url}/v1/models/mnist", timeout=10)
    assert response.status_code == 501
    assert response.headers["Content-Type"] == "text/html"
    assert "<H1>Not Implemented</H1>" in response.text


# -------------------------------------------------------------------- status
def test_status_lists_every_version_as_tf_serving_renders_it(served: ModelServer):
    response = requests.get(f"{served.url}/v1/models/mnist", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    ok = {"error_code": "OK", "error_message": ""}
    assert response.json() == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": ok},
            {"version": "1", "state": "AVAILABLE", "status": ok},
        ]
    }


@pytest.mark.parametrize(("route", "version"), [("/versions/1", "1"), ("/versions/2", "2")])
def test_status_of_one_version(served: ModelServer, route: str, version: str):
    response = requests.get(f"{served.url}/v1/models/mnist{route}", timeout=10)
    assert response.status_code == 200
    statuses = response.json()["model_version_status"]
    assert [(s["version"], s["state"]) for s in statuses] == [(version, "AVAILABLE")]


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v1/models/mnist/versions/9", 404, "Could not find version 9 of model mnist"),
        ("/v1/models/foo", 404, "Could not find any versions of model foo"),
        (
            "/v1/models/mnist/versions/9/metadata",
            404,
            "Servable not found for request: Specific(mnist, 9)",
        ),
        ("/v1/models/foo/metadata", 404, "Servable not found for request: Latest(foo)"),
        ("/v1/models/mnist/labels/nope/metadata", 400, "Unrecognized servable version label: nope"),
    ],
)
def test_status_and_metadata_errors(served: ModelServer, path: str, status: int, message: str):
    response = requests.get(f"{served.url}{path}", timeout=10)
    assert response.status_code == status
    assert response.json() == {"error": message}


# ------------------------------------------------------------------ metadata
@pytest.mark.parametrize(
    ("route", "version"), [("", "2"), ("/versions/1", "1"), ("/labels/stable", "1")]
)
def test_metadata_renders_the_signature_defs(served: ModelServer, route: str, version: str):
    response = requests.get(f"{served.url}/v1/models/mnist{route}/metadata", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["model_spec"] == {"name": "mnist", "version": version, "signature_name": ""}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "mean_intensity"} <= set(signatures)
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    image_input = default["inputs"]["image"]
    assert image_input["dtype"] == "DT_UINT8"
    assert [d["size"] for d in image_input["tensor_shape"]["dim"]] == ["-1", "28", "28"]
    outputs = default["outputs"]
    assert outputs["probabilities"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in outputs["probabilities"]["tensor_shape"]["dim"]] == ["-1", "10"]
    assert outputs["digit"]["dtype"] == "DT_INT64"
    assert [d["size"] for d in outputs["digit"]["tensor_shape"]["dim"]] == ["-1"]


# ------------------------------------------------------------------- metrics
def test_prometheus_metrics(deployment: Deployment, start_server):
    deployment.add_version(1, "bucket")
    deployment.add_version(2, "flipped")
    deployment.write_config()
    served = start_server(deployment, monitoring_config_file=SERVING_DIR / "monitoring.config")
    predict_digit(served.url, 10, "/versions/1")
    post(served, "/v1/models/mnist/versions/9:predict", GOOD)
    response = requests.get(f"{served.url}/monitoring/prometheus/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.text
    # TF Serving's families, labels and buckets (servables/tensorflow/util.cc).
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert ':tensorflow:serving:request_count{model_name="mnist",status="OK"} 1' in text
    assert ':tensorflow:serving:request_count{model_name="mnist",status="NOT_FOUND"} 1' in text
    assert "# TYPE :tensorflow:serving:request_latency histogram" in text
    latency = ':tensorflow:serving:request_latency_bucket{model_name="mnist",API="predict",'
    bounds = [line.split('le="')[1].split('"')[0] for line in text.splitlines() if latency in line]
    assert bounds[:4] == ["10", "18", "32.4", "58.32"] and bounds[-1] == "+Inf"
    assert len(bounds) == 34  # Buckets::Exponential(10, 1.8, 33), then DBL_MAX
    count = ':tensorflow:serving:request_latency_count{model_name="mnist",API="predict",'
    assert f'{count}entrypoint="REST"}} 1' in text  # the failed call has no latency
    assert (
        'dev_model_server_model_version_state{model_name="mnist",model_version="2",'
        'state="AVAILABLE"} 1'
    ) in text


# -------------------------------------------------------------- connections
def test_keep_alive_reuses_one_connection(served: ModelServer):
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    try:
        sockets = set()
        for value in (0, 255, 130):
            connection.request(
                "POST",
                "/v1/models/mnist/versions/1:predict",
                body=json.dumps({"instances": [image(value)]}),
                headers={"Content-Type": "application/json"},
            )
            response = connection.getresponse()
            assert response.status == 200
            assert response.version == 11
            assert response.getheader("Connection") != "close"
            assert json.loads(response.read())["predictions"][0]["digit"] == expected_digit(
                value, "bucket"
            )
            sockets.add(id(connection.sock))
        # An error keeps the connection open too.
        connection.request("GET", "/v1/models/mnist/versions/9")
        response = connection.getresponse()
        assert response.status == 404
        response.read()
        sockets.add(id(connection.sock))
        assert len(sockets) == 1
    finally:
        connection.close()


def test_chunked_request_body(served: ModelServer):
    def chunks():
        yield b'{"instances": ['
        yield json.dumps(image(255)).encode()
        yield b"]}"

    response = requests.post(
        f"{served.url}/v1/models/mnist/versions/1:predict", data=chunks(), timeout=10
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["digit"] == 9


def test_expect_100_continue_is_answered_at_once(served: ModelServer):
    body = json.dumps({"instances": [image(255)]}).encode()
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/models/mnist/versions/1:predict HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        sock.settimeout(0.5)  # curl would give up waiting after 1 s and send anyway
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue")
        sock.settimeout(5)
        sock.sendall(body)
        reply = b""
        while b'"digit"' not in reply:
            chunk = sock.recv(65536)
            assert chunk, reply
            reply += chunk
    assert b"HTTP/1.1 200 OK" in reply
