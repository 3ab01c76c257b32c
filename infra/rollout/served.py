"""What models.config serves for one model, read and written through the ModelServerConfig protos.

A rollout only ever changes two things of one model's entry: its `specific` version
list and its version labels. `Served` is that pair; everything else in the file (other
models, base paths, platforms) is carried through untouched because we edit the parsed
message, never the text. The leading comment block survives too: text format drops
comments, and the shipped file explains itself in one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from infra.rollout.errors import RolloutError

ModelServerConfig = model_server_config_pb2.ModelServerConfig
ModelConfig = model_server_config_pb2.ModelConfig


@dataclass(frozen=True)
class Served:
    """The versions a model server is told to load, and where its labels point."""

    versions: frozenset[int]
    labels: Mapping[str, int] = field(default_factory=dict)

    def loading(self, version: int) -> Served:
        return Served(self.versions | {version}, self.labels)

    def unloading(self, version: int) -> Served:
        return Served(self.versions - {version}, self.labels)

    def pointing(self, labels: Mapping[str, int]) -> Served:
        return Served(self.versions, {**self.labels, **labels})

    def describe(self) -> str:
        labels = ", ".join(f"{k} -> {v}" for k, v in sorted(self.labels.items())) or "none"
        return f"versions {sorted(self.versions)}, labels {labels}"


def parse(text: str) -> ModelServerConfig:
    try:
        return text_format.Parse(text, ModelServerConfig())
    except text_format.ParseError as error:
        raise RolloutError(f"the model config is not a ModelServerConfig: {error}") from None


def model_entry(config: ModelServerConfig, model: str) -> ModelConfig:
    for entry in config.model_config_list.config:
        if entry.name == model:
            return entry
    raise RolloutError(f"the model config has no model named {model!r}")


def served_of(config: ModelServerConfig, model: str) -> Served:
    """The rollout view of `model`; only a `specific` version policy can be rolled out."""
    entry = model_entry(config, model)
    policy = entry.model_version_policy.WhichOneof("policy_choice")
    if policy != "specific":
        raise RolloutError(
            f"model {model!r} uses the {policy or 'default latest'} version policy; rollouts "
            "need `model_version_policy { specific { versions: ... } }` to choose what loads"
        )
    return Served(
        frozenset(entry.model_version_policy.specific.versions), dict(entry.version_labels)
    )


def with_served(config: ModelServerConfig, model: str, served: Served) -> ModelServerConfig:
    """A copy of `config` in which `model` serves exactly `served`."""
    updated = ModelServerConfig()
    updated.CopyFrom(config)
    entry = model_entry(updated, model)
    specific = entry.model_version_policy.specific  # also selects the `specific` policy
    del specific.versions[:]
    specific.versions.extend(sorted(served.versions))
    entry.version_labels.clear()
    entry.version_labels.update(served.labels)
    return updated


def render(config: ModelServerConfig, previous_text: str = "") -> str:
    """Text format, headed by the comment block `previous_text` started with."""
    return _leading_comments(previous_text) + text_format.MessageToString(config)


def write_atomically(path: Path, text: str) -> None:
    """Write beside the target, flush to disk, rename over it: a poller never sees half a file."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _leading_comments(text: str) -> str:
    lines = []
    for line in text.splitlines(keepends=True):
        if not line.lstrip().startswith("#"):
            break
        lines.append(line if line.endswith("\n") else line + "\n")
    return "".join(lines)
