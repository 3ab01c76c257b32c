"""The obvious alternative the function is measured against: TensorFlow in the web process.

What the seed app did, kept deliberately plain: a Flask app that loads TensorFlow and
the v2 SavedModel at import, resizes and inverts each upload (imagesets/seed_style.py's
`seed_style`), predicts in-process and records to SQLite (WAL, synchronous=FULL, one
connection per thread, as the function's log does). Same endpoints where they matter:
`GET /healthz` and `POST /predict` with the raw image bytes.

Run it under gunicorn with the function's worker and thread settings, e.g.
`gunicorn --workers 1 --threads 8 --bind 127.0.0.1:8090 bench.baseline.app:app`.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from pathlib import Path

import flask
import numpy as np
import tensorflow as tf
from PIL import Image

from recognizer import contract

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = Path(os.environ.get("BASELINE_MODEL_DIR", ROOT / "models" / "mnist" / "2"))
SQLITE_PATH = Path(
    os.environ.get("SQLITE_PATH", Path(tempfile.gettempdir()) / "baseline-predictions.sqlite3")
)

app = flask.Flask(__name__)
model = tf.saved_model.load(str(MODEL_DIR))
serve = model.signatures[contract.SIGNATURE]
_local = threading.local()
_schema_lock = threading.Lock()


def _db() -> sqlite3.Connection:
    """This thread's connection; the first one creates the table."""
    connection = getattr(_local, "connection", None)
    if connection is None:
        connection = sqlite3.connect(SQLITE_PATH, timeout=5, isolation_level="IMMEDIATE")
        connection.execute("PRAGMA synchronous=FULL")
        with _schema_lock:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS predictions (id TEXT PRIMARY KEY, created_at_ms "
                "INTEGER, digit INTEGER, confidence REAL, probabilities TEXT, upload BLOB)"
            )
        _local.connection = connection
    return connection


def seed_style(data: bytes) -> np.ndarray:
    """Resize to 28x28, grayscale, invert: what the original seed app did to every upload."""
    image = Image.open(io.BytesIO(data)).convert("L").resize((28, 28))
    return 255 - np.asarray(image, dtype=np.uint8)


@app.get("/healthz")
def healthz() -> flask.Response:
    return flask.jsonify(status="ok")


@app.post("/predict")
def predict() -> flask.Response:
    data = flask.request.get_data()
    try:
        pixels = seed_style(data)
    except OSError:
        return flask.jsonify(error={"code": "not_an_image", "message": "not an image"}), 400
    outputs = serve(**{contract.IMAGE: tf.constant(pixels[np.newaxis])})
    probabilities = outputs[contract.PROBABILITIES].numpy()[0].tolist()
    digit = int(outputs[contract.DIGIT].numpy()[0])
    record_id = str(uuid.uuid4())
    with _db() as connection:
        connection.execute(
            "INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?)",
            (record_id, int(time.time() * 1000), digit, max(probabilities),
             json.dumps(probabilities), data),
        )  # fmt: skip
    prediction = {
        "id": record_id,
        "digit": digit,
        "confidence": max(probabilities),
        "probabilities": probabilities,
        "model": {"name": contract.MODEL_NAME, "version": 2, "label": None},
    }
    return flask.jsonify(predictions=[prediction], recorded=True)
