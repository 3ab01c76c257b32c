"""TF Serving's REST API: routing, JSON bodies, messages and status codes.

These follow http_rest_api_handler.cc and http_rest_api_util.cc: any /v1/ path
the API regexes do not match is a 400 "Malformed request", paths outside /v1/
are 404, and every error body is {"error": "<message>"}. Tracebacks go to the
log, never to a client. The socket side lives in serving.httpserver.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

from google.protobuf import json_format
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from serving import rjson, tensors
from serving.batching import Batcher
from serving.config import PrometheusSettings
from serving.errors import ServingError, invalid_argument
from serving.metrics import Metrics
from serving.repository import ModelRepository

log = logging.getLogger(__name__)

_V1 = re.compile(r"/v1/.*", re.IGNORECASE)
_PREDICT = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def error_response(error: ServingError) -> Response:
    return Response(error.http_status, error_body(error.message))


def error_body(message: str) -> bytes:
    """MakeJsonFromStatus: {"error": message} as rapidjson's PrettyWriter writes it."""
    return rjson.error_body(message)


def _proto_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )


@dataclass
class _Call:
    """What metrics need to know about one API call."""

    model: str = ""
    version: str = ""
    api: str = ""


class RestApi:
    """Answers REST requests against a repository; independent of the socket layer."""

    def __init__(
        self,
        repository: ModelRepository,
        metrics: Metrics | None = None,
        prometheus: PrometheusSettings | None = None,
        batcher: Batcher | None = None,
    ) -> None:
        self.repository = repository
        self.metrics = metrics or Metrics()
        self.prometheus = prometheus or PrometheusSettings()
        self.batcher = batcher  # None: every request is its own model call

    def handle(self, method: str, target: str, body: bytes) -> Response:
        """Route one request; never raises."""
        path = urlsplit(target).path
        if self.prometheus.enabled and path == self.prometheus.path:
            if method not in ("GET", "HEAD"):
                return Response(
                    HTTPStatus.METHOD_NOT_ALLOWED,
                    error_body(f"Method {method} not allowed on {path}"),
                    headers=(("Allow", "GET, HEAD"),),
                )
            text = self.metrics.render(self.repository.all_states())
            return Response(200, text.encode("utf-8"), "text/plain; version=0.0.4")
        if not _V1.fullmatch(path):
            return Response(HTTPStatus.NOT_FOUND, error_body(f"Not found: {path}"))
        call = _Call()
        started = time.perf_counter()
        try:
            response = Response(200, self._api(method, path, body, call))
            status = "OK"
        except ServingError as exc:
            response, status = error_response(exc), exc.code
        except Exception:
            log.exception("Internal error processing %s %s", method, path)
            response = Response(500, error_body("Internal error; see the model server log"))
            status = "INTERNAL"
        if call.api:
            self.metrics.observe(
                call.model, call.version, call.api, status, time.perf_counter() - started
            )
        return response

    def _api(self, method: str, path: str, body: bytes, call: _Call) -> bytes:
        malformed = invalid_argument(f"Malformed request: {method} {path}")
        if method == "POST" and (match := _PREDICT.fullmatch(path)):
            name, version, label, verb = match.groups()
            if verb != "predict":
                if verb in ("classify", "regress"):
                    raise ServingError(
                        "UNIMPLEMENTED", f"The development model server does not implement :{verb}"
                    )
                raise malformed  # TF Serving compares the verb case-sensitively.
            call.model, call.api = unquote(name), "predict"
            return self._predict(call, _version(version), _label(label), body)
        if method == "GET" and (match := _STATUS.fullmatch(path)):
            name, version, label, subresource = match.groups()
            if not name:
                raise invalid_argument("Missing model name in request.")
            call.model = unquote(name)
            if subresource:
                call.api = "metadata"
                return self._metadata(call, _version(version), _label(label))
            call.api = "status"
            return self._status(call, _version(version), _label(label))
        raise malformed

    def _predict(self, call: _Call, version: int | None, label: str | None, body: bytes) -> bytes:
        doc, signature_name = tensors.parse_body(body)
        servable = self.repository.servable(call.model, version, label)
        call.version = str(servable.version)
        signature = servable.signature(signature_name)
        fmt, inputs = tensors.request_tensors(
            doc,
            signature,
            requested_signature=signature_name,
            may_contain_bools=b"true" in body or b"false" in body,
        )
        if self.batcher is None:
            outputs = servable.run(signature.name, inputs)
        else:
            outputs = self.batcher.run(servable, signature.name, inputs)
        return tensors.render_response(outputs, fmt)

    def _status(self, call: _Call, version: int | None, label: str | None) -> bytes:
        statuses = self.repository.status(call.model, version, label)
        if version is not None or label is not None:
            call.version = str(statuses[0].version)
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in statuses:
            entry = response.model_version_status.add(
                version=status.version,
                state=get_model_status_pb2.ModelVersionStatus.State.Value(status.state.value),
            )
            entry.status.error_code = error_codes_pb2.Code.Value(status.error_code)
            entry.status.error_message = status.error_message
        return json.dumps(_proto_json(response), indent=1).encode("utf-8")

    def _metadata(self, call: _Call, version: int | None, label: str | None) -> bytes:
        servable = self.repository.servable(call.model, version, label)
        call.version = str(servable.version)
        spec = get_model_metadata_pb2.GetModelMetadataResponse().model_spec
        spec.name = call.model
        spec.version.value = servable.version
        signatures = get_model_metadata_pb2.SignatureDefMap()
        signatures.signature_def.MergeFrom(servable.meta_graph.signature_def)
        body = {
            "model_spec": _proto_json(spec),
            "metadata": {"signature_def": _proto_json(signatures)},
        }
        return json.dumps(body, indent=1).encode("utf-8")


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    value = int(text)
    if value > _INT64_MAX:
        raise invalid_argument(f"Failed to convert version: {text} to numeric.")
    return value


def _label(text: str | None) -> str | None:
    return None if text is None else unquote(text)
