"""HTTP: routing on the request path, access rules, JSON bodies, the one place errors become
responses, and one log line per request (request_log.py).

Clients (the model server, the prediction log) are created on the first request, not at
import: functions-framework imports the module in gunicorn's master and then forks, and
a socket or pool made before the fork is broken in the worker.
"""

from __future__ import annotations

import atexit
import base64
import errno
import hmac
import io
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import flask
import numpy as np
from PIL import Image
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge
from werkzeug.routing import Map, RequestRedirect, Rule

from recognizer import (
    budget,
    feedback,
    metrics,
    model_client,
    preprocess,
    request_log,
    routing,
    uploads,
)
from recognizer.config import Settings
from recognizer.model_client import ModelClient
from recognizer.records import Feedback, PredictionLog, Record, StoreUnavailable
from recognizer.service import IdempotencyKeyReused, InvalidIdempotencyKey, Recognizer, Route
from recognizer.verdict import Verdict

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("static") / "index.html"
OPENAPI = Path(__file__).with_name("openapi.json")  # the API's description, GET /openapi.json
RETRY_AFTER_SECONDS = 5
LABEL_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# ASCII digits only: str.isdigit() also takes superscripts and circled digits, which int()
# then refuses.
WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")
# A full disk or an exhausted quota, wherever it happens: a server-side condition (503).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
INCLUDABLE = frozenset({"input"})  # extras `POST /predict?include=...` may add to each prediction
# Endpoints anyone may call even when API_TOKEN is set; /predict is open unless
# PREDICT_REQUIRES_TOKEN; every other endpoint (the prediction history) needs the token.
OPEN_ENDPOINTS = frozenset({"page", "health", "ready", "openapi"})
CORS_ALLOWED_HEADERS = "Content-Type, Authorization, Idempotency-Key, X-Client-Id, X-Request-Id"
CORS_EXPOSED_HEADERS = "X-Request-Id, Retry-After"
CORS_MAX_AGE_SECONDS = 600


class InvalidParameter(ValueError):
    """A query parameter is malformed."""


class UnknownPrediction(LookupError):
    """No record has that id."""


class UploadNotStored(LookupError):
    """The record exists, but its upload was over the storage cap."""


class NotAuthorized(PermissionError):
    """API_TOKEN is set and the request does not carry it."""


class NotReady(RuntimeError):
    """A dependency of the function cannot be reached; `checks` says which."""

    def __init__(self, message: str, checks: dict[str, str]) -> None:
        super().__init__(message)
        self.checks = checks


# Exception type -> (HTTP status, machine-readable code). The most specific class wins.
ERRORS: dict[type[Exception], tuple[int, str]] = {
    uploads.EmptyBody: (400, "empty_body"),
    uploads.MissingImage: (400, "missing_image"),
    uploads.InvalidBase64: (400, "invalid_base64"),
    uploads.InvalidJson: (400, "invalid_json"),
    uploads.UnsupportedMediaType: (415, "unsupported_media_type"),
    uploads.TooManyImages: (413, "too_many_images"),
    uploads.TooManyFormParts: (413, "too_many_form_parts"),
    uploads.FormFieldTooLarge: (413, "form_field_too_large"),
    RequestEntityTooLarge: (413, "request_too_large"),
    preprocess.NotAnImage: (400, "not_an_image"),
    preprocess.BlankImage: (400, "blank_image"),
    preprocess.ImageTooLarge: (413, "image_too_large"),
    preprocess.ImageTooComplex: (413, "image_too_complex"),
    budget.DecodeBusy: (503, "decode_busy"),
    InvalidParameter: (400, "invalid_parameter"),
    InvalidIdempotencyKey: (400, "invalid_idempotency_key"),
    IdempotencyKeyReused: (422, "idempotency_key_reused"),
    NotAuthorized: (401, "unauthorized"),
    feedback.InvalidFeedback: (400, "invalid_feedback"),
    feedback.MissingFeedbackToken: (401, "unauthorized"),
    feedback.WrongFeedbackToken: (403, "forbidden"),
    UnknownPrediction: (404, "unknown_prediction"),
    UploadNotStored: (404, "upload_not_stored"),
    model_client.UnknownModel: (404, "unknown_model_version"),
    model_client.ModelUnavailable: (503, "model_unavailable"),
    model_client.ModelTimeout: (504, "model_timeout"),
    StoreUnavailable: (503, "store_unavailable"),
    NotReady: (503, "not_ready"),
}

_URLS = Map(
    [
        Rule("/", endpoint="page", methods=["GET"]),
        # OPTIONS marks the paths a browser may call from another origin (CORS preflight).
        Rule("/predict", endpoint="predict", methods=["POST", "OPTIONS"]),
        Rule("/predictions", endpoint="history", methods=["GET", "OPTIONS"]),
        Rule("/predictions/<prediction_id>", endpoint="prediction", methods=["GET", "OPTIONS"]),
        Rule("/predictions/<prediction_id>/image", endpoint="upload", methods=["GET", "OPTIONS"]),
        Rule(
            "/predictions/<prediction_id>/feedback",
            endpoint="feedback",
            methods=["PUT", "OPTIONS"],
        ),
        Rule("/healthz", endpoint="health", methods=["GET"]),
        Rule("/readyz", endpoint="ready", methods=["GET"]),
        Rule("/openapi.json", endpoint="openapi", methods=["GET"]),
        Rule("/metrics", endpoint="metrics", methods=["GET"]),
    ],
    strict_slashes=False,
    # Werkzeug would answer `//` in a path with a redirect to the merged path on its own
    # internal host name; such a path is simply not one of ours (404).
    merge_slashes=False,
)


@dataclass(frozen=True)
class _Clients:
    recognizer: Recognizer
    model: ModelClient
    log: PredictionLog


class Api:
    """The function's HTTP surface; `handle` is called once per request, on many threads."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._clients: _Clients | None = None
        self._metrics = metrics.Metrics()
        self._endpoints: dict[str, Callable[..., flask.Response]] = {
            "page": self._page,
            "history": self._history,
            "prediction": self._prediction,
            "upload": self._upload,
            "feedback": self._feedback,
            "health": self._health,
            "ready": self._ready,
            "openapi": self._openapi,
            "metrics": self._metrics_text,
        }

    def handle(self, request: flask.Request) -> flask.Response:
        """Answer one request and write its log line, whatever happened."""
        started = time.perf_counter()
        facts = request_log.Facts()
        try:
            response, outcome = self._dispatch(request, facts), "ok"
        except Exception as error:  # every failure leaves here as a JSON error
            status, outcome = _classify(error)
            response = _error_response(error, status, outcome)
        self._allow_origin(request, response)
        total_ms = (time.perf_counter() - started) * 1000
        self._count(facts, response.status_code, total_ms)
        request_id = request_log.request_id(request.headers.get("X-Request-Id"))
        response.headers["X-Request-Id"] = request_id
        client = routing.client_key(request.headers.get("X-Client-Id"), request.remote_addr)
        request_log.emit(
            request_log.line(
                request_id=request_id,
                client=client,
                method=request.method,
                path=request.path,
                query_names=request.args.keys(),
                status=response.status_code,
                outcome=outcome,
                total_ms=total_ms,
                facts=facts,
            )
        )
        return response

    def _dispatch(self, request: flask.Request, facts: request_log.Facts) -> flask.Response:
        # Every body is capped, not only /predict's: functions-framework reads the whole body
        # of a request after answering it, and would otherwise buffer any size it is sent.
        request.max_content_length = self._settings.max_request_bytes
        if (request.content_length or 0) > self._settings.max_request_bytes:
            raise RequestEntityTooLarge(
                f"the request body is {request.content_length:,} bytes; "
                f"the limit is {self._settings.max_request_bytes:,}"
            )
        adapter = _URLS.bind("function")
        try:
            endpoint, arguments = adapter.match(request.path, request.method)
        except RequestRedirect:  # no rule redirects, but never answer one without a Location
            raise NotFound() from None
        facts.endpoint = endpoint
        if request.method == "OPTIONS":
            methods = ", ".join(sorted(adapter.allowed_methods(request.path)))
            return flask.Response(status=204, headers={"Allow": methods})
        self._authorize(request, endpoint)
        if endpoint == "predict":  # the one endpoint with model facts for the log
            return self._predict(request, facts)
        return self._endpoints[endpoint](request, **arguments)

    def _authorize(self, request: flask.Request, endpoint: str) -> None:
        """With API_TOKEN set, the history (and /predict if so configured) needs the token."""
        token = self._settings.api_token
        if token is None or endpoint in OPEN_ENDPOINTS or endpoint == "feedback":
            return  # a correction carries its own capability: see _may_correct
        if endpoint == "predict" and not self._settings.predict_requires_token:
            return
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise NotAuthorized("this needs the API token: send 'Authorization: Bearer <token>'")
        # Constant time: how much of a guess matched must not show in how long a refusal takes.
        if not hmac.compare_digest(presented.strip().encode(), token.encode()):
            raise NotAuthorized("the API token sent is not the right one")

    def _allow_origin(self, request: flask.Request, response: flask.Response) -> None:
        """CORS: the configured origins may call the API from their pages; others get nothing.

        The origin is echoed rather than answered with `*`, so a `*` setting works for
        requests that carry an Authorization header too.
        """
        allowed = self._settings.cors_allowed_origins
        if not allowed:  # the default: nothing to add, and nothing to look up per request
            return
        methods = _URLS.bind("function").allowed_methods(request.path)
        if "OPTIONS" not in methods:
            return
        response.vary.add("Origin")  # the answer differs by Origin: caches must keep them apart
        origin = request.headers.get("Origin")
        if origin is None or ("*" not in allowed and origin not in allowed):
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = ", ".join(sorted(methods))
            response.headers["Access-Control-Allow-Headers"] = CORS_ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = str(CORS_MAX_AGE_SECONDS)
        else:
            response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED_HEADERS

    def close(self) -> None:
        with self._lock:
            if self._clients is not None:
                self._clients.model.close()
                self._clients.log.close()
                self._clients = None

    def _connect(self) -> _Clients:
        with self._lock:
            if self._clients is None:
                settings = self._settings
                model = ModelClient(
                    settings.model_server_url,
                    settings.model_name,
                    settings.model_timeout_seconds,
                    settings.label_cache_seconds,
                    retries=settings.model_retries,
                    retry_backoff_seconds=settings.model_retry_backoff_seconds,
                )
                prediction_log = _open_log(settings)
                recognizer = Recognizer(
                    model,
                    prediction_log,
                    settings.model_name,
                    settings.max_image_pixels,
                    settings.max_request_pixels,
                    settings.upload_store_max_bytes,
                    decode_budget=budget.DecodeBudget(settings.decode_budget_bytes),
                    decode_cpu_seconds=settings.decode_cpu_seconds,
                    verdict_policy=settings.verdict_policy,
                )
                self._clients = _Clients(recognizer, model, prediction_log)
                atexit.register(self.close)
            return self._clients

    def _page(self, request: flask.Request) -> flask.Response:
        return flask.Response(PAGE.read_bytes(), mimetype="text/html")

    def _predict(self, request: flask.Request, facts: request_log.Facts) -> flask.Response:
        route = _route(request, self._settings)
        with_input = "input" in _include_parameter(request.args)
        images = uploads.read_images(request, self._settings.max_batch_images)
        facts.images = len(images)
        recognition = self._connect().recognizer.recognize(
            images, route, request.headers.get("Idempotency-Key")
        )
        records = recognition.records
        facts.model = {"version": records[0].model_version, "label": records[0].model_label}
        facts.timings_ms = recognition.timings_ms
        facts.replayed = recognition.replayed
        facts.verdicts = tuple(r.verdict.kind if r.verdict else "none" for r in records)
        secret = self._settings.feedback_secret
        predictions = [
            {
                **_prediction_json(r),
                **({"input_png": _input_png(r)} if with_input else {}),
                **({} if secret is None else {"feedback_token": feedback.token_for(secret, r.id)}),
            }
            for r in records
        ]
        return _json({"predictions": predictions, "recorded": True})

    def _history(self, request: flask.Request) -> flask.Response:
        limit = _int_parameter(request.args, "limit", default=20)
        if not 1 <= limit <= self._settings.history_max_limit:
            raise InvalidParameter(
                f"limit must be between 1 and {self._settings.history_max_limit}"
            )
        records = self._connect().log.recent(limit)
        return _json({"predictions": [_prediction_json(r) for r in records]})

    def _prediction(self, request: flask.Request, prediction_id: str) -> flask.Response:
        record = self._find(prediction_id)
        return _json({**_prediction_json(record), **_details_json(record)})

    def _upload(self, request: flask.Request, prediction_id: str) -> flask.Response:
        record = self._find(prediction_id)
        if record.upload.content is None:
            raise UploadNotStored(
                f"the upload of {record.id} was {record.upload.size:,} bytes, "
                "over the storage cap, so only its digest was kept"
            )
        response = flask.Response(record.upload.content, mimetype=record.upload.content_type)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def _feedback(self, request: flask.Request, prediction_id: str) -> flask.Response:
        """Record a person's correction; the last one wins. 200 means it is stored."""
        digit, token = feedback.parse(request.get_data())
        record_id = _record_id(prediction_id)
        self._may_correct(request, record_id, token)
        now = datetime.now(UTC)
        correction = Feedback(digit, now.replace(microsecond=now.microsecond // 1000 * 1000))
        if not self._connect().log.correct(record_id, correction):
            raise UnknownPrediction(f"no prediction has id {record_id}")
        return _json(_prediction_json(self._find(prediction_id)))

    def _may_correct(self, request: flask.Request, record_id: uuid.UUID, token: str | None) -> None:
        """The prediction's feedback token, or the API token as a Bearer token."""
        secret, api_token = self._settings.feedback_secret, self._settings.api_token
        if (
            token is not None
            and secret is not None
            and feedback.token_matches(secret, record_id, token)
        ):
            return
        scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
        bearer = bearer.strip() if scheme.lower() == "bearer" else ""
        if (
            bearer
            and api_token is not None
            and hmac.compare_digest(bearer.encode(), api_token.encode())
        ):
            return
        if token is None and not bearer:
            raise feedback.MissingFeedbackToken(
                'a correction needs the prediction\'s feedback_token ("token" in the body) '
                "or the API token (Authorization: Bearer)"
            )
        if token is not None and secret is None:
            raise feedback.WrongFeedbackToken(
                "this service gives no feedback tokens (FEEDBACK_SECRET is unset)"
            )
        raise feedback.WrongFeedbackToken("the token is not the one for this prediction")

    def _metrics_text(self, request: flask.Request) -> flask.Response:
        return flask.Response(self._metrics.render(), content_type=metrics.CONTENT_TYPE)

    def _count(self, facts: request_log.Facts, status: int, total_ms: float) -> None:
        """The request's figures for GET /metrics (a replayed answer predicted nothing)."""
        self._metrics.count(
            "digit_http_requests_total", endpoint=facts.endpoint, status=str(status)
        )
        self._metrics.observe(
            "digit_request_duration_seconds", total_ms / 1000, endpoint=facts.endpoint
        )
        for stage, ms in facts.timings_ms.items():
            self._metrics.observe("digit_stage_duration_seconds", ms / 1000, stage=stage)
        if status == 200 and facts.model is not None and not facts.replayed:
            model = {
                "model_version": str(facts.model["version"]),
                "model_label": str(facts.model["label"] or "(pinned)"),
            }
            for verdict in facts.verdicts:
                self._metrics.count("digit_predictions_total", verdict=verdict, **model)
        if status == 200 and facts.endpoint == "feedback":
            self._metrics.count("digit_feedback_total")

    def _openapi(self, request: flask.Request) -> flask.Response:
        return flask.Response(OPENAPI.read_bytes(), mimetype="application/json")

    def _health(self, request: flask.Request) -> flask.Response:
        return _json({"status": "ok"})

    def _ready(self, request: flask.Request) -> flask.Response:
        clients = self._connect()
        checks: dict[str, str] = {}
        try:
            version = clients.model.check_ready(self._settings.model_label)
            checks["model_server"] = (
                f"ok: label {self._settings.model_label!r} is version {version}"
            )
        except model_client.ModelServerError as error:
            checks["model_server"] = f"failing: {error}"
        try:
            clients.log.ping()
            checks["prediction_store"] = f"ok: {self._settings.prediction_store}"
        except StoreUnavailable as error:
            checks["prediction_store"] = f"failing: {error}"
        failing = [name for name, result in checks.items() if result.startswith("failing")]
        if failing:
            raise NotReady(f"not ready: {', '.join(failing)}", checks)
        return _json({"status": "ready", "checks": checks})

    def _find(self, prediction_id: str) -> Record:
        record_id = _record_id(prediction_id)
        record = self._connect().log.get(record_id)
        if record is None:
            raise UnknownPrediction(f"no prediction has id {record_id}")
        return record


def _record_id(prediction_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(prediction_id)
    except ValueError:
        raise UnknownPrediction(f"{uploads.echo(prediction_id)} is not a prediction id") from None


def _open_log(settings: Settings) -> PredictionLog:
    if settings.prediction_store == "cassandra":
        from recognizer.cassandra_log import (
            CassandraLog,
        )  # only deployments with Cassandra pay for it

        return CassandraLog.from_env()
    from recognizer.sqlite_log import SqliteLog

    return SqliteLog(settings.sqlite_path)


def _route(request: flask.Request, settings: Settings) -> Route:
    """A pinned version or label; else canary or stable, sticky per client (routing.py)."""
    args = request.args
    if "version" in args and "label" in args:
        raise InvalidParameter("pin either a version or a label, not both")
    if "version" in args:
        version = _int_parameter(args, "version", default=0)
        if version < 1:
            raise InvalidParameter("version must be a positive whole number")
        return Route(label=settings.model_label, version=version)
    if "label" in args:
        if not LABEL_PATTERN.fullmatch(args["label"]):
            raise InvalidParameter("label must be 1-64 letters, digits, '_' or '-'")
        return Route(label=args["label"])
    key = routing.client_key(request.headers.get("X-Client-Id"), request.remote_addr)
    return routing.unpinned(
        key, settings.canary_percent, settings.model_label, settings.canary_label
    )


def _int_parameter(args: dict[str, str], name: str, default: int) -> int:
    raw = args.get(name)
    if raw is None:
        return default
    if not WHOLE_NUMBER.fullmatch(raw):
        raise InvalidParameter(
            f"{name} must be a whole number of at most 9 digits (0-9), not {uploads.echo(raw)}"
        )
    return int(raw)


def _include_parameter(args: dict[str, str]) -> set[str]:
    """`include=input` opts into extras, so the default answer stays lean."""
    raw = args.get("include")
    if raw is None:
        return set()
    names = {name.strip() for name in raw.split(",")}
    unknown = names - INCLUDABLE
    if unknown:
        raise InvalidParameter(
            f"include accepts {', '.join(sorted(INCLUDABLE))}, "
            f"not {uploads.echo(sorted(unknown)[0])}"
        )
    return names


def _prediction_json(record: Record) -> dict[str, object]:
    return {
        "id": str(record.id),
        "digit": record.digit,
        "confidence": round(record.confidence, 6),
        "probabilities": [round(p, 6) for p in record.probabilities],
        "model": {
            "name": record.model_name,
            "version": record.model_version,
            "label": record.model_label,
        },
        "created_at": record.created_at.isoformat(timespec="milliseconds"),
        **_verdict_json(record.verdict),
        "feedback": None
        if record.feedback is None
        else {
            "digit": record.feedback.digit,
            "created_at": record.feedback.created_at.isoformat(timespec="milliseconds"),
        },
    }


def _verdict_json(verdict: Verdict | None) -> dict[str, object]:
    """How far to trust the answer; nulls for a record from before the service judged."""
    if verdict is None:
        return {"verdict": None, "candidates": None, "reasons": None}
    return {
        "verdict": verdict.kind,
        "candidates": list(verdict.candidates),
        "reasons": list(verdict.reasons),
    }


def _details_json(record: Record) -> dict[str, object]:
    """What a single-record read adds: the model's input and what we know of the upload."""
    return {
        "latency_ms": round(record.latency_ms, 3),
        "input_png": _input_png(record),
        "upload": {
            "content_type": record.upload.content_type,
            "size": record.upload.size,
            "sha256": record.upload.sha256,
            "stored": record.upload.content is not None,
        },
    }


def _input_png(record: Record) -> str:
    """The 28x28 input the model saw, as base64 PNG: shows a person why an answer was wrong."""
    pixels = np.frombuffer(record.input_image, dtype=np.uint8).reshape(28, 28)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    return base64.b64encode(png.getvalue()).decode("ascii")


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> flask.Response:
    return flask.Response(
        json.dumps(body, separators=(",", ":")),
        status=status,
        mimetype="application/json",
        headers=headers,
    )


def _error_response(error: Exception, status: int, code: str) -> flask.Response:
    """The JSON error for `error`, classified by `_classify` as (`status`, `code`)."""
    if code == "internal":
        log.exception("unexpected error")
        message = "internal error; it has been logged"
    elif code == "insufficient_storage":
        log.error("a disk is full: %s", error)
        message = "the server is out of disk space; try again later"
    elif isinstance(error, HTTPException):
        message = error.description or error.name
    else:
        message = str(error)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        headers["Allow"] = ", ".join(error.valid_methods)
    body: dict[str, object] = {"error": {"code": code, "message": message}}
    if isinstance(error, NotReady):
        body["checks"] = error.checks
    response = _json(body, status, headers)
    # functions-framework reads the whole body into memory after any non-streamed response:
    # for a refused request that is wasted work (and for one refused for its size, it
    # fails). A streamed response skips that; the server discards the unread body itself.
    response.response = iter([response.get_data()])
    return response


def _classify(error: Exception) -> tuple[int, str]:
    for kind in type(error).__mro__:
        if kind in ERRORS:
            return ERRORS[kind]
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return 503, "insufficient_storage"
    if isinstance(error, HTTPException) and error.code:  # 404 and 405 from routing
        return error.code, {404: "not_found", 405: "method_not_allowed"}.get(
            error.code, "http_error"
        )
    return 500, "internal"
