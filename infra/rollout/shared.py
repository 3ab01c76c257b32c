"""Where the one models.config every replica polls lives: a file, a ConfigMap or a bucket.

Each place is read with a token of the version read, and written only over that version
(compare and swap), in one atomic operation a polling replica sees whole or not at all:
a file is renamed over, a ConfigMap is replaced with its resourceVersion (the API server
refuses a stale one), an object is uploaded with --if-generation-match. Nothing here
rebuilds an image. kubectl and gcloud are run, never imported: the operator's own
credentials and contexts apply.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from infra.rollout.errors import RolloutError
from infra.rollout.served import write_atomically

Run = Callable[[Sequence[str], str | None], str]  # argv, stdin -> stdout; raises RolloutError


def run_command(argv: Sequence[str], stdin: str | None = None) -> str:
    """Run a CLI; its stdout, or RolloutError with its stderr."""
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=120, check=False
        )
    except FileNotFoundError:
        raise RolloutError(f"{argv[0]} is not installed or not on PATH") from None
    except subprocess.TimeoutExpired:
        raise RolloutError(f"`{' '.join(argv[:4])} ...` took over 120 s") from None
    if done.returncode != 0:
        raise RolloutError(f"`{' '.join(argv[:4])} ...` failed: {done.stderr.strip()[-500:]}")
    return done.stdout


@dataclass
class LocalFile:
    """A file every replica mounts (Compose's bind mount, a shared volume, the local fleet)."""

    path: Path
    _read: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return str(self.path)

    def read(self) -> str:
        try:
            self._read = self.path.read_text(encoding="utf-8")
        except OSError as error:
            raise RolloutError(f"cannot read {self.path}: {error.strerror}") from None
        return self._read

    def write(self, text: str) -> None:
        try:
            now = self.path.read_text(encoding="utf-8")
        except OSError:
            now = None
        if self._read is not None and now != self._read:
            raise RolloutError(f"{self.path} changed since it was read; run the command again")
        write_atomically(self.path, text)
        self._read = text


@dataclass
class ConfigMap:
    """A ConfigMap key mounted into every TF Serving pod (the kubelet swaps the whole
    volume at once); written with `kubectl replace` over the resourceVersion read."""

    namespace: str
    name: str
    key: str = "models.config"
    run: Run = run_command
    _object: dict | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return f"configmap:{self.namespace}/{self.name}/{self.key}"

    def read(self) -> str:
        out = self.run(["kubectl", "get", "configmap", self.name, "-n", self.namespace,
                        "-o", "json"], None)  # fmt: skip
        self._object = json.loads(out)
        data = self._object.get("data") or {}
        if self.key not in data:
            raise RolloutError(f"{self} has no key {self.key!r}")
        return data[self.key]

    def write(self, text: str) -> None:
        if self._object is None:
            self.read()
        assert self._object is not None
        updated = {**self._object, "data": {**self._object["data"], self.key: text}}
        # resourceVersion stays: the API server refuses the replace if anyone wrote since.
        out = self.run(["kubectl", "replace", "-n", self.namespace, "-o", "json", "-f", "-"],
                       json.dumps(updated))  # fmt: skip
        self._object = json.loads(out)


@dataclass
class Bucket:
    """A Cloud Storage object TF Serving polls (`--model_config_file=gs://...`); uploaded
    with --if-generation-match so a concurrent writer's change is never overwritten."""

    url: str  # gs://bucket/path/models.config
    run: Run = run_command
    _generation: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return self.url

    def read(self) -> str:
        described = json.loads(
            self.run(["gcloud", "storage", "objects", "describe", self.url, "--format=json"], None)
        )
        self._generation = str(described["generation"])
        return self.run(["gcloud", "storage", "cat", f"{self.url}#{self._generation}"], None)

    def write(self, text: str) -> None:
        if self._generation is None:
            self.read()
        with tempfile.NamedTemporaryFile("w", suffix=".config", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            self.run(["gcloud", "storage", "cp", file.name, self.url,
                      f"--if-generation-match={self._generation}"], None)  # fmt: skip
        described = json.loads(
            self.run(["gcloud", "storage", "objects", "describe", self.url, "--format=json"], None)
        )
        self._generation = str(described["generation"])


SharedConfig = LocalFile | ConfigMap | Bucket


def shared_config(where: str) -> SharedConfig:
    """`configmap:NAMESPACE/NAME[/KEY]`, `gs://BUCKET/OBJECT`, or a path."""
    if where.startswith("configmap:"):
        parts = where.removeprefix("configmap:").split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise RolloutError(f"{where!r} is not configmap:NAMESPACE/NAME[/KEY]")
        return ConfigMap(*parts)
    if where.startswith("gs://"):
        if where.removeprefix("gs://").count("/") < 1 or where.endswith("/"):
            raise RolloutError(f"{where!r} is not gs://BUCKET/OBJECT")
        return Bucket(where)
    return LocalFile(Path(where))
