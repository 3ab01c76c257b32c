"""TF Serving's REST API: routing, JSON bodies, messages and status codes.

These follow model_servers/http_server.cc, http_rest_api_handler.cc and
http_rest_api_util.cc:

- The request target is split as libevent's evhttp_uri_parse splits it; a target it
  refuses is libevent's 400 page. The path *with* its query string (and fragment) is
  what the API regexes see, so `...:predict?x=1` is a malformed request (400) and
  `/v1/models/mnist?x=1` asks for a model named "mnist?x=1" (404).
- The Prometheus page (only with a MonitoringConfig that enables it) answers any method
  on its exact path; with a query string it is a 400 "Unexpected path".
- Any other path matching (?i)/v1/.* is the API; the rest is libevent's 404 page.
- OPTIONS on the API is a CORS preflight: 200 with an empty body when an Origin header
  names an http(s) origin, else 400 with an empty body. CORS headers are added only
  with --rest_api_enable_cors_support.
- GET status ignores a version label (GetModelStatus only looks at a version), and only
  a lower-case "/metadata" is the metadata subresource ("/METADATA" matches the regex
  case-insensitively, so it is a status request).
- Every API error body is {"error": "<message>"} as rapidjson's PrettyWriter writes it.
Tracebacks go to the log, never to a client. The socket side lives in serving.httpserver.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

import numpy as np
from google.protobuf import json_format
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from serving import inference, rjson, tensors
from serving.batching import Batcher
from serving.config import PrometheusSettings
from serving.errors import ServingError, invalid_argument
from serving.metrics import Metrics
from serving.repository import ModelRepository
from serving.servable import Servable

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
_ORIGIN = re.compile(r"https?://")
# libevent: unreserved, sub-delims, ':', '@', '/', and %XX; '?' also in query and fragment.
_URI_CHARS = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")
_QUERY_CHARS = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:")
CORS_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "POST, GET"),
    ("Access-Control-Allow-Headers", "Content-Type"),
)
LIBEVENT_DEFAULT_CONTENT_TYPE = "text/html; charset=ISO-8859-1"
# Work a JSON body may ask for, checked in C speed before it is parsed (TF Serving has no
# limits of its own here: rapidjson parses anything in C++). 200,000 nested arrays were a
# RecursionError (500); every value costs ~150 bytes parsed in Python, so the elements
# (at most the commas plus one) are bounded too: a million is 1,275 images of 28x28.
MAX_JSON_DEPTH = 64
MAX_TENSOR_ELEMENTS = 1_000_000
_DEPTH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def error_response(error: ServingError) -> Response:
    return Response(error.http_status, error_body(error.message))


def error_body(message: str) -> bytes:
    return rjson.error_body(message)


def libevent_error(status: int) -> Response:
    """evhttp_send_error's page, e.g. for a path outside the API (404)."""
    reason = HTTPStatus(status).phrase
    body = (
        f"<HTML><HEAD>\n<TITLE>{status} {reason}</TITLE>\n</HEAD><BODY>\n<H1>{reason}</H1>\n"
        "</BODY></HTML>\n"
    )
    return Response(status, body.encode(), "text/html", (("Connection", "close"),))


def check_json_budget(body: bytes) -> None:
    """400 for a body nested deeper than MAX_JSON_DEPTH or with more values than
    MAX_TENSOR_ELEMENTS; counted over the bytes (brackets in strings count too: base64 and
    signature names have none), a megabyte at a time so the count costs little memory."""
    if body.count(b",") + 1 > MAX_TENSOR_ELEMENTS:
        raise invalid_argument(
            f"JSON body has more than {MAX_TENSOR_ELEMENTS:,} values, the limit of this server"
        )
    depth = 0
    for start in range(0, len(body), _DEPTH_CHUNK):
        chunk = np.frombuffer(body, np.uint8, min(_DEPTH_CHUNK, len(body) - start), start)
        steps = (chunk == ord("[")).astype(np.int32) + (chunk == ord("{"))
        steps -= (chunk == ord("]")) + (chunk == ord("}"))
        levels = np.cumsum(steps) + depth
        if levels.size and levels.max() > MAX_JSON_DEPTH:
            raise invalid_argument(
                f"JSON body is nested deeper than {MAX_JSON_DEPTH} levels, the limit of this server"
            )
        depth = int(levels[-1]) if levels.size else depth


def split_target(target: str) -> tuple[str, str] | None:
    """(path, path with query and fragment) as evhttp_uri_parse reads them; None if refused."""
    rest = target
    if _SCHEME.match(rest):
        rest = rest.partition(":")[2]
        if rest.startswith("//"):
            slash = rest.find("/", 2)
            rest = "" if slash < 0 else rest[slash:]
    fragment = query = None
    if "#" in rest:
        rest, _, fragment = rest.partition("#")
    if "?" in rest:
        rest, _, query = rest.partition("?")
    if not _URI_CHARS.fullmatch(rest):
        return None
    for part in (query, fragment):
        if part is not None and not _QUERY_CHARS.fullmatch(part):
            return None
    path = rest or "/"
    full = path
    if query is not None:
        full += "?" + query
    if fragment is not None:
        full += "#" + fragment
    return path, full


def decode_arg(text: str) -> str:
    """curl_easy_unescape: %XX decoded ('+' left alone), bytes kept as they are."""
    return unquote_to_bytes(text).decode("utf-8", "surrogateescape")


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


@dataclass(frozen=True)
class ApiOptions:
    """tensorflow_model_server flags that shape REST answers."""

    enable_cors_support: bool = False  # --rest_api_enable_cors_support
    enable_signature_method_name_check: bool = False  # --enable_signature_method_name_check
    strict_inputs: bool = False  # dev-only --strict_inputs (see serving.tensors)


class RestApi:
    """Answers REST requests against a repository; independent of the socket layer."""

    def __init__(
        self,
        repository: ModelRepository,
        metrics: Metrics | None = None,
        prometheus: PrometheusSettings | None = None,
        batcher: Batcher | None = None,
        options: ApiOptions | None = None,
    ) -> None:
        self.repository = repository
        self.metrics = metrics or Metrics()
        self.prometheus = prometheus or PrometheusSettings()
        self.batcher = batcher  # None: every request is its own model call
        self.options = options or ApiOptions()

    def handle(
        self, method: str, target: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> Response:
        """Route one request; never raises."""
        split = split_target(target)
        if split is None:
            return libevent_error(HTTPStatus.BAD_REQUEST)
        path, uri_path = split
        if self.prometheus.enabled and path == self.prometheus.path:
            return self._prometheus(path, uri_path)
        if not _V1.fullmatch(uri_path):
            return libevent_error(HTTPStatus.NOT_FOUND)
        extra = CORS_HEADERS if self.options.enable_cors_support else ()
        if method == "OPTIONS":
            origin = (headers or {}).get("Origin") or ""
            status = HTTPStatus.OK if _ORIGIN.search(origin) else HTTPStatus.BAD_REQUEST
            return Response(status, b"", LIBEVENT_DEFAULT_CONTENT_TYPE, extra)
        call = _Call()
        started = time.perf_counter()
        try:
            response = Response(200, self._api(method, uri_path, body, call), headers=extra)
            status = "OK"
        except ServingError as exc:
            response = Response(exc.http_status, error_body(exc.message), headers=extra)
            status = exc.code
        except Exception:
            log.exception("Internal error processing %s %s", method, uri_path)
            response = Response(
                500, error_body("Internal error; see the model server log"), headers=extra
            )
            status = "INTERNAL"
        self.metrics.observe(call.model, call.api, status, time.perf_counter() - started)
        return response

    def _prometheus(self, path: str, uri_path: str) -> Response:
        # ProcessPrometheusRequest: any method; the path must match exactly, query included.
        if uri_path != path:
            text = f"Unexpected path: {uri_path}. Should be {path}"
            return Response(HTTPStatus.BAD_REQUEST, text.encode(), "text/plain")
        page = self.metrics.render(self.repository.all_states())
        return Response(200, page.encode("utf-8"), "text/plain")

    def _api(self, method: str, path: str, body: bytes, call: _Call) -> bytes:
        malformed = invalid_argument(f"Malformed request: {method} {path}")
        match = None
        if method == "POST":
            match = _PREDICT.fullmatch(path)
        elif method == "GET":
            match = _STATUS.fullmatch(path)
        if match is None:
            raise malformed
        name, version_text, label_text, verb = match.groups()
        call.model = decode_arg(name) if name else ""
        version = _version(version_text)
        label = decode_arg(label_text) if label_text else None
        if method == "POST":
            if verb == "predict":
                call.api = "predict"
                return self._predict(call, version, label, body)
            if verb in ("classify", "regress"):
                call.api = verb
                return self._classify_or_regress(call, verb, version, label, body)
            raise malformed  # TF Serving compares the verb case-sensitively.
        if not name:
            raise invalid_argument("Missing model name in request.")
        if verb == "metadata":  # only lower case: "/METADATA" is a status request
            call.api = "metadata"
            return self._metadata(call, version, label)
        call.api = "status"
        return self._status(call, version)

    def _servable(self, call: _Call, version: int | None, label: str | None) -> Servable:
        servable = self.repository.servable(call.model, version, label)
        call.version = str(servable.version)
        return servable

    def _predict(self, call: _Call, version: int | None, label: str | None, body: bytes) -> bytes:
        check_json_budget(body)
        doc, signature_name = tensors.parse_predict_body(body)
        servable = self._servable(call, version, label)
        signature = servable.signature(signature_name)
        fmt, inputs = tensors.request_tensors(
            doc,
            signature,
            requested_signature=signature_name,
            may_contain_bools=b"true" in body or b"false" in body,
            strict=self.options.strict_inputs,
        )
        if self.options.enable_signature_method_name_check:
            method = servable.meta_graph.signature_def[signature.name].method_name
            inference.check_predict_method(method)
        if self.batcher is None:
            outputs = servable.run(signature.name, inputs)
        else:
            outputs = self.batcher.run(servable, signature.name, inputs)
        return tensors.render_response(outputs, fmt)

    def _classify_or_regress(
        self, call: _Call, verb: str, version: int | None, label: str | None, body: bytes
    ) -> bytes:
        # ProcessClassifyRequest/ProcessRegressRequest: the body is read before the model
        # is looked up, so a bad body is a 400 even for an unknown model.
        check_json_budget(body)
        doc, signature_name = tensors.parse_body(body)
        request_input = inference.input_from_json(doc)
        servable = self._servable(call, version, label)
        check = self.options.enable_signature_method_name_check
        if verb == "classify":
            result = inference.classify(servable, signature_name, request_input, method_check=check)
            return inference.classification_json(result)
        regression = inference.regress(servable, signature_name, request_input, method_check=check)
        return inference.regression_json(regression)

    def _status(self, call: _Call, version: int | None) -> bytes:
        statuses = self.repository.status(call.model, version)
        if version is not None:
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
        servable = self._servable(call, version, label)
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
