"""Every replica of the model server, found and watched until each serves the new state.

All replicas poll one shared config, each on its own clock, so a change is only done
when every one of them reports it. Replicas are found anew on every check: in
Kubernetes the pods behind the headless Service (`dns://NAME:PORT` resolves to one
address per ready pod), locally the URLs given. A label moves only to a version every
replica reports AVAILABLE (TF Serving rejects the whole config otherwise, server_core.cc
UpdateModelVersionLabelMap), and a version is unloaded only after every replica has moved
its labels off it: `apply` waits for the whole fleet after each step.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from infra.rollout.errors import RolloutError
from infra.rollout.served import Served
from infra.rollout.server import ServerView
from recognizer.env import Reader

_REPLICAS = re.compile(r"dns://[^/\s,]+:\d+|https?://[^\s,]+(\s*,\s*https?://[^\s,]+)*")
Check = Callable[[ServerView], str | None]  # None when the replica serves the target


def replicas_setting(env: Mapping[str, str]) -> str:
    """MODEL_SERVER_REPLICAS: comma-separated REST URLs, or dns://HOST:PORT (every address
    HOST resolves to); empty means the one --server. SettingsError if malformed."""
    read = Reader(env)
    value = read.text("MODEL_SERVER_REPLICAS", "", _REPLICAS, "dns://HOST:PORT or URLs")
    read.check()
    return value


def discover(replicas: str, fallback: str) -> list[str]:
    """The REST URLs of every replica now; `fallback` (the --server URL) when none given."""
    if not replicas.strip():
        return [fallback.rstrip("/")]
    if replicas.startswith("dns://"):
        host, _, port = replicas.removeprefix("dns://").rstrip("/").rpartition(":")
        if not host or not port.isdigit():
            raise RolloutError(f"{replicas!r} is not dns://HOST:PORT")
        try:
            found = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise RolloutError(f"cannot resolve {host}: {error.strerror}") from None
        addresses = sorted({info[4][0] for info in found})
        return [f"http://[{a}]:{port}" if ":" in a else f"http://{a}:{port}" for a in addresses]
    return [url.strip().rstrip("/") for url in replicas.split(",") if url.strip()]


@dataclass
class ReplicaState:
    """One replica's answer to "do you serve the target yet?"."""

    url: str
    missing: str | None = None  # None: it serves the target
    since: float | None = None  # when it was first seen disagreeing (monotonic)
    converged_after: float | None = None  # seconds after the write it first agreed
    named: bool = False  # already reported as lagging


@dataclass
class Fleet:
    """The replicas of one model, by discovery setting; views are made per URL and kept."""

    replicas: str
    fallback: str
    model: str
    views: dict[str, ServerView] = field(default_factory=dict)
    make_view: Callable[[str, str], ServerView] = ServerView

    def members(self) -> list[ServerView]:
        urls = discover(self.replicas, self.fallback)
        for url in urls:
            if url not in self.views:
                self.views[url] = self.make_view(url, self.model)
        return [self.views[url] for url in urls]

    def available_everywhere(self) -> frozenset[int]:
        """Versions AVAILABLE on every replica: the only ones a label may move to."""
        sets = [member.available() for member in self.members()]
        return frozenset.intersection(*sets) if sets else frozenset()

    def wait(
        self,
        check: Check,
        timeout: float,
        poll_seconds: float,
        lag_seconds: float,
        say: Callable[[str], None],
    ) -> tuple[float, list[ReplicaState]]:
        """Until `check` passes on every replica at once; (seconds, per-replica report).

        A replica still disagreeing `lag_seconds` (the replicas' config poll interval)
        after the write is named once; at the timeout RolloutError names every one.
        """
        started = time.monotonic()
        states: dict[str, ReplicaState] = {}
        while True:
            now = time.monotonic()
            members = self.members()
            for member in members:
                state = states.setdefault(member.url, ReplicaState(member.url))
                try:
                    state.missing = check(member)
                except RolloutError as error:
                    if "failed to load" in str(error):
                        raise RolloutError(f"replica {member.url}: {error}") from None
                    state.missing = str(error)
                if state.missing is None:
                    if state.converged_after is None:
                        state.converged_after = now - started
                    continue
                state.converged_after = None
                state.since = state.since or now
                if not state.named and now - started > lag_seconds:
                    state.named = True
                    say(f"  replica {member.url} still disagrees after {now - started:.1f} s: "
                        f"{state.missing}")  # fmt: skip
            current = [states[m.url] for m in members]
            if all(s.missing is None for s in current):
                return time.monotonic() - started, current
            if now - started > timeout:
                behind = "; ".join(f"{s.url}: {s.missing}" for s in current if s.missing)
                raise RolloutError(f"after {timeout:g} s not every replica converged: {behind}")
            time.sleep(poll_seconds)


def replica_status(view: ServerView, served: Served, labels: Sequence[str]) -> dict:
    """One replica's versions and labels, and whether they are what the config says."""
    try:
        versions = view.versions()
        resolved = {label: view.label_version(label) for label in labels}
    except RolloutError as error:
        return {"url": view.url, "reachable": False, "error": str(error), "agrees": False}
    available = {v for v, s in versions.items() if s.state == "AVAILABLE"}
    expected = {label: served.labels.get(label) for label in labels}
    disagreements = [
        f"version {v} is {versions[v].state if v in versions else 'unknown'}"
        for v in sorted(served.versions - available)
    ] + [
        f"version {v} is still loaded" for v in sorted(available - served.versions)
    ] + [
        f"label {label!r} serves {resolved[label]}, not {expected[label]}"
        for label in labels
        if expected[label] is not None and resolved[label] != expected[label]
    ]  # fmt: skip
    return {
        "url": view.url,
        "reachable": True,
        "versions": {str(v): s.state for v, s in sorted(versions.items())},
        "labels": resolved,
        "agrees": not disagreements,
        "disagreements": disagreements,
    }
