"""No dead code: vulture finds nothing unused in the tree but what something calls by name.

What it cannot see being used is listed here with who uses it, so a name added to the
list says why; anything else it reports is code nobody calls, to delete.
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

TREES = ["function", "serving", "infra", "training", "bench", "evaluation", "imagesets", "tests"]
CALLED_BY_NAME = {
    # http.server, socketserver and io call these by name
    "do_GET", "do_POST", "do_PUT", "do_DELETE", "do_HEAD", "do_OPTIONS", "do_PATCH",
    "log_message", "send_error", "server_version", "disable_nagle_algorithm", "wbufsize",
    "daemon_threads", "address_family", "process_request",
    "readable", "seekable", "tell", "readinto",
    # pytest (and a fixture that another fixture needs only for its skip)
    "pytest_configure", "pytest_collection_modifyitems", "pytestmark", "java_and_maven",
    # gRPC's generated servicer, a module's PEP 562 __getattr__, Keras, the Cassandra driver
    "MultiInference", "__getattr__", "trainable", "sockopts",
    # parameters an interface requires (__exit__, BaseHTTPRequestHandler.send_error, Keras)
    "exc_info", "explain", "sample_weight",
    # read by name: JSON reports (rss_mb, pss_mb), plots (getattr), recipes (getattr)
    "rss_mb", "pss_mb", "nondigit_top", "rendered_top", "softmax_regression",
    # gunicorn's gthread worker reads these attributes of its own (recognizer/worker.py)
    "data_ready", "nr_conns",
    # imported for its side effect: it registers wrappers.proto in the descriptor pool
    "wrappers_pb2",
}  # fmt: skip
DECORATED = ["@pytest.fixture", "@app.get", "@functions_framework.errorhandler"]


def test_vulture_finds_no_unused_code() -> None:
    argv = [sys.executable, "-m", "vulture", *TREES, "--min-confidence", "60"]
    argv += ["--exclude", "tests/data", "--ignore-names", ",".join(sorted(CALLED_BY_NAME))]
    argv += ["--ignore-decorators", ",".join(DECORATED)]
    done = subprocess.run(
        argv,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.stdout == "", done.stdout
    assert done.returncode == 0, done.stderr
