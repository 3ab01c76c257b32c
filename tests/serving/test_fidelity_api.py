"""TF Serving's REST routing: status by label, paths, query strings, gzip, CORS, metrics.

Each test names the file and function of tensorflow/serving (2.20/2.21) whose
behaviour it mirrors; "tfs:" abbreviates tensorflow_serving/.
"""

from __future__ import annotations

import gzip
import http.client
import json
from pathlib import Path

import pytest
import requests
from serving_testlib import GOOD, MNIST, Deployment, error_of, get, image, post

from serving import ModelServer

SERVING_DIR = Path(__file__).resolve().parents[2] / "serving"


# ------------------------------------------------------------ status by label
def test_status_by_label_lists_every_version_even_for_an_unknown_label(served: ModelServer):
    """tfs:model_servers/get_model_status_impl.cc GetModelStatusWithModelSpec only looks at
    model_spec.has_version(); a label is never resolved, so every version is listed (200)."""
    everything = get(served, MNIST).json()
    for label in ("stable", "canary", "nope"):
        response = get(served, f"{MNIST}/labels/{label}")
        assert response.status_code == 200, response.text
        assert response.json() == everything
        assert [s["version"] for s in everything["model_version_status"]] == ["2", "1"]


def test_status_by_label_on_an_unloaded_version_is_200(deployment: Deployment, start_server):
    """tfs:model_servers/get_model_status_impl.cc: the label is not looked up for status;
    metadata (GetModelMetadataImpl -> ServerCore::GetServableHandle) does look it up."""
    deployment.add_version(1, "bucket")
    deployment.write_config(policy="specific { versions: 1 versions: 3 }", labels={"next": 3})
    server = start_server(deployment, allow_version_labels_for_unavailable_models=True)
    response = get(server, f"{MNIST}/labels/next")
    assert response.status_code == 200
    assert [s["version"] for s in response.json()["model_version_status"]] == ["1"]
    metadata = get(server, f"{MNIST}/labels/next/metadata")
    assert metadata.status_code == 404
    assert error_of(metadata) == "Servable not found for request: Specific(mnist, 3)"


def test_upper_case_metadata_is_a_status_request(served: ModelServer):
    """tfs:model_servers/http_rest_api_util.cc kModelStatusApiRegex is (?i), but
    http_rest_api_handler.cc ProcessRequest serves metadata only if the subresource is
    exactly "metadata"; "/METADATA" is therefore GetModelStatus."""
    response = get(served, f"{MNIST}/versions/1/METADATA")
    assert response.status_code == 200
    assert response.json()["model_version_status"][0]["version"] == "1"
    assert "metadata" in get(served, f"{MNIST}/versions/1/metadata").json()


# ---------------------------------------------------------------------- gzip
def test_gzip_request_bodies_are_inflated(served: ModelServer):
    """tfs:util/net_http/server/internal/evhttp_request.cc ReadRequestGzipBytes: with
    RequestHandlerOptions' default auto_uncompress_input, a Content-Encoding containing
    "gzip" is inflated; a body that does not inflate reaches the API empty."""
    body = gzip.compress(json.dumps({"instances": [image(255)]}).encode())
    response = post(
        served, f"{MNIST}/versions/1:predict", body, headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["digit"] == 9
    response = post(
        served,
        f"{MNIST}/versions/1:predict",
        json.dumps(GOOD),
        headers={"Content-Encoding": "gzip"},
    )
    assert response.status_code == 400
    assert error_of(response) == "JSON Parse error: The document is empty"


# ------------------------------------------------------------- query strings
@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("POST", f"{MNIST}:predict?x=1", 400, f"Malformed request: POST {MNIST}:predict?x=1"),
        ("GET", f"{MNIST}?x=1", 404, "Could not find any versions of model mnist?x=1"),
        ("GET", f"{MNIST}/versions/1?x=1", 400, f"Malformed request: GET {MNIST}/versions/1?x=1"),
        ("GET", f"{MNIST}/metadata?x=1", 400, f"Malformed request: GET {MNIST}/metadata?x=1"),
    ],
)
def test_query_strings_are_part_of_the_path(
    served: ModelServer, method: str, path: str, status: int, message: str
):
    """tfs:util/net_http/server/internal/evhttp_request.cc: uri_path() is path_and_query,
    and model_servers/http_rest_api_util.cc ParseModelInfo full-matches its regexes on it
    ([^/:]+ takes '?' into the model name)."""
    data = json.dumps(GOOD) if method == "POST" else None
    response = requests.request(method, f"{served.url}{path}", data=data, timeout=10)
    assert response.status_code == status, response.text
    assert error_of(response) == message


def test_strict_inputs_flag_refuses_what_tf_serving_wraps(deployment: Deployment, start_server):
    """Dev-only --strict_inputs (off by default): stricter than tfs:util/json_tensor.cc."""
    deployment.add_version(1, "bucket")
    deployment.write_config(policy="specific { versions: 1 }")
    server = start_server(deployment, strict_inputs=True)
    response = post(server, f"{MNIST}:predict", {"instances": [[[256] * 28] * 28]})
    assert response.status_code == 400
    assert "out of range for type: uint8" in error_of(response)
    response = post(server, f"{MNIST}:predict", {"instances": [[[0] * 28] * 27]})
    assert response.status_code == 400
    assert 'Input "image" has shape [1,27,28]' in error_of(response)


# ------------------------------------------------- CORS, pages and metrics
def test_cors_preflight(served: ModelServer):
    """tfs:model_servers/http_server.cc RestApiRequestDispatcher::ProcessRequest: OPTIONS
    is 200 when Origin names an http(s) origin, else FAILED_PRECONDITION (400); the body
    stays empty; CORS headers only with --rest_api_enable_cors_support."""
    url = f"{served.url}{MNIST}:predict"
    response = requests.options(url, headers={"Origin": "https://app.example"}, timeout=10)
    assert response.status_code == 200
    assert response.content == b""
    assert "Access-Control-Allow-Origin" not in response.headers
    response = requests.options(url, timeout=10)
    assert response.status_code == 400
    assert response.content == b""


def test_cors_headers_with_the_flag(deployment: Deployment, start_server):
    """tfs:model_servers/http_rest_api_util.cc AddCORSHeaders, added to every API answer."""
    deployment.add_version(1, "bucket")
    deployment.write_config(policy="specific { versions: 1 }")
    server = start_server(deployment, rest_api_enable_cors_support=True)
    for response in (
        get(server, MNIST),
        get(server, "/v1/models/foo"),
        requests.options(f"{server.url}{MNIST}", headers={"Origin": "http://x"}, timeout=10),
    ):
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.headers["Access-Control-Allow-Methods"] == "POST, GET"
        assert response.headers["Access-Control-Allow-Headers"] == "Content-Type"


def test_no_prometheus_page_without_a_monitoring_config(served: ModelServer):
    """tfs:model_servers/server.cc passes an empty MonitoringConfig without
    --monitoring_config_file, and http_server.cc registers the page only if enabled."""
    response = get(served, "/monitoring/prometheus/metrics")
    assert response.status_code == 404


def test_prometheus_page_with_the_monitoring_config(deployment: Deployment, start_server):
    """tfs:model_servers/http_server.cc ProcessPrometheusRequest: any method, text/plain,
    and a 400 "Unexpected path" when the path carries a query string."""
    deployment.add_version(1, "bucket")
    deployment.write_config(policy="specific { versions: 1 }")
    server = start_server(deployment, monitoring_config_file=SERVING_DIR / "monitoring.config")
    post(server, f"{MNIST}:predict", GOOD)
    for method in ("GET", "POST"):
        response = requests.request(
            method, f"{server.url}/monitoring/prometheus/metrics", timeout=10
        )
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/plain"
        assert ':tensorflow:serving:request_count{model_name="mnist"' in response.text
    response = get(server, "/monitoring/prometheus/metrics?x=1")
    assert response.status_code == 400
    assert response.text == (
        "Unexpected path: /monitoring/prometheus/metrics?x=1. Should be "
        "/monitoring/prometheus/metrics"
    )


@pytest.mark.parametrize("path", ["/", "/v2/models/mnist", "/healthz"])
def test_paths_outside_the_api_are_libevents_404_page(served: ModelServer, path: str):
    """tfs:util/net_http/server/internal/evhttp_server.cc DispatchEvRequest: no handler or
    dispatcher takes the path, so evhttp_send_error(HTTP_NOTFOUND)."""
    response = get(served, path)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "text/html"
    assert "<TITLE>404 Not Found</TITLE>" in response.text


def test_unparsable_targets_are_libevents_400_page(served: ModelServer):
    """tfs:util/net_http/server/internal/evhttp_server.cc: ParsedEvRequest::decode fails
    when evhttp_uri_parse refuses the target, and the answer is HTTP_BADREQUEST."""
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    try:
        connection.request("GET", '/v1/models/"mnist"')
        response = connection.getresponse()
        assert response.status == 400
        assert b"<TITLE>400 Bad Request</TITLE>" in response.read()
    finally:
        connection.close()
