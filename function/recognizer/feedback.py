"""Corrections: who may correct a prediction, and what a correction says.

Every prediction answered by POST /predict carries a feedback token: an HMAC of its id
under FEEDBACK_SECRET, which every instance shares. The token is a capability for that
one record, so the person who sent the upload (and nobody who only guesses ids) can say
what it really was; the holder of API_TOKEN may correct any record. No state is kept:
an instance checks a token by computing it again.

What the token does not stop: whoever sent an upload may lie about it. The correction
is only evidence, and training from corrections (issue 14) must treat it as such.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Sequence
from typing import Any

from recognizer import bounded_json

MIN_SECRET_BYTES = 32  # as long as the HMAC's key needs to be for its 256-bit output
TOKEN_PURPOSE = b"digit-recognizer feedback v1\x00"  # a token is good for nothing else
MAX_TOKEN_CHARS = 128
# A correction is {"digit": 7, "token": "<43 characters>"}: about 70 bytes. Whatever else a
# client sends is refused before it is read (Content-Length) or once this much has been.
MAX_BODY_BYTES = 1024
MAX_BODY_VALUES = 16  # structural characters (bounded_json): a correction has four


class InvalidFeedback(ValueError):
    """The correction's body is not {"digit": 0-9 or null, "token": "..."}."""


class FeedbackTooLarge(ValueError):
    """The correction's body is over MAX_BODY_BYTES."""


class MissingFeedbackToken(PermissionError):
    """Neither a feedback token nor the API token came with the correction."""


class WrongFeedbackToken(PermissionError):
    """The token is not the one for this prediction (or the API token is wrong)."""


def token_for(secret: bytes, record_id: uuid.UUID) -> str:
    """The capability to correct `record_id`: 43 URL-safe characters."""
    digest = hmac.new(secret, TOKEN_PURPOSE + record_id.bytes, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def token_matches(secret: bytes, record_id: uuid.UUID, token: str) -> bool:
    """Constant time: how much of a guess matched must not show in how long a refusal takes."""
    return hmac.compare_digest(token_for(secret, record_id).encode(), token.encode())


def token_matches_any(keys: Sequence[bytes], record_id: uuid.UUID, token: str) -> bool:
    """Under any verification key: FEEDBACK_SECRET, then FEEDBACK_SECRET_PREVIOUS (the keys
    being rotated out), so a new key does not invalidate every token given before it."""
    return any(token_matches(key, record_id, token) for key in keys)


def parse(body: bytes) -> tuple[int | None, str | None]:
    """The corrected digit (None: "not a digit") and the token (None if absent)."""
    try:
        document: Any = bounded_json.loads(body, MAX_BODY_BYTES, MAX_BODY_VALUES)
    except bounded_json.JsonTooLarge as error:
        raise FeedbackTooLarge(str(error)) from None
    except (bounded_json.InvalidJson, bounded_json.JsonTooComplex):
        raise InvalidFeedback(
            'the body must be JSON: {"digit": 0-9 or null, "token": "..."}'
        ) from None
    if not isinstance(document, dict) or "digit" not in document:
        raise InvalidFeedback('the body must be an object with "digit": 0-9, or null for none')
    digit, token = document["digit"], document.get("token")
    if digit is not None and (type(digit) is not int or not 0 <= digit <= 9):
        raise InvalidFeedback('"digit" must be a whole number from 0 to 9, or null for none')
    if token is not None and (not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS):
        raise InvalidFeedback('"token" must be the feedback_token of the prediction')
    return digit, token
