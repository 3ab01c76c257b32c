"""What the API answers: records rendered as the JSON of the contract (openapi.json)."""

from __future__ import annotations

import base64
import io
import json

import flask
import numpy as np
from PIL import Image

from recognizer.records import Record
from recognizer.verdict import Verdict


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> flask.Response:
    return flask.Response(
        json.dumps(body, separators=(",", ":")),
        status=status,
        mimetype="application/json",
        headers=headers,
    )


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
            "stored": record.upload.content is not None,
        },
    }


def input_png(record: Record) -> str:
    """The 28x28 input the model saw, as base64 PNG: shows a person why an answer was wrong."""
    pixels = np.frombuffer(record.input_image, dtype=np.uint8).reshape(28, 28)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    return base64.b64encode(png.getvalue()).decode("ascii")
