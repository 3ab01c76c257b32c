"""The function's tests that need no real model run with TensorFlow refused (issue #11).

`make test` runs all of tests/function that way (TESTS_WITHOUT_TENSORFLOW=1); here, the
guard itself, and two suites of HTTP tests in a child pytest with TensorFlow refused.
"""

from __future__ import annotations

import os
import re
import subprocess

from tests.conftest import PYTHON, ROOT

CHILD_TIMEOUT_SECONDS = 600


def without_tensorflow(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TESTS_WITHOUT_TENSORFLOW": "1"}
    return subprocess.run(
        [PYTHON, *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=CHILD_TIMEOUT_SECONDS,
    )  # fmt: skip


def test_the_guard_refuses_tensorflow_and_its_submodules():
    for module in ("tensorflow", "tensorflow.core.protobuf"):
        guarded = (
            f"from tests.support import no_tensorflow\nno_tensorflow.install()\nimport {module}"
        )
        done = without_tensorflow("-c", guarded)
        assert done.returncode != 0
        assert "ImportError: tensorflow is refused" in done.stderr, done.stderr[-500:]


def test_http_suites_pass_with_tensorflow_refused_and_only_real_model_tests_left_out():
    suites = ["tests/function/test_api.py", "tests/function/test_faults.py"]
    done = without_tensorflow("-m", "pytest", "-q", "-p", "no:cacheprovider", *suites)
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    deselected = int(re.search(r"(\d+) deselected", summary).group(1))
    with_tensorflow = {k: v for k, v in os.environ.items() if k != "TESTS_WITHOUT_TENSORFLOW"}
    real_model = subprocess.run(
        [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
         "-m", "real_model", *suites],
        cwd=ROOT, env=with_tensorflow, capture_output=True, text=True,
        timeout=CHILD_TIMEOUT_SECONDS,
    )  # fmt: skip
    assert deselected == len(re.findall(r"^tests/.*::", real_model.stdout, re.MULTILINE))
    assert passed > deselected and "skipped" not in summary, summary
