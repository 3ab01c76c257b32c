"""An environment that remembers which variables were asked of it."""

from __future__ import annotations

from collections.abc import Mapping


class RecordingEnv(dict):
    """A mapping that remembers every name looked up with get(): what a settings reader
    reads, asked of the reader itself rather than listed by hand."""

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        super().__init__(values or {})
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)
