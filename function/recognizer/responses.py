"""What the API answers: records rendered as the JSON of the contract (openapi.json)."""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import re
import uuid

import flask
import numpy as np
from PIL import Image

from recognizer.records import Record
from recognizer.verdict import Verdict

# The page's inline <script> and <style> blocks, to be allowed by their hashes: the policy
# follows the page as it changes, and nothing injected into it could run.
_INLINE_BLOCK = re.compile(rb"<(script|style)(\s[^>]*)?>(.*?)</\1\s*>", re.DOTALL | re.IGNORECASE)
# Every answer but the page: nothing in it may load, run or be framed.
API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# What a browser shows inline; any other stored upload (TIFF) is served as a download.
INLINE_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp"})


@functools.lru_cache(maxsize=4)
def page_policy(page: bytes) -> str:
    """The page's Content-Security-Policy: its own inline blocks by hash, its API and the
    images it shows (the upload as a blob:, the model's input as a data: URL), no framing.

    Style attributes stay allowed (style-src-attr): they cannot run code, and the page
    sets a few.
    """
    hashes: dict[bytes, list[str]] = {b"script": [], b"style": []}
    for match in _INLINE_BLOCK.finditer(page):
        kind, attributes, body = match.group(1).lower(), match.group(2) or b"", match.group(3)
        if b"src=" in attributes.lower():  # a script file of our own: 'self' covers it
            continue
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
        hashes[kind].append(f"'sha256-{digest}'")
    return "; ".join(
        [
            "default-src 'none'",
            " ".join(["script-src 'self'", *hashes[b"script"]]),
            " ".join(["style-src 'self'", *hashes[b"style"]]),
            "style-src-attr 'unsafe-inline'",
            "img-src 'self' data: blob:",
            "connect-src 'self'",
            "form-action 'self'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ]
    )


def page_headers(page: bytes) -> dict[str, str]:
    return {"Content-Security-Policy": page_policy(page), "Cache-Control": "no-cache"}


def image_headers(content_type: str, record_id: str) -> dict[str, str]:
    """A stored upload never changes; a type browsers do not show is a download."""
    if content_type in INLINE_IMAGE_TYPES:
        disposition = "inline"
    else:
        extension = content_type.rpartition("/")[2] or "bin"
        disposition = f'attachment; filename="{record_id}.{extension}"'
    return {"Content-Disposition": disposition, "Cache-Control": "private, max-age=86400"}


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> flask.Response:
    return flask.Response(
        json.dumps(body, separators=(",", ":")),
        status=status,
        mimetype="application/json",
        headers=headers,
    )


def cursor(record_id: uuid.UUID) -> str:
    """A history page's `next`: opaque to clients (the last record's id, URL-safe base64)."""
    return base64.urlsafe_b64encode(record_id.bytes).rstrip(b"=").decode("ascii")


def prediction_json(record: Record) -> dict[str, object]:
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
        **verdict_json(record.verdict),
        "feedback": None
        if record.feedback is None
        else {
            "digit": record.feedback.digit,
            "created_at": record.feedback.created_at.isoformat(timespec="milliseconds"),
        },
    }


def verdict_json(verdict: Verdict | None) -> dict[str, object]:
    """How far to trust the answer; nulls for a record from before the service judged."""
    if verdict is None:
        return {"verdict": None, "candidates": None, "reasons": None}
    return {
        "verdict": verdict.kind,
        "candidates": list(verdict.candidates),
        "reasons": list(verdict.reasons),
    }


def details_json(record: Record) -> dict[str, object]:
    """What a single-record read adds: the model's input and what we know of the upload."""
    return {
        "latency_ms": round(record.latency_ms, 3),
        "input_png": input_png(record),
        "upload": {
            "content_type": record.upload.content_type,
            "size": record.upload.size,
            "sha256": record.upload.sha256,
            "stored": record.upload.kept,
        },
    }


def input_png(record: Record) -> str:
    """The 28x28 input the model saw, as base64 PNG: shows a person why an answer was wrong."""
    pixels = np.frombuffer(record.input_image, dtype=np.uint8).reshape(28, 28)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    return base64.b64encode(png.getvalue()).decode("ascii")
