"""What a request asks for, read from its path, query and headers; malformed input is a 4xx."""

from __future__ import annotations

import base64
import hmac
import re
import uuid
from collections.abc import Mapping

import flask

from recognizer import canary, request_log, uploads
from recognizer.canary import Route
from recognizer.config import LABEL_PATTERN, Settings
from recognizer.errors import InvalidParameter, NotAuthorized, UnknownPrediction

# ASCII digits only: str.isdigit() also takes superscripts and circled digits, which int()
# then refuses.
WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")
INCLUDABLE = frozenset({"input"})  # extras `POST /predict?include=...` may add to each prediction
TOKEN_HOLDER = "token"  # the caller that sent the API token; any other caller starts client:


def client_key(request: flask.Request) -> str:
    """Who sent the request, for canary buckets and the request log (canary.client_key)."""
    return canary.client_key(request.headers.get("X-Client-Id"), request.remote_addr)


def caller(request: flask.Request, settings: Settings, client: str) -> str:
    """Whom an idempotency key, a record and a correction belong to: the API token's holder
    when the request carries the right token, else a hash of the client key (the
    X-Client-Id a client sends, a secret only as long as the client keeps it one, or else
    its address). Keys are scoped to it, so no caller can read or block another's request,
    and the store keeps no address or client id: only the hash the request log shows."""
    token, presented = settings.api_token, bearer(request)
    if (
        token is not None
        and presented is not None
        and hmac.compare_digest(presented.encode(), token.encode())
    ):
        return TOKEN_HOLDER
    return f"client:{request_log.client_hash(client)}"


def route(args: Mapping[str, str], settings: Settings, client: str, caller: str) -> Route:
    """A pinned version or label; else canary or stable, sticky per client (canary.py).

    With PIN_REQUIRES_TOKEN only the API token's holder may pin, any version or label:
    pinned traffic is how a client picks which version its uploads and corrections count
    for, stable and canary included (the issue's flood used ?label=canary and =stable).
    """
    pinned = "version" in args or "label" in args
    if pinned and settings.pin_requires_token and caller != TOKEN_HOLDER:
        raise NotAuthorized(
            "pinning a version or label (?version=, ?label=) needs the API token: "
            "send 'Authorization: Bearer <token>', or leave the pin out"
        )
    if "version" in args and "label" in args:
        raise InvalidParameter("pin either a version or a label, not both")
    if "version" in args:
        version = int_parameter(args, "version", default=0)
        if version < 1:
            raise InvalidParameter("version must be a positive whole number")
        return Route(label=settings.model_label, version=version)
    if "label" in args:
        if not LABEL_PATTERN.fullmatch(args["label"]):
            raise InvalidParameter("label must be 1-64 letters, digits, '_' or '-'")
        return Route(label=args["label"])
    return canary.unpinned(
        client, settings.canary_percent, settings.model_label, settings.canary_label
    )


def int_parameter(args: Mapping[str, str], name: str, default: int) -> int:
    raw = args.get(name)
    if raw is None:
        return default
    if not WHOLE_NUMBER.fullmatch(raw):
        raise InvalidParameter(
            f"{name} must be a whole number of at most 9 digits (0-9), not {uploads.echo(raw)}"
        )
    return int(raw)


def include_parameter(args: Mapping[str, str]) -> set[str]:
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


CURSOR = re.compile(r"[A-Za-z0-9_-]{22}")  # 16 bytes, URL-safe base64 without padding


def cursor_parameter(args: Mapping[str, str]) -> uuid.UUID | None:
    """`before`: the opaque cursor a history page gave as `next` (responses.cursor)."""
    raw = args.get("before")
    if raw is None:
        return None
    if CURSOR.fullmatch(raw):
        value = uuid.UUID(bytes=base64.urlsafe_b64decode(raw + "=="))
        if value.version == 1:
            return value
    raise InvalidParameter(f"before must be a page's `next` cursor, not {uploads.echo(raw)}")


def record_id(prediction_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(prediction_id)
    except ValueError:
        raise UnknownPrediction(f"{uploads.echo(prediction_id)} is not a prediction id") from None


def bearer(request: flask.Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
