"""The recognize use case: images in, recorded predictions out."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from recognizer import preprocess
from recognizer.model_client import ModelAnswer, ModelClient
from recognizer.records import PredictionLog, Record, Upload, new_record_id, time_of


@dataclass(frozen=True)
class Route:
    """Which model answers: a pinned version, else the version a label points at."""

    label: str
    version: int | None = None


class Recognizer:
    def __init__(
        self,
        model: ModelClient,
        log: PredictionLog,
        model_name: str,
        max_image_pixels: int,
        upload_store_max_bytes: int,
    ) -> None:
        self._model = model
        self._log = log
        self._model_name = model_name
        self._max_pixels = max_image_pixels
        self._upload_cap = upload_store_max_bytes

    def recognize(self, images: Sequence[bytes], route: Route) -> list[Record]:
        """Predict a digit for each image and record every prediction before returning.

        Raises an ImageError for an unusable image (naming which one), a ModelServerError
        when no prediction could be had, StoreUnavailable when it could not be recorded.
        """
        started = time.perf_counter()
        inputs = np.stack([self._prepare(image, n, len(images)) for n, image in enumerate(images)])
        if route.version is not None:
            answer = self._model.predict_version(inputs, route.version)
        else:
            answer = self._model.predict_label(inputs, route.label)
        latency_ms = (time.perf_counter() - started) * 1000
        records = [
            self._record(image, inputs[n], answer, n, latency_ms) for n, image in enumerate(images)
        ]
        self._log.save(records)
        return records

    def _prepare(self, image: bytes, position: int, count: int) -> np.ndarray:
        try:
            return preprocess.to_mnist(image, self._max_pixels)
        except preprocess.ImageError as error:
            if count == 1:
                raise
            raise type(error)(f"image {position + 1}: {error}") from None

    def _record(
        self, image: bytes, pixels: np.ndarray, answer: ModelAnswer, n: int, latency_ms: float
    ) -> Record:
        record_id = new_record_id()
        probabilities = tuple(float(p) for p in answer.probabilities[n])
        return Record(
            id=record_id,
            created_at=time_of(record_id),
            digit=int(answer.digits[n]),
            confidence=max(probabilities),
            probabilities=probabilities,
            model_name=self._model_name,
            model_version=answer.version,
            model_label=answer.label,
            input_image=pixels.tobytes(),
            upload=Upload(
                content=image if len(image) <= self._upload_cap else None,
                content_type=_content_type(image),
                sha256=hashlib.sha256(image).hexdigest(),
                size=len(image),
            ),
            latency_ms=latency_ms,
        )


def _content_type(image: bytes) -> str:
    """The MIME type of the decoded format: what we store and serve, not what the client said."""
    with Image.open(io.BytesIO(image)) as opened:
        return Image.MIME.get(opened.format or "", "application/octet-stream")
