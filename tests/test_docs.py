"""Every document the repo's files point at is in the repo."""

from __future__ import annotations

import re
import subprocess

import pytest

from recognizer.verdict import REASONS
from tests.conftest import ROOT

TRACKED = subprocess.run(
    ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
).stdout.split()
MARKDOWN = [path for path in TRACKED if path.endswith(".md")]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")  # [text](target) or [text](target#anchor)


@pytest.mark.parametrize("document", MARKDOWN)
def test_every_relative_link_resolves(document: str) -> None:
    text = (ROOT / document).read_text(encoding="utf-8")
    base = (ROOT / document).parent
    broken = [
        target
        for target in LINK.findall(text)
        if "://" not in target and not target.startswith("mailto:") and not (base / target).exists()
    ]
    assert broken == []


def test_no_file_points_at_a_design_document_outside_the_repo() -> None:
    pointing = [
        path
        for path in TRACKED
        if (ROOT / path).is_file()
        and not path.startswith(("tests/data/", "models/", "docs/perf/", "docs/models/"))
        and "DESIGN.md" in (ROOT / path).read_text(encoding="utf-8", errors="ignore")
        and path != "tests/test_docs.py"
    ]
    assert pointing == []


TOP_LEVEL = {path.split("/", 1)[0] for path in TRACKED if "/" in path}
# A path into this repo (its first part is one of the repo's top-level directories), in
# any tracked text: `function/recognizer/api.py`, docs/verdicts.md, infra/cassandra/schema.cql.
_TOP = "|".join(sorted(map(re.escape, TOP_LEVEL)))
REPO_PATH = re.compile(rf"(?<![\w/.-])((?:{_TOP})/(?:[\w.-]+/)*[\w-]+\.[a-z]{{2,6}})\b")
FILE_NAMES = {path.rsplit("/", 1)[-1] for path in TRACKED}
MODULE_NAME = re.compile(r"`([\w-]+\.py)`")  # a bare module name in a document: `config.py`
TEXTS = [
    path
    for path in TRACKED
    if path.endswith((".md", ".py", ".yml", ".yaml", ".toml", "Makefile", ".cfg"))
    and not path.startswith(("tests/data/", "models/"))
]


@pytest.mark.parametrize("text", TEXTS)
def test_every_path_a_file_names_is_in_the_repo(text: str) -> None:
    """Renaming or moving a module must take its mentions along (docs, docstrings, comments)."""
    content = (ROOT / text).read_text(encoding="utf-8", errors="ignore")
    here = (ROOT / text).parent  # a document may name a path relative to itself
    missing = [
        path
        for path in set(REPO_PATH.findall(content))
        if not (ROOT / path).exists() and not (here / path).exists()
    ]
    if text.endswith(".md"):
        missing += [name for name in set(MODULE_NAME.findall(content)) if name not in FILE_NAMES]
    assert sorted(missing) == []


@pytest.mark.parametrize(
    "document", ["README.md", "docs/verdicts.md", "function/recognizer/openapi.json"]
)
def test_every_reason_code_a_verdict_can_give_is_documented(document: str) -> None:
    text = (ROOT / document).read_text(encoding="utf-8")
    assert [code for code in REASONS if f"`{code}`" not in text] == []
