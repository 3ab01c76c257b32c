"""The test tree's own rules: pytest imports test modules by basename (the test folders
are not packages), so two files of one name cannot be collected in one run."""

from collections import Counter

from tests.conftest import ROOT


def test_no_two_test_modules_share_a_name() -> None:
    names = Counter(path.name for path in (ROOT / "tests").rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
