"""The live function against its OpenAPI description, with schemathesis (issue 12).

function/recognizer/openapi.json is kept in the repository and served at GET /openapi.json.
schemathesis generates requests for every documented operation (valid ones, from the
schema and its examples, and invalid ones), sends them to the function under gunicorn
(tests/support/function_server.py) and checks each answer: never a 5xx, and status
code, content type, headers and body as documented. Deterministic (derandomized, a fixed
number of examples per operation), well under two minutes.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from recognizer import api, errors
from tests.conftest import ROOT
from tests.support.function_server import running_function

OPENAPI_FILE = ROOT / "function" / "recognizer" / "openapi.json"
DOCUMENT = json.loads(OPENAPI_FILE.read_text())
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
# No 5xx, and every answer as documented: status code, content type, headers, body.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 100  # per operation, in Hypothesis' fuzzing phase
SEVEN = (ROOT / "tests" / "data" / "samples" / "seven.png").read_bytes()


@pytest.fixture(scope="module")
def function_url(model_server, tmp_path_factory) -> Iterator[str]:
    """A function of its own: schemathesis records predictions and sends odd requests."""
    sqlite_path = tmp_path_factory.mktemp("schemathesis") / "predictions.sqlite3"
    with running_function(model_server, sqlite_path) as url:
        yield url


@pytest.fixture(scope="module")
def recorded_id(function_url) -> str:
    """One record, so the history and the single-record reads have something to answer."""
    response = requests.post(
        f"{function_url}/predict", data=SEVEN, headers={"Content-Type": "image/png"}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]["id"]


@SCHEMA.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_live_function_answers_as_its_openapi_description_says(
    case, function_url, recorded_id
) -> None:
    case.call_and_validate(base_url=function_url, checks=CHECKS, timeout=30)


@pytest.mark.parametrize(
    "path", ["/predictions/{prediction_id}", "/predictions/{prediction_id}/image"]
)
def test_a_recorded_prediction_and_its_upload_are_as_described(
    path, function_url, recorded_id
) -> None:
    """Generated ids are never real ones: these answer 200 only for an id that exists."""
    case = SCHEMA[path]["GET"].Case(path_parameters={"prediction_id": recorded_id})
    response = case.call_and_validate(base_url=function_url, checks=CHECKS, timeout=30)
    assert response.status_code == 200


def test_a_path_with_a_newline_gets_the_function_s_json_404(function_url) -> None:
    """functions-framework's /<path:path> rule does not match a newline; the function's
    404 handler answers it (schemathesis found it answered by Flask's HTML page)."""
    response = requests.get(f"{function_url}/predictions/a%0Ab", timeout=10)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers.get("X-Request-Id")


# --- the description itself ---------------------------------------------------------------


def test_the_function_serves_the_file_in_the_repository(function_url) -> None:
    response = requests.get(f"{function_url}/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.content == OPENAPI_FILE.read_bytes()


def documented() -> set[tuple[str, str]]:
    return {
        (path, method.upper())
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method != "parameters"
    }


def routed() -> set[tuple[str, str]]:
    """Every (path, method) the function routes, HEAD aside (Werkzeug adds it to GET)."""
    return {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method)
        for rule in api.URLS.iter_rules()
        for method in rule.methods - {"HEAD"}
    }


def test_every_route_of_the_function_is_documented_and_nothing_else() -> None:
    assert documented() == routed()


def documented_codes() -> dict[int, set[str]]:
    """The error codes the description lists, by HTTP status, over every operation."""
    codes: dict[int, set[str]] = {}
    for item in DOCUMENT["paths"].values():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for status, response in operation["responses"].items():
                if "$ref" in response:
                    response = DOCUMENT["components"]["responses"][response["$ref"].split("/")[-1]]
                text = json.dumps(response)
                listed = re.findall(r'"enum": \[([^\]]*)\]', text)
                found = {code for group in listed for code in re.findall(r'"([a-z0-9_]+)"', group)}
                codes.setdefault(int(status), set()).update(found)
    return codes


def test_every_error_code_of_the_function_is_documented_with_its_status() -> None:
    """errors.ERRORS against the description: a new code or status must be described too."""
    codes = documented_codes()
    missing = [
        (status, code)
        for status, code in errors.ERRORS.values()
        if code not in codes.get(status, set())
    ]
    assert missing == []


def test_a_function_that_strays_from_its_description_fails_the_check(function_url) -> None:
    """The check can fail: without its 400 response, /predict's answer to junk is a failure."""
    stricter = copy.deepcopy(DOCUMENT)
    del stricter["paths"]["/predict"]["post"]["responses"]["400"]
    operation = schemathesis.openapi.from_dict(stricter)["/predict"]["POST"]
    case = operation.Case(body=b"not an image", media_type="image/png")
    with pytest.raises(FailureGroup) as failure:
        case.call_and_validate(base_url=function_url, checks=CHECKS, timeout=30)
    assert "Undocumented status code" in str(failure.value)
