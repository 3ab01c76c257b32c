"""The recognize use case: images in, recorded predictions out.

A request may carry an idempotency key, scoped to its caller (the API token's holder or
the client key): the store keeps a digest of the caller and the key, so another client
sending the same key gets nothing of the first one's and cannot block it. Its first
attempt claims the key in the prediction store together with a digest of the request and
the record ids it will write; a retry finds that claim and either returns those records
(when they were written) or predicts again into the same ids, so no retry, however timed,
records twice. An attempt that finds the key claimed by another one still at work waits
for its records (up to `claim_wait_seconds`) instead of asking the model again, and
every answer to a keyed request is the records as the store holds them after the write,
so two answers for one id never disagree.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from recognizer import preprocess
from recognizer.budget import DecodeBudget
from recognizer.canary import Route
from recognizer.coalesce import Coalescer
from recognizer.model_client import ModelAnswer, ModelClient, ModelUnavailable, UnknownModel
from recognizer.records import (
    IdempotencyClaim,
    PredictionStore,
    Record,
    StoreUnavailable,
    Upload,
    new_record_id,
    time_of,
)
from recognizer.verdict import Shape, VerdictPolicy, judge, measure

__all__ = [
    "IdempotencyKeyReused",
    "InvalidIdempotencyKey",
    "Recognition",
    "Recognizer",
    "Route",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
U = TypeVar("U")
FALLBACK_WARNING_SECONDS = 60.0
CLAIM_POLL_SECONDS = 0.02
# How long an attempt that finds its key held by another waits for that one's records,
# counted from when the other claimed it: past it, the other is taken to have died.
CLAIM_WAIT_SECONDS = 10.0
_ABANDONED_KEPT = 1024  # keys whose attempt failed in this process, remembered
# A request of more images than this is decoded and preprocessed this many at a time, each
# chunk's model call made while the next one decodes (the model server works on another
# core meanwhile), when it has no idempotency key (a keyed one asks only after its claim).
PIPELINE_CHUNK = 16
IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")  # printable ASCII, as headers carry it


class InvalidIdempotencyKey(ValueError):
    """The idempotency key is not 1-255 printable ASCII characters."""


class IdempotencyKeyReused(Exception):
    """The idempotency key already stands for a different request (other images or pin)."""


@dataclass(frozen=True)
class Recognition:
    records: list[Record]
    timings_ms: dict[str, float]  # decode, preprocess, claim, model, store: where the time went
    replayed: bool = False  # the records of an earlier attempt with the same key; none new


@dataclass(frozen=True)
class _Who:
    """Who asked, as the record keeps it: the caller, and whether it pinned the version."""

    client_key: str | None
    pinned: bool


class _StageClock:
    """Milliseconds spent in each stage of one request, for the request log."""

    def __init__(self) -> None:
        self._started = self._last = time.perf_counter()
        self.laps_ms: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps_ms[stage] = (now - self._last) * 1000
        self._last = now

    def total_ms(self) -> float:
        return (time.perf_counter() - self._started) * 1000


class Recognizer:
    def __init__(
        self,
        model: ModelClient,
        store: PredictionStore,
        model_name: str,
        max_image_pixels: int,
        max_request_pixels: int,
        upload_store_max_bytes: int,
        decode_budget: DecodeBudget | None = None,
        decode_cpu_seconds: float | None = None,
        verdict_policy: VerdictPolicy | None = None,
        claim_wait_seconds: float = CLAIM_WAIT_SECONDS,
        coalesce_window_seconds: float = 0.0,
        max_batch_images: int = 64,
    ) -> None:
        self._model = model
        self._store = store
        self._model_name = model_name
        self._max_pixels = max_image_pixels
        self._max_request_pixels = max_request_pixels
        self._upload_cap = upload_store_max_bytes
        self._budget = decode_budget
        self._cpu_seconds = decode_cpu_seconds
        self._policy = verdict_policy or VerdictPolicy()
        self._claim_wait = claim_wait_seconds
        # Keys whose attempt failed here: a retry in this process need not wait for it.
        self._abandoned: dict[str, None] = {}
        self._abandoned_lock = threading.Lock()
        self._fallback_lock = threading.Lock()
        self._fallbacks = 0
        self._fallback_warned = -math.inf
        # Requests ready together share one :predict per route and one durable write
        # (coalesce.py); a window of 0 makes each its own call, as before.
        self._models: Coalescer[Route, np.ndarray, ModelAnswer] = Coalescer(
            self._ask_together, coalesce_window_seconds, max_batch_images, len
        )
        self._saves: Coalescer[None, Sequence[Record], None] = Coalescer(
            self._save_together, coalesce_window_seconds, max_batch_images, len
        )
        self._chunk_calls = ThreadPoolExecutor(4, thread_name_prefix="chunk-model-call")

    def recognize(
        self,
        images: Sequence[bytes],
        route: Route,
        idempotency_key: str | None = None,
        caller: str = "",
        pinned: bool = False,
    ) -> Recognition:
        """Predict a digit for each image and record every prediction before returning.

        With an `idempotency_key`, a retry of the same request records nothing new and
        gets the same record ids. Raises InvalidIdempotencyKey or IdempotencyKeyReused for
        a key that cannot be used, an ImageError for an unusable image (naming which one),
        a ModelServerError when no prediction could be had, StoreUnavailable when it could
        not be recorded. `caller` scopes the key (params.caller); each record keeps it, and
        whether the request `pinned` its version or label, as evidence the analysis weighs.
        """
        with self._models.expect(route), self._saves.expect(None):
            return self._recognize(images, route, idempotency_key, caller, pinned)

    def _recognize(
        self,
        images: Sequence[bytes],
        route: Route,
        idempotency_key: str | None,
        caller: str,
        pinned: bool,
    ) -> Recognition:
        who = _Who(caller or None, pinned)
        key_sha256 = None if idempotency_key is None else _key_digest(idempotency_key, caller)
        clock = _StageClock()
        # Each file is parsed once: its header is read (and checked) on opening, and the
        # same opened file is decoded, after the whole batch's headers passed.
        deadline = (
            None if self._cpu_seconds is None else preprocess.DecodeDeadline(self._cpu_seconds)
        )
        most = None if self._budget is None else self._budget.total_bytes
        opened = _each(
            images, lambda image: preprocess.open_image(image, self._max_pixels, most, deadline)
        )
        headers = [image.header for image in opened]
        self._check_request_pixels(headers)
        record_ids = tuple(new_record_id() for _ in images)
        if key_sha256 is None and len(opened) > PIPELINE_CHUNK:
            inputs, shapes, calls = self._in_chunks(opened, route, deadline, clock)
            return self._predict(
                images, route, record_ids, None, headers, inputs, shapes, clock, who, calls
            )
        decoded = _each(opened, lambda image: self._decode(image, deadline))
        clock.lap("decode")
        inks = _each(decoded, preprocess.ink_map)  # a blank image is named by its position
        inputs = np.stack([preprocess.to_field(ink) for ink in inks])
        shapes = [measure(ink, self._policy) for ink in inks]
        if deadline is not None:
            deadline.check()
        clock.lap("preprocess")
        if key_sha256 is None:
            return self._predict(
                images, route, record_ids, None, headers, inputs, shapes, clock, who
            )
        record_ids, earlier = self._claim(key_sha256, images, route, record_ids)
        clock.lap("claim")
        if earlier is not None:
            return Recognition(earlier, clock.laps_ms, replayed=True)
        try:
            recognition = self._predict(
                images, route, record_ids, key_sha256, headers, inputs, shapes, clock, who
            )
        except BaseException:
            with self._abandoned_lock:
                self._abandoned[key_sha256] = None
                while len(self._abandoned) > _ABANDONED_KEPT:
                    del self._abandoned[next(iter(self._abandoned))]
            raise
        with self._abandoned_lock:
            self._abandoned.pop(key_sha256, None)
        return recognition

    def _predict(
        self,
        images: Sequence[bytes],
        route: Route,
        record_ids: tuple[uuid.UUID, ...],
        key_sha256: str | None,
        headers: Sequence[preprocess.Header],
        inputs: np.ndarray,
        shapes: Sequence[Shape],
        clock: _StageClock,
        who: _Who,
        calls: Sequence[Future[ModelAnswer]] = (),
    ) -> Recognition:
        """Ask the model (or take the answers of the chunks' `calls`) and record its
        answers under `record_ids`."""
        try:
            if calls:
                answer = self._joined(calls, route, inputs)
            else:
                answer = self._models.submit(route, inputs)
        except UnknownModel:
            # A refusal (404): nothing was recorded, so the key must not stay held for a
            # request that never happened; the client may fix the pin and use it again.
            if key_sha256 is not None:
                self._release(key_sha256, _request_digest(images, route), record_ids)
            raise
        clock.lap("model")
        latency_ms = clock.total_ms()
        records = [
            self._record(
                record_ids[n], image, headers[n], inputs[n], shapes[n], answer, n, latency_ms, who
            )
            for n, image in enumerate(images)
        ]
        self._saves.submit(None, records)
        if key_sha256 is not None:
            # Another attempt with this key may have written these ids first: answer with
            # what the store holds, never with a prediction it did not keep.
            stored = [self._store.get(record.id) for record in records]
            records = [kept or mine for kept, mine in zip(stored, records, strict=True)]
        clock.lap("store")
        return Recognition(records, clock.laps_ms)

    def _in_chunks(
        self,
        opened: Sequence[preprocess.Opened],
        route: Route,
        deadline: preprocess.DecodeDeadline | None,
        clock: _StageClock,
    ) -> tuple[np.ndarray, list[Shape], list[Future[ModelAnswer]]]:
        """Decode and preprocess PIPELINE_CHUNK images at a time; each chunk's model call
        goes out (on its own thread, in this request's log context) as the next decodes."""
        fields: list[np.ndarray] = []
        shapes: list[Shape] = []
        calls: list[Future[ModelAnswer]] = []
        self._models.leave(route)  # the chunks' threads ask, not this one
        try:
            for start in range(0, len(opened), PIPELINE_CHUNK):
                chunk = opened[start : start + PIPELINE_CHUNK]
                decoded = _each(chunk, lambda image: self._decode(image, deadline), start)
                inks = _each(decoded, preprocess.ink_map, start)
                part = np.stack([preprocess.to_field(ink) for ink in inks])
                shapes += [measure(ink, self._policy) for ink in inks]
                fields.append(part)
                context = contextvars.copy_context()
                calls.append(
                    self._chunk_calls.submit(context.run, self._models.submit, route, part)
                )
            if deadline is not None:
                deadline.check()
        except BaseException:
            for call in calls:
                call.cancel()
            raise
        clock.lap("decode")
        return np.concatenate(fields), shapes, calls

    def _joined(
        self, calls: Sequence[Future[ModelAnswer]], route: Route, inputs: np.ndarray
    ) -> ModelAnswer:
        """The chunks' answers as one; should the label have moved between them, one call
        for all, so a request's records never mix two versions."""
        answers = [call.result() for call in calls]  # the first failure is the request's
        if len({(answer.version, answer.label) for answer in answers}) > 1:
            return self._models.submit(route, inputs)
        return ModelAnswer(
            np.concatenate([answer.probabilities for answer in answers]),
            np.concatenate([answer.digits for answer in answers]),
            answers[0].version,
            answers[0].label,
        )

    def _claim(
        self,
        key_sha256: str,
        images: Sequence[bytes],
        route: Route,
        record_ids: tuple[uuid.UUID, ...],
    ) -> tuple[tuple[uuid.UUID, ...], list[Record] | None]:
        """The record ids this key stands for, and their records if an earlier attempt
        wrote them all (None otherwise: predict again, into the same ids)."""
        request = _request_digest(images, route)
        claim = self._store.claim(key_sha256, IdempotencyClaim(request, record_ids))
        if claim.request_sha256 != request:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was already used for a different request; "
                "use a new key for new images"
            )
        if claim.record_ids == record_ids:
            return record_ids, None  # ours: nothing was written yet
        # Another attempt holds the key: wait for its records rather than ask the model
        # again (a second answer could differ), unless it failed here or had its time.
        claimed_at = time_of(claim.record_ids[0]).timestamp()
        while True:
            earlier = [self._store.get(record_id) for record_id in claim.record_ids]
            found = [record for record in earlier if record is not None]
            if len(found) == len(earlier):
                return claim.record_ids, found
            with self._abandoned_lock:
                abandoned = key_sha256 in self._abandoned
            if abandoned or time.time() >= claimed_at + self._claim_wait:
                return claim.record_ids, None
            time.sleep(CLAIM_POLL_SECONDS)

    def _decode(
        self, opened: preprocess.Opened, deadline: preprocess.DecodeDeadline | None
    ) -> object:
        """Decode within the process's memory budget and the request's CPU time."""
        if self._budget is None:
            return preprocess.decode_opened(opened)
        with self._budget.hold(opened.decode_bytes):
            image = preprocess.decode_opened(opened)
        if deadline is not None:
            deadline.check()
        return image

    def _release(self, key_sha256: str, request: str, record_ids: tuple[uuid.UUID, ...]) -> None:
        """Give the key back; if that fails, the client still gets its 4xx (and the key
        expires with the window, as before)."""
        try:
            self._store.release(key_sha256, IdempotencyClaim(request, record_ids))
        except StoreUnavailable as error:
            log.warning("could not release an idempotency key: %s", error)

    def _ask_together(self, route: Route, inputs: Sequence[np.ndarray]) -> list[ModelAnswer]:
        """One model call for the inputs of requests with the same route; each gets its rows."""
        if len(inputs) == 1:
            return [self._ask(inputs[0], route)]
        answer = self._ask(np.concatenate(inputs), route)
        ends = np.cumsum([len(rows) for rows in inputs])
        return [
            ModelAnswer(
                answer.probabilities[end - len(rows) : end],
                answer.digits[end - len(rows) : end],
                answer.version,
                answer.label,
            )
            for rows, end in zip(inputs, ends, strict=True)
        ]

    def _save_together(self, _: None, records: Sequence[Sequence[Record]]) -> list[None]:
        """One durable write (one SQLite transaction and fsync; Cassandra's writes awaited
        together) for the records of requests ready together: none is answered before it."""
        self._store.save([record for each in records for record in each])
        return [None] * len(records)

    def _ask(self, inputs: np.ndarray, route: Route) -> ModelAnswer:
        """The model's answer; a canary that cannot answer hands the request to its fallback.

        The answer (and so the record) then carries the fallback's label and version: the
        label names what actually routed the request, so per-label and per-version figures
        in the store never mix one version's answers into another's. A timeout does not fall
        back: a second call would double the wait the client already had.
        """
        if route.version is not None:
            return self._model.predict_version(inputs, route.version)
        try:
            return self._model.predict_label(inputs, route.label)
        except (UnknownModel, ModelUnavailable) as error:
            if route.fallback is None:
                raise
            self._note_fallback(route, error)
            return self._model.predict_label(inputs, route.fallback)

    def _note_fallback(self, route: Route, error: Exception) -> None:
        """Warn at most once a minute: a missing canary would otherwise log every request."""
        with self._fallback_lock:
            self._fallbacks += 1
            now = time.monotonic()
            if now - self._fallback_warned < FALLBACK_WARNING_SECONDS:
                return
            count, self._fallbacks, self._fallback_warned = self._fallbacks, 0, now
        log.warning(
            "label %r cannot answer (%s); answered with %r instead (%d request(s) since the "
            "last warning)",
            route.label,
            error,
            route.fallback,
            count,
        )

    def _check_request_pixels(self, headers: Sequence[preprocess.Header]) -> None:
        """Decoding costs memory and CPU by the pixel: bound a whole batch, from its headers."""
        pixels = sum(header.pixels for header in headers)
        if pixels > self._max_request_pixels:
            raise preprocess.ImageTooLarge(
                f"the {len(headers)} images hold {pixels:,} pixels in all; the limit per "
                f"request is {self._max_request_pixels:,}: send them in smaller batches"
            )

    def _record(
        self,
        record_id: uuid.UUID,
        image: bytes,
        header: preprocess.Header,
        pixels: np.ndarray,
        shape: Shape,
        answer: ModelAnswer,
        n: int,
        latency_ms: float,
        who: _Who,
    ) -> Record:
        probabilities = tuple(float(p) for p in answer.probabilities[n])
        verdict = judge(answer.probabilities[n], shape, self._policy, answer.version)
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
                content_type=header.mime_type,
                sha256=hashlib.sha256(image).hexdigest(),
                size=len(image),
            ),
            latency_ms=latency_ms,
            verdict=verdict,
            client_key=who.client_key,
            pinned=who.pinned,
        )


def _key_digest(key: str, caller: str) -> str:
    """What the store keeps of a key: the SHA-256 of its caller and the key, so one caller's
    key is not another's and the store never holds a client's secret."""
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidIdempotencyKey("Idempotency-Key must be 1-255 printable ASCII characters")
    scoped = hashlib.sha256(caller.encode("utf-8"))
    scoped.update(b"\0" + key.encode("ascii"))
    return scoped.hexdigest()


def _request_digest(images: Sequence[bytes], route: Route) -> str:
    """What a retry must repeat to reuse its key: the images, in order, and the pin.

    An unpinned request counts as asking for the label it falls back to, so a retry is
    not refused because its client landed in (or out of) the canary between attempts.
    """
    if route.version is not None:
        pin = f"version={route.version}"
    else:
        pin = f"label={route.fallback or route.label}"
    digest = hashlib.sha256(pin.encode())
    for image in images:
        digest.update(len(image).to_bytes(8, "big"))
        digest.update(image)
    return digest.hexdigest()


def _each(images: Sequence[U], step: Callable[[U], T], first: int = 0) -> list[T]:
    """`step` of every image; in a batch, an ImageError says which image it was (counting
    from `first`, the position of `images[0]` in a chunked request)."""
    results = []
    for position, image in enumerate(images):
        try:
            results.append(step(image))
        except preprocess.ImageError as error:
            if len(images) == 1 and first == 0:
                raise
            raise type(error)(f"image {first + position + 1}: {error}") from None
    return results
