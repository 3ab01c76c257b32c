"""HTTP: the request path to an endpoint, and one answer and one log line per request.

Everything else is a seam of its own: what a request asks for (params.py), who may ask it
(access.py), how records are rendered (responses.py), how an exception becomes a status
(errors.py), and what the endpoints call (clients.py, service.py). An upload's path:
`handle` -> `_predict` -> params.route, uploads.read_images -> Recognizer.recognize ->
responses.prediction_json.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import flask
from werkzeug.exceptions import NotFound, RequestEntityTooLarge
from werkzeug.routing import Map, RequestRedirect, Rule

from recognizer import (
    access,
    clients,
    connection,
    drift,
    feedback,
    heap,
    logs,
    metrics,
    model_client,
    params,
    ratelimit,
    request_log,
    status_page,
    uploads,
)
from recognizer.budget import Admission, DecodeBudget
from recognizer.config import Settings
from recognizer.errors import (
    InvalidParameter,
    NotReady,
    UnknownPrediction,
    UploadNotStored,
    classify,
    error_response,
)
from recognizer.records import Feedback, Record, StoreUnavailable
from recognizer.responses import (
    cursor,
    details_json,
    image_headers,
    input_png,
    json_response,
    page_headers,
    prediction_json,
)

PAGE = Path(__file__).with_name("static") / "index.html"
OPENAPI = Path(__file__).with_name("openapi.json")  # the API's description, GET /openapi.json

URLS = Map(
    [
        Rule("/", endpoint="page", methods=["GET"]),
        # OPTIONS marks the paths a browser may call from another origin (CORS preflight).
        Rule("/predict", endpoint="predict", methods=["POST", "OPTIONS"]),
        Rule("/predictions", endpoint="history", methods=["GET", "OPTIONS"]),
        Rule("/predictions/<prediction_id>", endpoint="prediction", methods=["GET", "OPTIONS"]),
        Rule("/predictions/<prediction_id>", endpoint="erase", methods=["DELETE"]),
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
        Rule("/status", endpoint="status", methods=["GET"]),
    ],
    strict_slashes=False,
    # Werkzeug would answer `//` in a path with a redirect to the merged path on its own
    # internal host name; such a path is simply not one of ours (404).
    merge_slashes=False,
)


def _allowed_methods(path: str) -> set[str]:
    return URLS.bind("function").allowed_methods(path)


class Api:
    """The function's HTTP surface; `handle` is called once per request, on many threads."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._clients: clients.Clients | None = None
        self._metrics = metrics.Metrics()
        self._corrections = ratelimit.CorrectionLimits(
            settings.corrections_per_client_per_hour, settings.corrections_per_record_per_hour
        )
        self._uploads = ratelimit.UploadLimit(settings.uploads_per_client_per_hour)
        # Per process: request bodies and decoded images share the memory budget; the
        # admission queue bounds the images in progress (budget.py).
        heap.keep_large_buffers_apart()
        self._budget = DecodeBudget(settings.decode_budget_bytes)
        self._admission = Admission(
            settings.admission_images,
            settings.admission_wait_seconds,
            settings.admission_client_share,
            settings.admission_bytes_per_image,
        )
        self._endpoints: dict[str, Callable[..., flask.Response]] = {
            "page": self._page,
            "history": self._history,
            "prediction": self._prediction,
            "upload": self._upload,
            "feedback": self._feedback,
            "erase": self._erase,
            "health": self._health,
            "ready": self._ready,
            "openapi": self._openapi,
            "metrics": self._metrics_text,
            "status": self._status_page,
        }

    def handle(self, request: flask.Request) -> flask.Response:
        """Answer one request and write its log line, whatever happened; every line logged
        meanwhile carries its id and trace, and so do the model server's (logs.py)."""
        request_id = request_log.request_id(request.headers.get("X-Request-Id"))
        with logs.request_context(request_id, logs.parse_trace(request.headers)):
            return self._handle(request, request_id)

    def _handle(self, request: flask.Request, request_id: str) -> flask.Response:
        started = time.perf_counter()
        facts = request_log.Facts()
        client = params.client_key(request)
        try:
            with connection.deadline(request.environ, self._settings.client_request_seconds):
                response, outcome = self._dispatch(request, facts, client), "ok"
        except Exception as error:  # every failure leaves here as a JSON error
            status, outcome = classify(error)
            response = error_response(error, status, outcome)
        access.allow_origin(request, response, self._settings, _allowed_methods)
        access.secure(response)
        total_ms = (time.perf_counter() - started) * 1000
        self._count(facts, response.status_code, outcome, total_ms)
        response.headers["X-Request-Id"] = request_id
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
                correlation=logs.correlation(self._settings.trace_project),
            )
        )
        return response

    def _dispatch(
        self, request: flask.Request, facts: request_log.Facts, client: str
    ) -> flask.Response:
        connection.guard(
            request.environ,
            self._settings.client_timeout_seconds,
            self._settings.client_max_unread_bytes,
        )
        # Every body is capped, not only /predict's: functions-framework reads the whole body
        # of a request after answering it, and would otherwise buffer any size it is sent.
        request.max_content_length = self._settings.max_request_bytes
        if (request.content_length or 0) > self._settings.max_request_bytes:
            raise RequestEntityTooLarge(
                f"the request body is {request.content_length:,} bytes; "
                f"the limit is {self._settings.max_request_bytes:,}"
            )
        adapter = URLS.bind("function")
        try:
            endpoint, arguments = adapter.match(request.path, request.method)
        except RequestRedirect:  # no rule redirects, but never answer one without a Location
            raise NotFound() from None
        facts.endpoint = endpoint
        if request.method == "OPTIONS":
            methods = ", ".join(sorted(adapter.allowed_methods(request.path)))
            return flask.Response(status=204, headers={"Allow": methods})
        access.authorize(request, endpoint, self._settings, arguments.get("prediction_id"))
        access.refuse_cross_site(request, self._settings)
        if endpoint == "predict":  # the one endpoint with model facts for the request log
            return self._predict(request, facts, client)
        return self._endpoints[endpoint](request, **arguments)

    def close(self) -> None:
        with self._lock:
            if self._clients is not None:
                self._clients.close()
                self._clients = None

    def _connect(self) -> clients.Clients:
        with self._lock:
            if self._clients is None:
                self._clients = clients.connect(self._settings, self._budget)
                atexit.register(self.close)
            return self._clients

    def _page(self, request: flask.Request) -> flask.Response:
        page = PAGE.read_bytes()
        return flask.Response(page, mimetype="text/html", headers=page_headers(page))

    def _predict(
        self, request: flask.Request, facts: request_log.Facts, client: str
    ) -> flask.Response:
        caller = params.caller(request, self._settings, client)
        route = params.route(request.args, self._settings, client, caller)
        with_input = "input" in params.include_parameter(request.args)
        # Before its first byte is read, the body takes its size's room in the client's
        # share of the admission queue and its peak cost in the memory budget; once its
        # images are counted, their room in the queue before any is decoded.
        size = uploads.declared_bytes(request, self._settings.max_request_bytes)
        with (
            self._admission.admit(self._admission.body_images(size), client) as grow,
            self._budget.hold(uploads.body_cost(request, self._settings.max_request_bytes)),
        ):
            images = uploads.read_images(request, self._settings.max_batch_images)
            facts.images = len(images)
            if caller != params.TOKEN_HOLDER:  # the API token's holder is not limited
                self._uploads.admit(client, len(images))
            grow(len(images))
            recognition = self._connect().recognizer.recognize(
                images,
                route,
                request.headers.get("Idempotency-Key"),
                caller,
                pinned="version" in request.args or "label" in request.args,
            )
        records = recognition.records
        facts.model = {"version": records[0].model_version, "label": records[0].model_label}
        facts.timings_ms = recognition.timings_ms
        facts.replayed = recognition.replayed
        facts.verdicts = tuple(r.verdict.kind if r.verdict else "none" for r in records)
        facts.drift_bins = tuple(drift.binned(drift.of_record(r)) for r in records)
        secret = self._settings.feedback_secret
        predictions = [
            {
                **prediction_json(r),
                **({"input_png": input_png(r)} if with_input else {}),
                **({} if secret is None else {"feedback_token": feedback.token_for(secret, r.id)}),
            }
            for r in records
        ]
        return json_response({"predictions": predictions, "recorded": True})

    def _history(self, request: flask.Request) -> flask.Response:
        limit = params.int_parameter(request.args, "limit", default=20)
        if not 1 <= limit <= self._settings.history_max_limit:
            raise InvalidParameter(
                f"limit must be between 1 and {self._settings.history_max_limit}"
            )
        before = params.cursor_parameter(request.args)
        page = self._connect().store.page(limit, before)
        return json_response(
            {
                "predictions": [prediction_json(r) for r in page.records],
                "next": None if page.next is None else cursor(page.next),
            }
        )

    def _prediction(self, request: flask.Request, prediction_id: str) -> flask.Response:
        record = self._find(prediction_id, upload=False)
        return json_response({**prediction_json(record), **details_json(record)})

    def _upload(self, request: flask.Request, prediction_id: str) -> flask.Response:
        record = self._find(prediction_id)
        if record.upload.content is None:
            raise UploadNotStored(
                f"the upload of {record.id} was {record.upload.size:,} bytes, "
                "over the storage cap, so only its digest was kept"
            )
        content_type = record.upload.content_type
        return flask.Response(
            record.upload.content,
            mimetype=content_type,
            headers=image_headers(content_type, str(record.id)),
        )

    def _feedback(self, request: flask.Request, prediction_id: str) -> flask.Response:
        """Record a person's correction; the last one wins. 200 means it is stored."""
        digit, token = feedback.parse(uploads.read_small_body(request, feedback.MAX_BODY_BYTES))
        record_id = params.record_id(prediction_id)
        access.may_correct(request, record_id, token, self._settings)
        client = params.client_key(request)
        caller = params.caller(request, self._settings, client)
        if caller != params.TOKEN_HOLDER:
            self._corrections.admit(client, str(record_id))
        now = datetime.now(UTC)
        correction = Feedback(
            digit,
            now.replace(microsecond=now.microsecond // 1000 * 1000),
            caller,  # the token's holder, else the client key: whose evidence it is
        )
        if not self._connect().store.correct(record_id, correction):
            raise UnknownPrediction(f"no prediction has id {record_id}")
        return json_response(prediction_json(self._find(prediction_id, upload=False)))

    def _erase(self, request: flask.Request, prediction_id: str) -> flask.Response:
        """An erasure request: the upload, the record and its correction, from every table."""
        record_id = params.record_id(prediction_id)
        access.may_erase(request, record_id, self._settings)
        if not self._connect().store.delete(record_id):
            raise UnknownPrediction(f"no prediction has id {record_id}")
        return json_response({"id": str(record_id), "erased": True})

    def _metrics_text(self, request: flask.Request) -> flask.Response:
        return flask.Response(self._metrics.render(), content_type=metrics.CONTENT_TYPE)

    def _status_page(self, request: flask.Request) -> flask.Response:
        """The operators' page (status_page.py) over the newest records of its window."""
        now = datetime.now(UTC)
        since = now - timedelta(hours=status_page.WINDOW_HOURS)
        store, records, before = self._connect().store, [], None
        while len(records) < status_page.MAX_RECORDS:
            page = store.page(500, before)
            records += [r for r in page.records if r.created_at >= since]
            if page.next is None or not page.records or page.records[-1].created_at < since:
                break
            before = page.next
        stable = next(
            (r.model_version for r in records if r.model_label == self._settings.model_label), None
        )
        profile = None if stable is None else drift.load_profile(stable)
        reference = None if stable is None or profile is None else (stable, profile)
        body = status_page.render(records, now, reference)
        return flask.Response(body, mimetype="text/html", headers=page_headers(body))

    def _count(self, facts: request_log.Facts, status: int, outcome: str, total_ms: float) -> None:
        """The request's figures for GET /metrics (a replayed answer predicted nothing)."""
        self._metrics.request(facts.endpoint, status, outcome, total_ms / 1000)
        for stage, ms in facts.timings_ms.items():
            self._metrics.stage_seconds.labels(stage=stage).observe(ms / 1000)
        if status == 200 and facts.model is not None and not facts.replayed:
            version = str(facts.model["version"])
            label = str(facts.model["label"] or "(pinned)")
            for verdict in facts.verdicts:
                self._metrics.predictions.labels(version, label, verdict).inc()
            self._metrics.drift(version, label, facts.drift_bins)
            if label == self._settings.model_label:  # stable's profile is the reference
                self._metrics.reference(int(version))
        if status == 200 and facts.endpoint == "feedback":
            self._metrics.feedback.inc()

    def _openapi(self, request: flask.Request) -> flask.Response:
        return flask.Response(OPENAPI.read_bytes(), mimetype="application/json")

    def _health(self, request: flask.Request) -> flask.Response:
        return json_response({"status": "ok"})

    def _ready(self, request: flask.Request) -> flask.Response:
        connected = self._connect()
        checks: dict[str, str] = {}
        try:
            version = connected.model.check_ready(self._settings.model_label)
            checks["model_server"] = (
                f"ok: label {self._settings.model_label!r} is version {version}"
            )
        except model_client.ModelServerError as error:
            checks["model_server"] = f"failing: {error}"
        try:
            connected.store.ping()
            checks["prediction_store"] = f"ok: {self._settings.prediction_store}"
        except StoreUnavailable as error:
            checks["prediction_store"] = f"failing: {error}"
        failing = [name for name, result in checks.items() if result.startswith("failing")]
        if failing:
            raise NotReady(f"not ready: {', '.join(failing)}", checks)
        return json_response({"status": "ready", "checks": checks})

    def _find(self, prediction_id: str, *, upload: bool = True) -> Record:
        record_id = params.record_id(prediction_id)
        record = self._connect().store.get(record_id, upload=upload)
        if record is None:
            raise UnknownPrediction(f"no prediction has id {record_id}")
        return record
