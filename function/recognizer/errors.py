"""The one place an exception becomes an HTTP status, a machine-readable code and a JSON body.

The modules that raise know nothing of HTTP; `ERRORS` maps their exception classes, and
`classify` walks an exception's class hierarchy so the most specific entry wins (as
Flask's error-handler registry does). Anything unmapped is a 500 that gets logged.
"""

from __future__ import annotations

import errno
import logging
import math

import flask
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from recognizer import budget, connection, feedback, model_client, preprocess, uploads
from recognizer.ratelimit import RateLimited, TooManyUploads
from recognizer.records import StoreUnavailable
from recognizer.responses import json_response
from recognizer.service import IdempotencyKeyReused, InvalidIdempotencyKey

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
# A full disk or an exhausted quota, wherever it happens: a server-side condition (503).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class InvalidParameter(ValueError):
    """A query parameter is malformed."""


class UnknownPrediction(LookupError):
    """No record has that id."""


class UploadNotStored(LookupError):
    """The record exists, but its upload was over the storage cap."""


class NotAuthorized(PermissionError):
    """API_TOKEN is set and the request does not carry it."""


class CrossSiteRequest(PermissionError):
    """A page of another site sent a request that writes (access.refuse_cross_site)."""


class MalformedBody(ValueError):
    """The body's framing is broken: a chunk size that is not hex, a missing terminator."""


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
    feedback.FeedbackTooLarge: (413, "request_too_large"),
    MalformedBody: (400, "malformed_body"),
    uploads.TooManyImages: (413, "too_many_images"),
    uploads.TooManyFormParts: (413, "too_many_form_parts"),
    uploads.FormFieldTooLarge: (413, "form_field_too_large"),
    RequestEntityTooLarge: (413, "request_too_large"),
    preprocess.NotAnImage: (400, "not_an_image"),
    preprocess.BlankImage: (400, "blank_image"),
    preprocess.ImageTooLarge: (413, "image_too_large"),
    preprocess.ImageTooComplex: (413, "image_too_complex"),
    budget.DecodeBusy: (503, "decode_busy"),
    budget.Busy: (503, "busy"),
    connection.ClientNotReading: (503, "client_not_reading"),
    CrossSiteRequest: (403, "cross_site_request"),
    InvalidParameter: (400, "invalid_parameter"),
    InvalidIdempotencyKey: (400, "invalid_idempotency_key"),
    IdempotencyKeyReused: (422, "idempotency_key_reused"),
    NotAuthorized: (401, "unauthorized"),
    feedback.InvalidFeedback: (400, "invalid_feedback"),
    feedback.MissingFeedbackToken: (401, "unauthorized"),
    feedback.WrongFeedbackToken: (403, "forbidden"),
    RateLimited: (429, "too_many_corrections"),
    TooManyUploads: (429, "too_many_uploads"),
    UnknownPrediction: (404, "unknown_prediction"),
    UploadNotStored: (404, "upload_not_stored"),
    model_client.UnknownModel: (404, "unknown_model_version"),
    model_client.ModelUnavailable: (503, "model_unavailable"),
    model_client.ModelTimeout: (504, "model_timeout"),
    StoreUnavailable: (503, "store_unavailable"),
    NotReady: (503, "not_ready"),
}


def classify(error: Exception) -> tuple[int, str]:
    """(status, code): the mapped class, else a full disk, routing's 404 or 405, else a 500."""
    for kind in type(error).__mro__:
        if kind in ERRORS:
            return ERRORS[kind]
    if is_framing_error(error):
        return ERRORS[MalformedBody]
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return 503, "insufficient_storage"
    if isinstance(error, HTTPException) and error.code:  # 404 and 405 from routing
        return error.code, {404: "not_found", 405: "method_not_allowed"}.get(
            error.code, "http_error"
        )
    return 500, "internal"


def is_framing_error(error: Exception) -> bool:
    """An error the HTTP server raised while the body was read, for a client's bad framing.

    gunicorn raises its parser's exceptions (InvalidChunkSize, ChunkMissingTerminator...)
    out of the body stream; Werkzeug's server an OSError naming the chunk. Matched by name:
    the function runs under either server, and imports neither.
    """
    names = {(kind.__module__, kind.__name__) for kind in type(error).__mro__}
    if ("gunicorn.http.errors", "ParseException") in names:
        return True
    return isinstance(error, OSError) and error.errno is None and "chunk" in str(error).lower()


def error_response(error: Exception, status: int, code: str) -> flask.Response:
    """The JSON error for `error`, classified by `classify` as (`status`, `code`)."""
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
    if isinstance(error, RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        headers["Allow"] = ", ".join(error.valid_methods)
    body: dict[str, object] = {"error": {"code": code, "message": message}}
    if isinstance(error, NotReady):
        body["checks"] = error.checks
    response = json_response(body, status, headers)
    # functions-framework reads the whole body into memory after any non-streamed response:
    # for a refused request that is wasted work (and for one refused for its size, it
    # fails). A streamed response skips that; the server discards the unread body itself.
    response.response = iter([response.get_data()])
    return response
