"""Who may call what: the API token, a correction's feedback token, and CORS.

Tokens are compared in constant time: how much of a guess matched must not show in how
long a refusal takes.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Callable, Iterable

import flask

from recognizer import feedback
from recognizer.config import Settings
from recognizer.errors import CrossSiteRequest, NotAuthorized
from recognizer.params import bearer
from recognizer.responses import API_POLICY

# Endpoints anyone may call even when API_TOKEN is set; /predict is open unless
# PREDICT_REQUIRES_TOKEN; a correction carries its own capability (may_correct); every
# other endpoint (the prediction history, /metrics) needs the token.
OPEN_ENDPOINTS = frozenset({"page", "health", "ready", "openapi"})
# What a prediction's own feedback token may read besides correcting it: the record and
# its image, so a person sees their own upload without the token that reads everyone's.
OWN_RECORD_ENDPOINTS = frozenset({"prediction", "upload"})
CORS_ALLOWED_HEADERS = "Content-Type, Authorization, Idempotency-Key, X-Client-Id, X-Request-Id"
CORS_EXPOSED_HEADERS = "X-Request-Id, Retry-After"
CORS_MAX_AGE_SECONDS = 600
# What every answer carries unless it set its own (the page sets its CSP, images their
# Cache-Control): no sniffing, no referrer to other sites, no framing, records not cached
# (a correction changes them).
SECURITY_HEADERS = {
    "Content-Security-Policy": API_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Requests a page of another site can send without a preflight, and read nothing back:
# a form's submission and fetch(..., {mode: "no-cors"}).
SIMPLE_MODES = frozenset({"no-cors", "navigate", "nested-navigate"})


def authorize(
    request: flask.Request, endpoint: str, settings: Settings, prediction_id: str | None = None
) -> None:
    """With API_TOKEN set, the history (and /predict if so configured) needs the token; a
    prediction's feedback token, as the Bearer token, reads that prediction and its image."""
    token = settings.api_token
    if endpoint in OWN_RECORD_ENDPOINTS and _owns(request, prediction_id, settings):
        return
    if token is None or endpoint in OPEN_ENDPOINTS or endpoint in ("feedback", "erase"):
        return
    if endpoint == "predict" and not settings.predict_requires_token:
        return
    presented = bearer(request)
    if presented is None:
        raise NotAuthorized("this needs the API token: send 'Authorization: Bearer <token>'")
    if not _same(presented, token):
        raise NotAuthorized("the API token sent is not the right one")


def _owns(request: flask.Request, prediction_id: str | None, settings: Settings) -> bool:
    presented = bearer(request)
    if presented is None or prediction_id is None or not settings.feedback_keys:
        return False
    try:
        record_id = uuid.UUID(prediction_id)
    except ValueError:
        return False
    return feedback.token_matches_any(settings.feedback_keys, record_id, presented)


def refuse_cross_site(request: flask.Request, settings: Settings) -> None:
    """A page of another site may not make a record: a form post or a no-cors fetch needs
    no preflight, so CORS alone would let it write (it only stops it reading the answer).

    Browsers say where a request comes from (Sec-Fetch-Site, and Origin on every POST);
    an API client without a browser (curl, a script) sends neither and is not concerned.
    A site in CORS_ALLOWED_ORIGINS may write with a CORS request (fetch's default mode).
    """
    if request.method not in UNSAFE_METHODS:
        return
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    same_site = site in ("same-origin", "none")  # typed in, or the page's own
    no_browser_said = site is None and (origin is None or origin == request.host_url.rstrip("/"))
    if same_site or no_browser_said:
        return
    allowed = settings.cors_allowed_origins
    listed = origin is not None and ("*" in allowed or origin in allowed)
    if listed and request.headers.get("Sec-Fetch-Mode") not in SIMPLE_MODES:
        return
    raise CrossSiteRequest(
        f"a page of another site ({origin or 'unnamed'}) may not send this request: "
        "only this service's own page and origins in CORS_ALLOWED_ORIGINS (with a CORS "
        "request) may"
    )


def secure(response: flask.Response) -> None:
    """The headers every answer carries (SECURITY_HEADERS), unless it set its own."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def may_correct(
    request: flask.Request, record_id: uuid.UUID, token: str | None, settings: Settings
) -> None:
    """A correction needs the prediction's feedback token, or the API token as a Bearer token."""
    secret, api_token = settings.feedback_secret, settings.api_token
    if (
        token is not None
        and secret is not None
        and feedback.token_matches_any(settings.feedback_keys, record_id, token)
    ):
        return
    presented = bearer(request)
    if presented is not None and api_token is not None and _same(presented, api_token):
        return
    if token is None and presented is None:
        raise feedback.MissingFeedbackToken(
            'a correction needs the prediction\'s feedback_token ("token" in the body) '
            "or the API token (Authorization: Bearer)"
        )
    if token is not None and secret is None:
        raise feedback.WrongFeedbackToken(
            "this service gives no feedback tokens (FEEDBACK_SECRET is unset)"
        )
    raise feedback.WrongFeedbackToken("the token is not the one for this prediction")


def may_erase(request: flask.Request, record_id: uuid.UUID, settings: Settings) -> None:
    """An erasure needs the prediction's feedback token or the API token, as a Bearer
    token: whoever was given the prediction (or runs the service) may have it erased."""
    secret, api_token, presented = settings.feedback_secret, settings.api_token, bearer(request)
    if presented is not None and (
        (
            secret is not None
            and feedback.token_matches_any(settings.feedback_keys, record_id, presented)
        )
        or (api_token is not None and _same(presented, api_token))
    ):
        return
    raise NotAuthorized(
        "erasing a prediction needs its feedback_token or the API token: "
        "send 'Authorization: Bearer <token>'"
    )


def allow_origin(
    request: flask.Request,
    response: flask.Response,
    settings: Settings,
    allowed_methods: Callable[[str], Iterable[str]],
) -> None:
    """CORS: the configured origins may call the API from their pages; others get nothing.

    Only paths that allow OPTIONS (a preflight) are open to other origins. The origin is
    echoed rather than answered with `*`, so a `*` setting works for requests that carry an
    Authorization header too.
    """
    allowed = settings.cors_allowed_origins
    if not allowed:  # the default: nothing to add, and nothing to look up per request
        return
    methods = set(allowed_methods(request.path))
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


def _same(presented: str, expected: str) -> bool:
    return hmac.compare_digest(presented.encode(), expected.encode())
