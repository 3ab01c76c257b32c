"""Model versions on disk -> loaded servables, with TF Serving's lifecycle and label rules.

A version is a numeric directory holding saved_model.pb; anything else in the
base path (".tmp-3", "3.partial", a directory still being written) is ignored.
Aspired versions go START -> LOADING -> AVAILABLE in a background loader, a
failed load ends in END with its error, and versions the policy drops or that
vanish from disk are unloaded (END) -- but, like TF Serving's
AvailabilityPreservingPolicy, not before another aspired version is
AVAILABLE (unless nothing else is on its way).

Requests read an immutable table that is swapped whole under the lock, so the
hot path takes no lock.
"""

from __future__ import annotations

import enum
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from serving.config import ModelConfig
from serving.errors import ConfigError, ServingError, from_exception, invalid_argument, not_found
from serving.servable import SAVED_MODEL_FILE, Servable
from serving.warmup import run_warmup

log = logging.getLogger(__name__)

_VERSION_DIR = re.compile(r"[0-9]+")


class State(enum.Enum):
    """ModelVersionStatus.State of get_model_status.proto."""

    START = "START"
    LOADING = "LOADING"
    AVAILABLE = "AVAILABLE"
    UNLOADING = "UNLOADING"
    END = "END"


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: State
    error_code: str = "OK"
    error_message: str = ""


Loader = Callable[[str, int, Path], Servable]


def load_with_warmup(name: str, version: int, path: Path) -> Servable:
    """Default loader: load the SavedModel, then replay its warmup requests."""
    servable = Servable(name, version, path)
    run_warmup(servable)
    return servable


def scan_versions(base_path: Path) -> dict[int, Path]:
    """Complete version directories under a base path: {version: directory}."""
    try:
        entries = sorted(base_path.iterdir())
    except OSError:
        return {}
    found: dict[int, Path] = {}
    for entry in entries:
        if _VERSION_DIR.fullmatch(entry.name) and (entry / SAVED_MODEL_FILE).is_file():
            found.setdefault(int(entry.name), entry)
    return found


def _base_path_problem(model: ModelConfig, found: Mapping[int, Path]) -> str | None:
    if not model.base_path.is_dir():
        return f"Base path {model.base_path} of model {model.name} does not exist"
    if not found:
        return f"No versions of servable {model.name} found under base path {model.base_path}"
    return None


def _servable_id(name: str, version: int) -> str:
    return f"{{name: {name} version: {version}}}"


class ModelRepository:
    """The served models: config, version states, labels and loaded servables."""

    def __init__(
        self,
        *,
        allow_version_labels_for_unavailable_models: bool = False,
        loader: Loader = load_with_warmup,
    ) -> None:
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._loader = loader
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._models: dict[str, ModelConfig] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._states: dict[str, dict[int, VersionStatus]] = {}
        self._aspired: dict[str, dict[int, Path]] = {}
        self._table: dict[str, dict[int, Servable]] = {}
        self._queue: queue.Queue[tuple[str, int, Path] | None] = queue.Queue()
        self._closed = False
        self._reported: dict[str, str | None] = {}
        self._thread = threading.Thread(target=self._load_loop, name="model-loader", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- config
    def apply_config(self, models: Iterable[ModelConfig]) -> None:
        """Replace the whole model config, or reject it whole with a ConfigError."""
        models = tuple(models)
        with self._lock:
            labels = self._checked_labels(models)
            self._models = {model.name: model for model in models}
            self._labels = labels
        self.poll_filesystem()

    def apply_models_first(self, models: Iterable[ModelConfig]) -> None:
        """Apply the models' version policies now, and of their labels only those that
        point at an AVAILABLE version (else a label keeps its current version while that
        one is AVAILABLE): the first of two steps; apply_config, once the loads settle,
        is the second."""
        models = tuple(models)
        with self._lock:
            labels: dict[str, dict[str, int]] = {}
            for model in models:
                states = self._states.get(model.name, {})
                current = self._labels.get(model.name, {})
                for label, version in model.labels.items():
                    for candidate in (version, current.get(label)):
                        status = states.get(candidate) if candidate is not None else None
                        if status is not None and status.state is State.AVAILABLE:
                            labels.setdefault(model.name, {})[label] = candidate
                            break
            self._models = {model.name: model for model in models}
            self._labels = labels
        self.poll_filesystem()

    def _checked_labels(self, models: tuple[ModelConfig, ...]) -> dict[str, dict[str, int]]:
        # ServerCore::UpdateModelVersionLabelMap: a label may only point at an AVAILABLE
        # version; the flag relaxes that for new labels (or labels that do not move).
        labels: dict[str, dict[str, int]] = {}
        for model in models:
            states = self._states.get(model.name, {})
            current = self._labels.get(model.name, {})
            for label, version in model.labels.items():
                allowed = self._allow_unavailable_labels and current.get(label, version) == version
                status = states.get(version)
                if not allowed and (status is None or status.state is not State.AVAILABLE):
                    raise ConfigError(
                        "FAILED_PRECONDITION",
                        f"Request to assign label to version {version} of model {model.name}, "
                        "which is not currently available for inference",
                    )
                labels.setdefault(model.name, {})[label] = version
        return labels

    @property
    def models(self) -> Mapping[str, ModelConfig]:
        return dict(self._models)

    @property
    def labels(self) -> Mapping[str, Mapping[str, int]]:
        return {name: dict(labels) for name, labels in self._labels.items()}

    # ------------------------------------------------------------- versions
    def poll_filesystem(self) -> None:
        """Scan every base path once and reconcile aspired versions with loaded ones."""
        with self._lock:
            models = dict(self._models)
        on_disk = {name: scan_versions(model.base_path) for name, model in models.items()}
        problems = {
            name: _base_path_problem(model, on_disk[name]) for name, model in models.items()
        }
        with self._lock:
            if self._closed:
                return
            for name in set(self._aspired) | set(self._models):
                model = self._models.get(name)
                if model is None:
                    self._set_aspired(name, {})
                elif models.get(name) is model:
                    if problems[name] and self._reported.get(name) != problems[name]:
                        log.warning("%s", problems[name])
                    self._reported[name] = problems[name]
                    selected = model.policy.select(on_disk[name])
                    self._set_aspired(name, {v: on_disk[name][v] for v in selected})

    def _set_aspired(self, name: str, aspired: dict[int, Path]) -> None:
        previous = self._aspired.get(name, {})
        self._aspired[name] = aspired
        states = self._states.setdefault(name, {})
        for version in sorted(set(aspired) - set(previous)):
            status = states.get(version)
            if status is None or status.state is State.END:
                self._set_state(name, version, State.START)
                self._queue.put((name, version, aspired[version]))
        self._unload_unaspired(name)

    def _unload_unaspired(self, name: str) -> None:
        aspired = self._aspired.get(name, {})
        states = self._states.get(name, {})
        aspired_states = [states[v].state for v in aspired if v in states]
        can_unload = State.AVAILABLE in aspired_states or not (
            State.START in aspired_states or State.LOADING in aspired_states
        )
        for version, status in list(states.items()):
            if version in aspired:
                continue
            if status.state is State.START:
                self._set_state(name, version, State.END)
            elif status.state is State.AVAILABLE and can_unload:
                self._unload(name, version)

    def _unload(self, name: str, version: int) -> None:
        log.info("Unloading servable version %s", _servable_id(name, version))
        self._set_state(name, version, State.UNLOADING)
        table = dict(self._table)
        versions = dict(table.get(name, {}))
        versions.pop(version, None)
        if versions:
            table[name] = versions
        else:
            table.pop(name, None)
        self._table = table
        self._set_state(name, version, State.END)
        log.info("Done unloading servable version %s", _servable_id(name, version))

    def _set_state(
        self, name: str, version: int, state: State, error: ServingError | None = None
    ) -> None:
        status = VersionStatus(version, state)
        if error is not None:
            status = VersionStatus(version, state, error.code, error.message)
        self._states.setdefault(name, {})[version] = status
        self._changed.notify_all()

    def _load_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            name, version, path = item
            with self._lock:
                status = self._states.get(name, {}).get(version)
                if status is None or status.state is not State.START:
                    continue
                if self._closed or version not in self._aspired.get(name, {}):
                    self._set_state(name, version, State.END)
                    continue
                self._set_state(name, version, State.LOADING)
            self._load(name, version, path)

    def _load(self, name: str, version: int, path: Path) -> None:
        log.info("Loading servable version %s from %s", _servable_id(name, version), path)
        started = time.monotonic()
        servable, error = None, None
        try:
            servable = self._loader(name, version, path)
        except Exception as exc:
            error = from_exception(exc)
        with self._lock:
            if error is not None:
                log.error(
                    "Loading servable version %s failed: %s", _servable_id(name, version), error
                )
                self._set_state(name, version, State.END, error)
            elif self._closed or version not in self._aspired.get(name, {}):
                self._set_state(name, version, State.END)
            else:
                table = dict(self._table)
                table[name] = {**table.get(name, {}), version: servable}
                self._table = table
                self._set_state(name, version, State.AVAILABLE)
                log.info(
                    "Successfully loaded servable version %s in %.2fs",
                    _servable_id(name, version),
                    time.monotonic() - started,
                )
            self._unload_unaspired(name)

    def wait_until_settled(self, timeout: float | None = None) -> bool:
        """Block until no version is STARTing or LOADING; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def settled() -> bool:
            return not any(
                status.state in (State.START, State.LOADING)
                for states in self._states.values()
                for status in states.values()
            )

        with self._changed:
            while not settled():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    # ------------------------------------------------------------- requests
    def resolve_label(self, name: str, label: str) -> int:
        """The version a label points at, or TF Serving's 400 for an unknown label."""
        version = self._labels.get(name, {}).get(label)
        if version is None:
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        return version

    def servable(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable for a model spec: specific version, label, or latest AVAILABLE."""
        if label is not None:
            version = self.resolve_label(name, label)
        versions = self._table.get(name, {})
        if version is None:
            if not versions:
                raise not_found(f"Servable not found for request: Latest({name})")
            return versions[max(versions)]
        servable = versions.get(version)
        if servable is None:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return servable

    def status(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> list[VersionStatus]:
        """GetModelStatus: one version's state, or every known version's, newest first."""
        if label is not None:
            version = self.resolve_label(name, label)
        with self._lock:
            states = dict(self._states.get(name, {}))
        if version is not None:
            if version not in states:
                raise not_found(f"Could not find version {version} of model {name}")
            return [states[version]]
        if not states:
            raise not_found(f"Could not find any versions of model {name}")
        return [states[v] for v in sorted(states, reverse=True)]

    def status_or_empty(self, name: str) -> list[VersionStatus]:
        """Every known version of a model, newest first; [] when none is known."""
        with self._lock:
            states = dict(self._states.get(name, {}))
        return [states[v] for v in sorted(states, reverse=True)]

    def all_states(self) -> dict[str, list[VersionStatus]]:
        """Every known version of every model, for metrics."""
        with self._lock:
            return {name: list(states.values()) for name, states in self._states.items() if states}

    # -------------------------------------------------------------- shutdown
    def close(self) -> None:
        """Stop loading and drop every servable."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        self._thread.join()
        with self._lock:
            for name, versions in list(self._table.items()):
                for version in list(versions):
                    self._unload(name, version)
            for name, states in self._states.items():
                for version, status in states.items():
                    if status.state in (State.START, State.LOADING):
                        self._set_state(name, version, State.END)
