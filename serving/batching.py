"""Server-side batching, like tensorflow_model_server's --enable_batching.

Concurrent :predict requests for the same version and signature are merged into one
model call: a batch closes when it holds max_batch_size examples or when its oldest
request has waited batch_timeout_micros, and num_batch_threads batches run at once.
One call on 64 images costs little more than one on a single image, so under
concurrency this trades a bounded wait for far fewer calls. Parameters come from the
same BatchingParameters text proto TF Serving reads (serving/batching.config).

With batch_timeout_micros 0 a request that finds the queue empty and a batch thread
free is run on its own thread: that is the batch a batch thread would form at once, and
the two thread hand-offs cost more than the model on a small graph (docs/performance.md).
A large one (at least MIN_SPLIT_ROWS rows per part) is split over the free batch threads
and its outputs joined, as TF Serving's large batch splitting runs one task as several
batches; like batching itself, that takes each row of a batch to be computed on its own.
If a part fails, the whole request runs again unsplit, so an error names its real shape.

As in TF Serving, a request larger than max_batch_size is refused, a full queue
answers UNAVAILABLE, and a request whose inputs disagree on the batch dimension runs
alone (the signature then judges it).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from serving import protos
from serving.errors import ConfigError, ServingError, from_exception, invalid_argument
from serving.servable import Servable

log = logging.getLogger(__name__)

Arrays = Mapping[str, np.ndarray]
QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"
MIN_SPLIT_ROWS = 8  # a request is split over free batch threads only into parts this large


@dataclass(frozen=True)
class BatchingOptions:
    """BatchingParameters; the defaults are BasicBatchScheduler's (used without a file)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1

    @classmethod
    def from_file(cls, path: Path | None) -> BatchingOptions:
        """Read a BatchingParameters text proto; None means the defaults. Raises ConfigError."""
        if path is None:
            return cls()
        try:
            proto = protos.parse_batching_parameters(path.read_text(encoding="utf-8"))
        except (OSError, text_format.ParseError) as exc:
            raise ConfigError(
                "INVALID_ARGUMENT", f"Invalid batching parameters {path}: {exc}"
            ) from exc
        default = cls()
        options = cls(
            max_batch_size=_value(proto, "max_batch_size", default.max_batch_size),
            batch_timeout_micros=_value(
                proto, "batch_timeout_micros", default.batch_timeout_micros
            ),
            max_enqueued_batches=_value(
                proto, "max_enqueued_batches", default.max_enqueued_batches
            ),
            num_batch_threads=_value(proto, "num_batch_threads", default.num_batch_threads),
        )
        if min(options.max_batch_size, options.max_enqueued_batches, options.num_batch_threads) < 1:
            raise ConfigError(
                "INVALID_ARGUMENT",
                f"Invalid batching parameters {path}: sizes and thread counts must be positive",
            )
        if options.batch_timeout_micros < 0:
            raise ConfigError(
                "INVALID_ARGUMENT", f"Invalid batching parameters {path}: negative timeout"
            )
        return options


def _value(proto: object, name: str, default: int) -> int:
    return int(getattr(proto, name).value) if proto.HasField(name) else default  # type: ignore[attr-defined]


@dataclass
class _Task:
    servable: Servable
    signature: str
    inputs: Arrays
    size: int
    key: tuple[object, ...]
    enqueued: float
    result: Future[dict[str, np.ndarray]]


class Batcher:
    """Merges concurrent runs of the same servable and signature into batched runs."""

    def __init__(self, options: BatchingOptions) -> None:
        self.options = options
        self._timeout = options.batch_timeout_micros / 1e6
        self._capacity = options.max_batch_size * options.max_enqueued_batches
        self._pending: deque[_Task] = deque()
        self._queued = 0  # examples waiting in _pending
        self._changed = threading.Condition()
        self._forming = threading.Lock()  # one thread gathers a batch while others run theirs
        self._running = 0  # batches running, on batch threads or in place (guarded by _changed)
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"batch-thread-{n}", daemon=True)
            for n in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()
        # Runs the other parts of a large request split over free batch threads.
        self._helpers = ThreadPoolExecutor(
            max(1, options.num_batch_threads - 1), thread_name_prefix="batch-split"
        )

    def run(self, servable: Servable, signature_name: str, inputs: Arrays) -> dict[str, np.ndarray]:
        """servable.run(signature_name, inputs), merged with concurrent requests."""
        signature = servable.check_inputs(signature_name, inputs)
        size = _batch_size(inputs)
        if size is None:
            return servable.run(signature_name, inputs)
        if size > self.options.max_batch_size:
            raise invalid_argument(
                f"Task size {size} is larger than maximum input batch size "
                f"{self.options.max_batch_size}"
            )
        key = (
            id(servable),
            signature.name,
            tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in inputs.items())),
        )
        if self._timeout == 0:
            ways = self._claim_idle_threads(size)
            if ways:
                # Nothing queued, batch threads free and no waiting: the batch a batch
                # thread would form now is this request alone, so it runs here (sparing two
                # thread hand-offs), split over the free threads when it is large.
                try:
                    return self._run_in_place(servable, signature_name, inputs, size, ways)
                finally:
                    self._release_threads(ways)
        task = _Task(servable, signature.name, inputs, size, key, time.monotonic(), Future())
        with self._changed:
            if self._closed:
                raise ServingError("UNAVAILABLE", "The batch scheduler is shut down")
            if self._queued + size > self._capacity:
                raise ServingError(
                    "UNAVAILABLE",
                    "The batch scheduling queue to which this task was submitted is full",
                )
            self._pending.append(task)
            self._queued += size
            self._changed.notify_all()
        return task.result.result()

    def _claim_idle_threads(self, size: int) -> int:
        """Batch threads this request may use in place (0: queue it), counted as running."""
        with self._changed:
            free = self.options.num_batch_threads - self._running
            if self._closed or self._pending or free <= 0:
                return 0
            ways = max(1, min(free, size // MIN_SPLIT_ROWS))
            self._running += ways
            return ways

    def _release_threads(self, count: int = 1) -> None:
        with self._changed:
            self._running -= count
            self._changed.notify_all()

    def _run_in_place(
        self, servable: Servable, signature_name: str, inputs: Arrays, size: int, ways: int
    ) -> dict[str, np.ndarray]:
        """servable.run, on `ways` threads at once: rows split evenly, outputs joined."""
        if ways > 1:
            bounds = np.linspace(0, size, ways + 1).astype(int).tolist()
            parts = [
                {name: array[start:end] for name, array in inputs.items()}
                for start, end in itertools.pairwise(bounds)
            ]
            futures = [self._helpers.submit(servable.run, signature_name, p) for p in parts[1:]]
            try:
                outputs = [servable.run(signature_name, parts[0])]
                outputs += [future.result() for future in futures]
            except Exception:
                outputs = None  # the whole request again below: its error, not a part's
            finally:
                for future in futures:
                    future.exception()  # every part has finished before the threads are freed
            if outputs is not None and _each_has_rows(outputs, np.diff(bounds).tolist()):
                return {
                    name: np.concatenate([part[name] for part in outputs]) for name in outputs[0]
                }
        try:
            return servable.run(signature_name, inputs)
        except ServingError:
            raise
        except Exception as exc:
            raise from_exception(exc) from exc

    def close(self) -> None:
        """Finish the queued batches, then stop the batch threads."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join()
        self._helpers.shutdown(wait=True)

    def _work(self) -> None:
        while True:
            with self._forming:
                batch = self._next_batch()
            if batch is None:
                return
            try:
                _run_batch(batch)
            finally:
                self._release_threads()

    def _next_batch(self) -> list[_Task] | None:
        """Wait for a task, then for same-key tasks until the batch is full or times out."""
        with self._changed:
            # At most num_batch_threads batches run at once, requests run in place included.
            while not self._pending or self._running >= self.options.num_batch_threads:
                if self._closed and not self._pending:
                    return None
                self._changed.wait()
            first = self._pending[0]
            deadline = first.enqueued + self._timeout
            while True:
                remaining = deadline - time.monotonic()
                full = self._fitting(first.key)[1] >= self.options.max_batch_size
                if full or remaining <= 0 or self._closed:
                    self._running += 1
                    return self._take(first.key)
                self._changed.wait(remaining)

    def _fitting(self, key: tuple[object, ...]) -> tuple[list[_Task], int]:
        """The oldest queued tasks with this key that fit one batch, and their example count."""
        batch, size = [], 0
        for task in self._pending:
            if task.key == key and size + task.size <= self.options.max_batch_size:
                batch.append(task)
                size += task.size
        return batch, size

    def _take(self, key: tuple[object, ...]) -> list[_Task]:
        batch, size = self._fitting(key)
        taken = set(map(id, batch))
        self._pending = deque(task for task in self._pending if id(task) not in taken)
        self._queued -= size
        return batch


def _batch_size(inputs: Arrays) -> int | None:
    """The shared 0th dimension of every input, or None when they cannot be batched."""
    sizes = {array.shape[0] if array.ndim else None for array in inputs.values()}
    if len(sizes) != 1 or None in sizes:
        return None
    return sizes.pop()


def _each_has_rows(outputs: list[dict[str, np.ndarray]], rows: list[int]) -> bool:
    """Every output of every part has that part's rows along its first dimension."""
    return all(
        array.ndim > 0 and array.shape[0] == count
        for part, count in zip(outputs, rows, strict=True)
        for array in part.values()
    )


def _run_batch(batch: list[_Task]) -> None:
    """Run one merged call and hand each task its slice (or the shared error)."""
    first = batch[0]
    try:
        if len(batch) == 1:
            first.result.set_result(first.servable.run(first.signature, first.inputs))
            return
        merged = {
            name: np.concatenate([task.inputs[name] for task in batch]) for name in first.inputs
        }
        outputs = first.servable.run(first.signature, merged)
        total = sum(task.size for task in batch)
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != total:
                raise ServingError(
                    "INTERNAL", f"Batched output {name!r} does not have the batch dimension"
                )
        start = 0
        for task in batch:
            end = start + task.size
            task.result.set_result({name: array[start:end] for name, array in outputs.items()})
            start = end
    except Exception as exc:  # every waiting request must hear about it
        error = from_exception(exc)
        for task in batch:
            if not task.result.done():
                task.result.set_exception(error)
