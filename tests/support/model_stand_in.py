"""An in-process stand-in for the model server: TF Serving's REST API, a numpy model.

The function's HTTP tests need a model server to answer, not a model to be right: this
one starts in milliseconds, imports no TensorFlow, and can be told to misbehave. It
speaks the part of TF Serving's REST API that the function and the rollout tool use,
with the paths, bodies, error messages and statuses of TF Serving (as serving/rest.py
and serving/repository.py reproduce them; serving/ itself needs TensorFlow to import):

- GET  /v1/models/<name>[/versions/<v>|/labels/<label>]/metadata: the version serving
  that spec; an unknown label is 400 "Unrecognized servable version label", a version
  that is not AVAILABLE (or not there) is 404 "Servable not found for request".
- GET  /v1/models/<name>[/versions/<v>]: the states of the versions (a label is ignored,
  as GetModelStatus ignores it); an unknown version is 404.
- POST /v1/models/<name>[/versions/<v>|/labels/<label>]:predict with the columnar body
  {"signature_name", "inputs": {"image": [n][28][28] of 0-255}}: {"outputs": {...}}.

Every API error body is {"error": "..."} as TF Serving writes it; a path outside /v1/ is
libevent's HTML 404. The "model" of a version is a fixed linear map of the pixels, its
weights seeded by the version number, then a softmax: deterministic, different for each
version, and no digit recogniser (`answer` tells a test what it says for given pixels).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from recognizer.contract import CLASSES, SIDE, SIGNATURE

AVAILABLE = "AVAILABLE"
# serving/rest.py's routes (TF Serving's http_rest_api_handler.cc).
_PREDICT = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
_LIBEVENT_404 = (
    b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n"
    b"</BODY></HTML>\n"
)


@dataclass(frozen=True)
class Fault:
    """How the stand-in misbehaves: late, and/or with `answer(status, body)` instead."""

    everywhere: bool = False  # every request; else only predictions (labels still resolve)
    delay: float = 0.0
    answer: Callable[[int, bytes], tuple[int, bytes]] | None = None


class ApiError(Exception):
    """A TF Serving error: its HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def answer(images: np.ndarray, version: int) -> tuple[np.ndarray, np.ndarray]:
    """What `version` of the stand-in answers for uint8 [n, 28, 28]: (probabilities, digits)."""
    weights = np.random.default_rng(version).normal(size=(SIDE * SIDE, CLASSES))
    logits = (images.reshape(len(images), -1) / 255.0) @ weights / 4
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
    return probabilities, probabilities.argmax(axis=1).astype(np.int64)


class ModelStandIn(ThreadingHTTPServer):
    """One model (`name`) with `versions` (all AVAILABLE unless told) and `labels`.

    Tests change what it serves by assigning to `states` (version -> TF Serving state:
    AVAILABLE, LOADING, END, ...; a version missing was never loaded) and `labels`
    (label -> version), and make it misbehave with `fault`. `predicted` lists the
    version each :predict asked for (faulty or not), `images` the pixels each carried.
    `close()` is a killed server: the port refuses and open connections are cut.
    """

    daemon_threads = True

    def __init__(
        self,
        versions: Iterable[int] = (1, 2, 3),
        labels: Mapping[str, int] | None = None,
        name: str = "mnist",
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.states: dict[int, str] = dict.fromkeys(sorted(versions), AVAILABLE)
        self.labels: dict[str, int] = dict(labels or {})
        self.fault: Fault | None = None
        self.predicted: list[int] = []
        self.images: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        # close() waits for the loop to notice: serve_forever's default 0.5 s, once per test.
        self._thread = threading.Thread(target=self.serve_forever, args=(0.01,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> ModelStandIn:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop listening and cut every connection, as a killed process would."""
        if self._thread.is_alive():
            self.shutdown()
        self.server_close()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> ModelStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def predictions_asked(self) -> int:
        with self._lock:
            return len(self.predicted)

    # -- the connections, so that close() can cut them --------------------------------

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    # -- the API ----------------------------------------------------------------------

    def respond(self, method: str, path: str, body: bytes) -> tuple[int, bytes, str]:
        """(status, body, content type) for one request, faults aside."""
        if not re.fullmatch(r"/v1/.*", path, re.IGNORECASE):
            return 404, _LIBEVENT_404, "text/html"
        try:
            return 200, self._api(method, path, body), "application/json"
        except ApiError as error:
            return error.status, error_body(error.message), "application/json"

    def _api(self, method: str, path: str, body: bytes) -> bytes:
        match = (_PREDICT if method == "POST" else _STATUS).fullmatch(path)
        if match is None:
            raise ApiError(400, f"Malformed request: {method} {path}")
        name, version_text, label, verb = match.groups()
        version = None if version_text is None else int(version_text)
        if method == "POST":
            if verb != "predict":
                raise ApiError(501, f"the model stand-in does not serve :{verb}")
            return self._predict(name, version, label, body)
        if not name:
            raise ApiError(400, "Missing model name in request.")
        if verb == "metadata":
            return self._metadata(name, version, label)
        return self._status(name, version)

    def _servable(self, name: str, version: int | None, label: str | None) -> int:
        """repository.servable: the AVAILABLE version a spec names, or TF Serving's error."""
        if label is not None:
            version = self.labels.get(label) if name == self.name else None
            if version is None:
                raise ApiError(400, f"Unrecognized servable version label: {label}")
        available = [v for v, state in self.states.items() if state == AVAILABLE]
        if version is None:
            if name != self.name or not available:
                raise ApiError(404, f"Servable not found for request: Latest({name})")
            return max(available)
        if name != self.name or version not in available:
            raise ApiError(404, f"Servable not found for request: Specific({name}, {version})")
        return version

    def _predict(self, name: str, version: int | None, label: str | None, body: bytes) -> bytes:
        images = _images(body)
        served = self._servable(name, version, label)
        with self._lock:
            self.images.append(images)
        probabilities, digits = answer(images, served)
        outputs = {"probabilities": probabilities.tolist(), "digit": digits.tolist()}
        return json.dumps({"outputs": outputs}, indent=4).encode()

    def _metadata(self, name: str, version: int | None, label: str | None) -> bytes:
        served = self._servable(name, version, label)
        spec = {"name": name, "signature_name": "", "version": str(served)}
        return json.dumps({"model_spec": spec, "metadata": _SIGNATURE_DEF}, indent=1).encode()

    def _status(self, name: str, version: int | None) -> bytes:
        states = dict(self.states) if name == self.name else {}
        if version is not None:
            if version not in states:
                raise ApiError(404, f"Could not find version {version} of model {name}")
            versions = [version]
        elif not states:
            raise ApiError(404, f"Could not find any versions of model {name}")
        else:
            versions = sorted(states, reverse=True)
        statuses = [
            {
                "version": str(v),
                "state": states[v],
                "status": {"error_code": "OK", "error_message": ""},
            }
            for v in versions
        ]
        return json.dumps({"model_version_status": statuses}, indent=1).encode()

    def count_prediction(self, path: str) -> None:
        match = _PREDICT.fullmatch(path)
        version = match and match.group(2)
        label = match and match.group(3)
        asked = int(version) if version else self.labels.get(label or "", -1)
        with self._lock:
            self.predicted.append(asked)


def error_body(message: str) -> bytes:
    """TF Serving's MakeJsonFromStatus, as rapidjson's PrettyWriter writes it."""
    return ('{\n    "error": ' + json.dumps(message, ensure_ascii=False) + "\n}").encode()


def _images(body: bytes) -> np.ndarray:
    """The pixels of a columnar :predict body, checked as the contract's signature checks."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise ApiError(400, "JSON Parse error: Invalid value. at offset: 0") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "JSON Value: is not an object")
    signature = doc.get("signature_name", SIGNATURE)
    if signature != SIGNATURE:
        raise ApiError(400, f'Serving signature name: "{signature}" not found in signature def')
    inputs = doc.get("inputs")
    if not isinstance(inputs, dict) or "image" not in inputs:
        raise ApiError(400, "Missing named input: image in 'inputs' object.")
    try:
        images = np.asarray(inputs["image"], dtype=np.int64)
    except (TypeError, ValueError):
        raise ApiError(400, "Expected uint8 values in the image input") from None
    if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
        raise ApiError(400, f"the image input must be [n, 28, 28], not {list(images.shape)}")
    if images.size and (images.min() < 0 or images.max() > 255):
        raise ApiError(400, "Expected uint8 values in the image input")
    return images.astype(np.uint8)


def _tensor(dtype: str, *dims: int, name: str) -> dict:
    sizes = [{"size": str(size), "name": ""} for size in dims]
    return {"dtype": dtype, "tensor_shape": {"dim": sizes, "unknown_rank": False}, "name": name}


_SIGNATURE_DEF = {
    "signature_def": {
        "signature_def": {
            SIGNATURE: {
                "inputs": {"image": _tensor("DT_UINT8", -1, SIDE, SIDE, name="image:0")},
                "outputs": {
                    "probabilities": _tensor("DT_FLOAT", -1, CLASSES, name="probabilities:0"),
                    "digit": _tensor("DT_INT64", -1, name="digit:0"),
                },
                "method_name": "tensorflow/serving/predict",
                "defaults": {},
            }
        }
    }
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as TF Serving and the function's pool use
    # Headers and body go out in two writes: with Nagle's algorithm the body would wait
    # for the client's delayed ACK of the headers, 40 ms a request.
    disable_nagle_algorithm = True
    server: ModelStandIn

    def do_GET(self) -> None:
        self._answer(b"")

    def do_POST(self) -> None:
        self._answer(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def _answer(self, body: bytes) -> None:
        predicting = self.command == "POST" and self.path.endswith(":predict")
        if predicting:
            self.server.count_prediction(self.path)
        fault = self.server.fault
        if fault is not None and not (fault.everywhere or predicting):
            fault = None
        if fault is not None:
            time.sleep(fault.delay)
        status, content, content_type = self.server.respond(self.command, self.path, body)
        if fault is not None and fault.answer is not None:
            status, content = fault.answer(status, content)
        with contextlib.suppress(OSError):  # the client may have given up waiting
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

    def log_message(self, *args: object) -> None:
        pass
