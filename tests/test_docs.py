"""Every document the repo's files point at is in the repo."""

from __future__ import annotations

import re
import subprocess

import pytest

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
