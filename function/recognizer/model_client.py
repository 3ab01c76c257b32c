"""TensorFlow Serving REST client.

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
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

import numpy as np
import requests
from requests.adapters import HTTPAdapter
from urllib3.util import Timeout

SIGNATURE = "serving_default"
RETRIED_STATUSES = frozenset({502, 503})  # a proxy without upstream; TF Serving UNAVAILABLE


class ModelServerError(Exception):
    """The model server could not give an answer."""


class ModelUnavailable(ModelServerError):
    """Unreachable, overloaded, not serving the version yet, or answering nonsense."""


class ModelTimeout(ModelServerError):
    """No answer within the configured timeout."""


class UnknownModel(ModelServerError):
    """The pinned version or label does not exist on the model server."""


class ModelNotServing(UnknownModel):
    """TF Serving's 404: no such model or version, or that version is not loaded (yet)."""


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
    """One per process: a pooled HTTP session and a short-lived label-to-version cache.

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
    ) -> None:
        if retries < 0 or retry_backoff_seconds < 0:
            raise ValueError("retries and retry_backoff_seconds must not be negative")
        self._model_url = f"{base_url.rstrip('/')}/v1/models/{model_name}"
        self._timeout = timeout_seconds
        self._retries = retries
        self._backoff = retry_backoff_seconds
        self._cache_seconds = label_cache_seconds
        self._labels: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._session = requests.Session()
        # MODEL_SERVER_URL is reached directly: with trust_env, requests looks up proxy
        # variables and ~/.netrc again on every call (8% of a busy worker's CPU, profiled).
        self._session.trust_env = False
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

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
        url = f"{self._model_url}/versions/{version}"
        body = self._call("GET", url, f"version {version}", deadline)
        try:
            state = body["model_version_status"][0]["state"]
        except (KeyError, IndexError, TypeError):
            raise ModelUnavailable(f"the status of version {version} is malformed") from None
        if state != "AVAILABLE":
            raise ModelUnavailable(f"version {version} (label {label!r}) is {state}")
        return version

    def close(self) -> None:
        self._session.close()

    def _deadline(self) -> float:
        return time.monotonic() + self._timeout

    def _resolve(self, label: str, deadline: float) -> int:
        now = time.monotonic()
        with self._lock:
            cached = self._labels.get(label)
        if cached and cached[1] > now:
            return cached[0]
        version = self._label_version(label, deadline)
        with self._lock:
            self._labels[label] = (version, now + self._cache_seconds)
        return version

    def _forget(self, label: str) -> None:
        with self._lock:
            self._labels.pop(label, None)

    def _label_version(self, label: str, deadline: float) -> int:
        url = f"{self._model_url}/labels/{label}/metadata"
        try:
            body = self._call("GET", url, f"label {label!r}", deadline)
        except ModelNotServing:
            raise ModelUnavailable(f"label {label!r} points at no AVAILABLE version") from None
        try:
            return int(body["model_spec"]["version"])
        except (KeyError, TypeError, ValueError):
            raise ModelUnavailable(f"the metadata for label {label!r} is malformed") from None

    def _predict(
        self, images: np.ndarray, version: int, label: str | None, deadline: float
    ) -> ModelAnswer:
        url = f"{self._model_url}/versions/{version}:predict"
        payload = {"signature_name": SIGNATURE, "inputs": {"image": images.tolist()}}
        body = self._call("POST", url, f"version {version}", deadline, payload)
        try:
            outputs = body["outputs"]
            probabilities = np.asarray(outputs["probabilities"], dtype=np.float32)
            digits = np.asarray(outputs["digit"], dtype=np.int64)
        except (KeyError, TypeError, ValueError):
            raise ModelUnavailable("the model server's prediction is malformed") from None
        if probabilities.shape != (len(images), 10) or digits.shape != (len(images),):
            raise ModelUnavailable("the model server's prediction has the wrong shape")
        return ModelAnswer(probabilities, digits, version, label)

    def _call(
        self, method: str, url: str, what: str, deadline: float, payload: object | None = None
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
        self, method: str, url: str, what: str, deadline: float, payload: object | None
    ) -> dict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ModelTimeout(f"the model server did not answer within {self._timeout:g} s")
        try:
            # `total`: connecting and reading share what is left, not the budget each.
            response = self._session.request(
                method, url, json=payload, timeout=Timeout(total=remaining)
            )
        except requests.Timeout:  # before ConnectionError: ConnectTimeout is both
            raise ModelTimeout(
                f"the model server did not answer within {self._timeout:g} s"
            ) from None
        except requests.ConnectionError as error:  # refused, reset: it may be restarting
            raise _Transient(
                ModelUnavailable(f"the model server is unreachable: {type(error).__name__}")
            ) from None
        except requests.RequestException as error:
            raise ModelUnavailable(
                f"the model server is unreachable: {type(error).__name__}"
            ) from None
        if _unknown_label(response):
            raise UnknownModel(f"the model server has no {what}")
        if response.status_code == 404:
            raise ModelNotServing(f"the model server is not serving {what}")
        if response.status_code == 504:
            raise ModelTimeout("the model server timed out")
        if response.status_code in RETRIED_STATUSES:
            raise _Transient(
                ModelUnavailable(f"the model server answered {response.status_code} for {what}")
            )
        if response.status_code != 200:
            raise ModelUnavailable(f"the model server answered {response.status_code} for {what}")
        try:
            body = response.json()
        except ValueError:
            raise ModelUnavailable("the model server's answer is not JSON") from None
        if not isinstance(body, dict):
            raise ModelUnavailable("the model server's answer is not a JSON object")
        return body


def _unknown_label(response: requests.Response) -> bool:
    # TF Serving answers an unknown label with 400 INVALID_ARGUMENT, not 404.
    return response.status_code == 400 and "Unrecognized servable version label" in response.text
