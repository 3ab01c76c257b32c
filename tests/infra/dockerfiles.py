"""Just enough of the Dockerfile syntax to check what our two Dockerfiles say.

Handles comments, backslash continuations and the JSON (exec) form of arguments;
hadolint does the real parsing and linting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    text: str  # everything after the keyword, continuations joined

    def exec_form(self) -> list[str] | None:
        """The JSON array form (CMD ["a", "b"]), or None for the shell form."""
        body = self.text
        if self.keyword == "HEALTHCHECK":
            body = body.split(" CMD ", 1)[1] if " CMD " in body else body.removeprefix("CMD ")
        try:
            value = json.loads(body)
        except ValueError:
            return None
        return value if isinstance(value, list) else None


def parse(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile, in order."""
    instructions: list[Instruction] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continuation are dropped
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), rest.strip()))
    return instructions


def only(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    return [instruction for instruction in instructions if instruction.keyword == keyword]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    """ENV KEY=VALUE pairs (the KEY=VALUE form only, which is what we write)."""
    env: dict[str, str] = {}
    for instruction in only(instructions, "ENV"):
        for pair in instruction.text.split():
            key, _, value = pair.partition("=")
            env[key] = value
    return env
