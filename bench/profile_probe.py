"""Inside a function worker, for bench.profile_stack only: the CPU each stage of a request uses.

Each stage's functions are wrapped with a timer of the thread's own CPU time
(`time.thread_time`: user and system time of this thread, whatever the GIL and the
scheduler do meanwhile), and each stage is charged its time minus that of the stages it
calls, so the stages add up to the CPU of the function's own code. What the worker spends
outside it (gunicorn, functions-framework, Flask and Werkzeug) is its process CPU time
less that sum, which bench.profile_stack reads from /proc.

`serve` loads the real function from its main.py, installs the timers, and answers
`GET /__profile__` with this worker's totals so far (through Flask, never through the
function: it is not counted). A stage whose function a version of the function does not
have is left out, so the same probe measures the code before and after a change.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import threading
import time
import types
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import flask

PATH = "/__profile__"
# (stage, "module:attribute[.attribute]"), named where the caller looks it up (the service
# imports verdict's functions by name); a stage may have several functions.
STAGES = [
    ("api: routing, checks, headers, log fields", "recognizer.api:Api.handle"),
    ("reading the upload", "recognizer.uploads:read_images"),
    ("response JSON", "recognizer.api:json_response"),
    ("decode (Pillow)", "recognizer.preprocess:open_image"),
    ("decode (Pillow)", "recognizer.service:Recognizer._decode"),
    ("preprocess (numpy)", "recognizer.preprocess:from_image"),
    ("preprocess (numpy)", "recognizer.preprocess:ink_map"),
    ("preprocess (numpy)", "recognizer.preprocess:to_field"),
    ("verdict (the ink's shape, the judgement)", "recognizer.service:measure"),
    ("verdict (the ink's shape, the judgement)", "recognizer.service:judge"),
    ("recognize: ids, batch, records", "recognizer.service:Recognizer.recognize"),
    ("recognize: ids, batch, records", "recognizer.service:Recognizer._record"),
    ("model client: label cache, arrays", "recognizer.model_client:ModelClient.predict_label"),
    ("model client: label cache, arrays", "recognizer.model_client:ModelClient.predict_version"),
    ("model client: JSON encode", "recognizer.model_client:predict_body"),
    ("model client: requests", "requests:Session.request"),
    ("model client: urllib3, http.client", "urllib3:HTTPConnectionPool.urlopen"),
    ("SQLite write: insert, commit", "recognizer.sqlite_store:SqliteStore.save"),
    ("SQLite write: rows", "recognizer.sqlite_store:_to_row"),
    ("SQLite write: file checks (os.stat)", "recognizer.sqlite_store:SqliteStore._moved"),
    ("request log: JSON line", "recognizer.request_log:line"),
    ("request log: write", "recognizer.request_log:emit"),
]
# The JSON module as the model client sees it (recognizer.model_client.json, or requests'
# complexjson before the client used urllib3): its dumps and loads are stages too.
JSON_USERS = ["recognizer.model_client:json", "requests.models:complexjson"]
JSON_STAGES = {"dumps": "model client: JSON encode", "loads": "model client: JSON decode"}
HANDLE = "recognizer.api:Api.handle"  # one call per request

_lock = threading.Lock()
_local = threading.local()
_cpu: defaultdict[str, float] = defaultdict(float)
_calls: defaultdict[str, int] = defaultdict(int)


def timed(stage: str, function: Callable) -> Callable:
    """`function`, charging its thread CPU time, less its timed callees', to `stage`."""

    @functools.wraps(function)
    def wrapper(*args: object, **kwargs: object) -> object:
        stack = _local.__dict__.setdefault("stack", [])
        stack.append(0.0)  # the time of the timed calls it makes
        started = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            elapsed = time.thread_time() - started
            inner = stack.pop()
            if stack:
                stack[-1] += elapsed
            with _lock:
                _cpu[stage] += elapsed - inner
                _calls[stage] += 1

    return wrapper


def install() -> dict[str, list[str]]:
    """Wrap every stage's function that exists; says which were wrapped and which not."""
    done: dict[str, list[str]] = {"timed": [], "absent": []}
    for stage, target in STAGES:
        owner, name = _resolve(target)
        if owner is None:
            done["absent"].append(target)
            continue
        setattr(owner, name, timed(stage, getattr(owner, name)))
        done["timed"].append(target)
    for target in JSON_USERS:
        owner, name = _resolve(target)
        if owner is None:
            done["absent"].append(target)
            continue
        real = getattr(owner, name)
        functions = {f: timed(stage, getattr(real, f)) for f, stage in JSON_STAGES.items()}
        setattr(owner, name, types.SimpleNamespace(**{**vars(real), **functions}))
        done["timed"].append(target)
    return done


def _resolve(target: str) -> tuple[object | None, str]:
    """The object holding the target's last attribute, or None if the code has none."""
    module_name, _, path = target.partition(":")
    *parents, name = path.split(".")
    if module_name.split(".")[0] not in sys.modules:  # requests only where the code used it
        return None, name
    owner: object = importlib.import_module(module_name)
    for parent in parents:
        owner = getattr(owner, parent, None)
    return (owner, name) if owner is not None and hasattr(owner, name) else (None, name)


def snapshot() -> dict:
    """This worker's totals so far: CPU seconds and calls by stage, requests handled."""
    with _lock:
        cpu, calls = dict(_cpu), dict(_calls)
    handle_stage = next(stage for stage, target in STAGES if target == HANDLE)
    return {
        "pid": os.getpid(),
        "cpu_s": cpu,
        "calls": calls,
        "requests": calls.get(handle_stage, 0),
    }


def serve(main_py: Path) -> Callable[[flask.Request], flask.Response]:
    """The function's `recognize` from `main_py`, timed, answering PATH with a snapshot."""
    spec = importlib.util.spec_from_file_location("profiled_main", main_py)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    installed = install()
    recognize = module.recognize

    def profiled(request: flask.Request) -> flask.Response:
        if request.path == PATH:
            return flask.jsonify(snapshot() | installed)
        return recognize(request)

    return profiled
