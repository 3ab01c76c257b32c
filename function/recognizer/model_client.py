"""TensorFlow Serving REST client: the function's predictions, and the rollout tool's view
of what the model server serves (versions and their states, where a label points).

A predict response does not say which version answered, so a label is first resolved
to a version (cached briefly), and the prediction is asked of that explicit version:
the version we record is the one that answered.

Transient failures (connection refused or reset, 502 and 503) are retried a bounded
number of times with exponential backoff and jitter, all within one timeout budget per
call: a restarting model server costs a client a little latency, not an error. A
timeout is never retried (the client has already waited the whole budget), nor is any
other answer (4xx, 500, nonsense): asking again would get the same.

The label is resolved through the metadata endpoint, not the status endpoint:
TensorFlow Serving's GetModelStatus ignores a label and lists every version, while
GetModelMetadata looks the label up and names the AVAILABLE version that serves it.

HTTP goes through one urllib3 connection pool to the one model server (keep-alive,
thread-safe), not a requests Session: requests' own work on each call (merging settings,
preparing the request, hooks, reading the body in chunks) cost more CPU than urllib3 and
http.client under it, 0.44 against 0.39 ms a request (bench/profile_stack.py).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import urllib3
from urllib3 import exceptions as http
from urllib3.util import Timeout, parse_url

from recognizer import contract, logs

RETRIED_STATUSES = frozenset({502, 503})  # a proxy without upstream; TF Serving UNAVAILABLE
JSON_HEADERS = {"Content-Type": "application/json"}
# A :predict body is these around the pixels; each pixel value's digits, NUL-padded.
_BODY_BEFORE, _BODY_AFTER = (
    json.dumps(
        {"signature_name": contract.SIGNATURE, "inputs": {contract.IMAGE: None}},
        separators=(",", ":"),
    )
    .encode("ascii")
    .split(b"null")
)
# What a prediction's outputs are read as: the contract's dtypes.
_PROBABILITIES = np.dtype(contract.OUTPUTS[contract.PROBABILITIES].dtype)
_DIGIT = np.dtype(contract.OUTPUTS[contract.DIGIT].dtype)
_DIGITS_TEXT = [str(value).encode("ascii") for value in range(256)]
_DIGITS_LENGTH = np.array([len(text) for text in _DIGITS_TEXT])
_DIGITS = np.array([list(text.ljust(3, b"\0")) for text in _DIGITS_TEXT], dtype=np.uint8)
_OPEN, _COMMA, _CLOSE = b"[,]"


class ModelServerError(Exception):
    """The model server could not give an answer."""


class ModelUnavailable(ModelServerError):
    """Unreachable, overloaded, not serving the version yet, or answering nonsense."""


class ModelUnreachable(ModelUnavailable):
    """No answer at all: refused, reset, or another transport failure named by `kind`."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"the model server is unreachable: {kind}")
        self.kind = kind


class UnexpectedStatus(ModelUnavailable):
    """An HTTP status the client has no meaning for; `body` is what came with it."""

    def __init__(self, status: int, what: str, body: bytes) -> None:
        super().__init__(f"the model server answered {status} for {what}")
        self.status = status
        self.body = body


class ModelTimeout(ModelServerError):
    """No answer within the configured timeout."""


class UnknownModel(ModelServerError):
    """The pinned version or label does not exist on the model server."""


class ModelNotServing(UnknownModel):
    """TF Serving's 404: no such model or version, or that version is not loaded (yet)."""


@dataclass(frozen=True)
class VersionState:
    """One version as the status endpoint reports it."""

    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    error: str = ""  # why a load ended, when it failed


@dataclass(frozen=True)
class ModelAnswer:
    probabilities: np.ndarray  # float32 [n, 10]
    digits: np.ndarray  # int64 [n]
    version: int
    label: str | None  # the label that routed the request; None when a version was pinned


class _Transient(Exception):
    """A failure worth another attempt; carries the error to raise if none is left."""

    def __init__(self, error: ModelUnavailable) -> None:
        self.error = error


class ModelClient:
    """One per process: keep-alive connections to the model server, a label-to-version cache.

    `timeout_seconds` bounds each public call as a whole, retries and backoff included;
    `retries` transient failures are retried after `retry_backoff_seconds`, doubling each
    time, with jitter so that many clients do not retry in step.
    """

    def __init__(
        self,
        base_url: str,
        model_name: str,
        timeout_seconds: float,
        label_cache_seconds: float,
        pool_size: int = 32,
        *,
        retries: int = 2,
        retry_backoff_seconds: float = 0.05,
        auth_headers: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        if retries < 0 or retry_backoff_seconds < 0:
            raise ValueError("retries and retry_backoff_seconds must not be negative")
        url = parse_url(base_url)
        self._model_name = model_name
        # The path part of the URL (a model server behind a proxy's prefix) starts each path.
        self._model_path = f"{(url.path or '').rstrip('/')}/v1/models/{model_name}"
        self._timeout = timeout_seconds
        self._retries = retries
        self._backoff = retry_backoff_seconds
        self._cache_seconds = label_cache_seconds
        # identity.IdentityTokens.headers where the model server checks who calls it.
        self._auth_headers = auth_headers
        self._labels: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()
        # MODEL_SERVER_URL is reached directly (no proxy variables, no ~/.netrc). Past
        # `pool_size` requests at once, extra connections are made and not kept.
        self._pool = urllib3.connection_from_url(base_url, maxsize=pool_size, block=False)

    def predict_version(self, images: np.ndarray, version: int) -> ModelAnswer:
        """Ask the pinned `version` about `images` (uint8 [n, 28, 28])."""
        return self._predict(images, version, None, self._deadline())

    def predict_label(self, images: np.ndarray, label: str) -> ModelAnswer:
        """Ask the version `label` points at about `images` (uint8 [n, 28, 28])."""
        deadline = self._deadline()
        # An unknown label fails here, and retrying is pointless.
        version = self._resolve(label, deadline)
        try:
            return self._predict(images, version, label, deadline)
        except UnknownModel:
            # The label moved and the old version was unloaded since we cached it.
            self._forget(label)
            return self._predict(images, self._resolve(label, deadline), label, deadline)

    def resolve(self, label: str) -> int:
        """The AVAILABLE version `label` points at (cached for a few seconds)."""
        return self._resolve(label, self._deadline())

    def check_ready(self, label: str) -> int:
        """The version serving `label` right now, bypassing the cache; raises when not ready."""
        deadline = self._deadline()
        self._forget(label)
        version = self._resolve(label, deadline)
        # The status endpoint answers 200 whatever the state: only AVAILABLE can predict.
        what = f"version {version}"
        url = f"{self._model_path}/versions/{version}"
        status = _version_states(self._call("GET", url, what, deadline), what).get(version)
        if status is None:
            raise ModelUnavailable(f"the status of {what} is malformed")
        if status.state != "AVAILABLE":
            raise ModelUnavailable(f"{what} (label {label!r}) is {status.state}")
        return version

    def versions(self) -> dict[int, VersionState]:
        """Every version the model server knows of the model, with its state.

        ModelNotServing when it knows none of them (TF Serving's 404 for the model).
        """
        what = f"model {self._model_name!r}"
        return _version_states(self._call("GET", self._model_path, what, self._deadline()), what)

    def label_version(self, label: str) -> int:
        """The AVAILABLE version `label` points at, asked now (no cache).

        UnknownModel for a label the model server does not have, ModelNotServing when the
        label's version is not AVAILABLE.
        """
        return self._label_version(label, self._deadline())

    def close(self) -> None:
        self._pool.close()

    def _deadline(self) -> float:
        return time.monotonic() + self._timeout

    def _resolve(self, label: str, deadline: float) -> int:
        now = time.monotonic()
        with self._lock:
            cached = self._labels.get(label)
        if cached and cached[1] > now:
            return cached[0]
        try:
            version = self._label_version(label, deadline)
        except ModelNotServing:
            raise ModelUnavailable(f"label {label!r} points at no AVAILABLE version") from None
        with self._lock:
            self._labels[label] = (version, now + self._cache_seconds)
        return version

    def _forget(self, label: str) -> None:
        with self._lock:
            self._labels.pop(label, None)

    def _label_version(self, label: str, deadline: float) -> int:
        url = f"{self._model_path}/labels/{label}/metadata"
        body = self._call("GET", url, f"label {label!r}", deadline)
        try:
            return int(body["model_spec"]["version"])
        except (KeyError, TypeError, ValueError):
            raise ModelUnavailable(f"the metadata for label {label!r} is malformed") from None

    def _predict(
        self, images: np.ndarray, version: int, label: str | None, deadline: float
    ) -> ModelAnswer:
        url = f"{self._model_path}/versions/{version}:predict"
        body = self._call("POST", url, f"version {version}", deadline, predict_body(images))
        try:
            outputs = body["outputs"]
            probabilities = np.asarray(outputs[contract.PROBABILITIES], dtype=_PROBABILITIES)
            digits = np.asarray(outputs[contract.DIGIT], dtype=_DIGIT)
        except (KeyError, TypeError, ValueError):
            raise ModelUnavailable("the model server's prediction is malformed") from None
        if probabilities.shape != (len(images), contract.CLASSES) or digits.shape != (len(images),):
            raise ModelUnavailable("the model server's prediction has the wrong shape")
        return ModelAnswer(probabilities, digits, version, label)

    def _call(
        self, method: str, url: str, what: str, deadline: float, payload: bytes | None = None
    ) -> dict:
        """One request, retried while it fails transiently and the budget allows a backoff."""
        attempt = 0
        while True:
            try:
                return self._attempt(method, url, what, deadline, payload)
            except _Transient as transient:
                delay = self._backoff * 2**attempt * random.uniform(0.5, 1.0)
                if attempt >= self._retries or time.monotonic() + delay >= deadline:
                    raise transient.error from None
            attempt += 1
            time.sleep(delay)

    def _attempt(
        self, method: str, url: str, what: str, deadline: float, payload: bytes | None
    ) -> dict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ModelTimeout(f"the model server did not answer within {self._timeout:g} s")
        headers = dict(JSON_HEADERS) if payload is not None else {}
        if self._auth_headers is not None:
            headers.update(self._auth_headers())
        headers.update(logs.outgoing_headers())  # the request's id and trace go along
        try:
            # `total`: connecting and reading share what is left, not the budget each.
            # retries=False: urllib3 raises the first failure itself, for _call to judge.
            response = self._pool.urlopen(
                method,
                url,
                body=payload,
                headers=headers,
                timeout=Timeout(total=remaining),
                retries=False,
                redirect=False,
            )
        except http.NewConnectionError:  # refused: it may be restarting. Before TimeoutError,
            raise _Transient(ModelUnreachable("ConnectionError")) from None  # its base class
        except http.TimeoutError:  # connecting or reading
            raise ModelTimeout(
                f"the model server did not answer within {self._timeout:g} s"
            ) from None
        except http.ProtocolError:  # reset or closed mid-request: it may be restarting
            raise _Transient(ModelUnreachable("ConnectionError")) from None
        except http.HTTPError as error:
            raise ModelUnreachable(type(error).__name__) from None
        status, data = response.status, response.data
        if status == 400 and b"Unrecognized servable version label" in data:
            raise UnknownModel(f"the model server has no {what}")  # TF Serving's unknown label
        if status == 404:
            raise ModelNotServing(f"the model server is not serving {what}")
        if status == 504:
            raise ModelTimeout("the model server timed out")
        if status in RETRIED_STATUSES:
            raise _Transient(UnexpectedStatus(status, what, data))
        if status != 200:
            raise UnexpectedStatus(status, what, data)
        try:
            body = json.loads(data)
        except ValueError:
            raise ModelUnavailable("the model server's answer is not JSON") from None
        if not isinstance(body, dict):
            raise ModelUnavailable("the model server's answer is not a JSON object")
        return body


def predict_body(images: np.ndarray) -> bytes:
    """The :predict request for `images` (uint8 [n, 28, 28]): TF Serving's columnar form,
    compact JSON, byte for byte what json.dumps(..., separators=(",", ":")) writes."""
    return _BODY_BEFORE + uint8_json(images) + _BODY_AFTER


def uint8_json(array: np.ndarray) -> bytes:
    """json.dumps(array.tolist(), separators=(",", ":")) of a uint8 array, as bytes.

    Written with numpy: each number's digits, and the brackets and comma after it, go
    straight into place, where json.dumps makes a Python int of every pixel, then its
    text: 64 images take 0.9 ms instead of 4.8 (measured side by side; one image about
    60 us either way).
    """
    if array.dtype != np.uint8:
        raise TypeError(f"uint8 pixels expected, not {array.dtype}")
    flat = array.reshape(-1)
    if flat.size == 0:
        return json.dumps(array.tolist()).encode("ascii")
    closes = np.zeros(flat.size, dtype=np.int64)  # lists that end with each number
    stride = 1
    for size in reversed(array.shape):
        stride *= size
        closes[stride - 1 :: stride] += 1
    lengths = _DIGITS_LENGTH[flat]
    separators = 2 * closes + 1  # "]" * closes + "," + "[" * closes; the last: "]" * ndim
    separators[-1] = array.ndim
    ends = np.cumsum(lengths + separators) + array.ndim
    starts = ends - separators - lengths
    out = np.empty(ends[-1], dtype=np.uint8)
    out[: array.ndim] = _OPEN
    for digit in range(3):
        has = lengths > digit
        out[starts[has] + digit] = _DIGITS[flat[has], digit]
    after = starts + lengths
    for depth in range(array.ndim):
        at = after[:-1][closes[:-1] == depth]
        out[at[:, None] + np.arange(depth)] = _CLOSE
        out[at + depth] = _COMMA
        out[at[:, None] + np.arange(depth + 1, 2 * depth + 1)] = _OPEN
    out[after[-1] :] = _CLOSE
    return out.tobytes()


def _version_states(body: dict, what: str) -> dict[int, VersionState]:
    """The status endpoint's answer: each version's state, and why its load failed."""
    try:
        return {
            int(entry["version"]): VersionState(
                entry["state"], entry.get("status", {}).get("error_message", "")
            )
            for entry in body.get("model_version_status", [])
        }
    except (AttributeError, KeyError, TypeError, ValueError):
        raise ModelUnavailable(f"the status of {what} is malformed") from None
