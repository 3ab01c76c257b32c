"""recognizer/logs.py: every line one JSON entry, an exception one entry with its stack, and
each line of a request tied to it by its id and trace (traceparent / X-Cloud-Trace-Context)."""

from __future__ import annotations

import io
import json
import logging

import functions_framework
import pytest

from recognizer import logs
from recognizer.api import Api
from tests.conftest import ROOT

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def entries(text: str) -> list[dict]:
    """Every line of `text` as JSON: a line that is not one fails the test."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def root_logger():
    """The root logger as the function configures it, writing to a buffer; restored after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffer = io.StringIO()
    logs.configure("function", "INFO", buffer, project="my-project")
    yield buffer
    root.handlers[:], root.level = saved


def test_an_exception_is_one_entry_with_its_stack_in_a_field(root_logger):
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logging.getLogger("recognizer.test").exception("it failed")
    (entry,) = entries(root_logger.getvalue())
    assert entry["severity"] == "ERROR" and entry["message"] == "it failed"
    assert entry["logger"] == "recognizer.test" and entry["component"] == "function"
    assert entry["stack_trace"].startswith("Traceback (most recent call last):")
    assert 'raise ValueError("bad\\nthing")' in entry["stack_trace"]
    assert entry["stack_trace"].rstrip().endswith("ValueError: bad\nthing")
    assert "request_id" not in entry  # logged outside a request


def test_info_lines_are_kept_and_debug_dropped_at_info(root_logger):
    logging.getLogger("cassandra.cluster").info("connected to %s", "127.0.0.1")
    logging.getLogger("cassandra.cluster").debug("chatter")
    (entry,) = entries(root_logger.getvalue())
    assert (entry["severity"], entry["message"]) == ("INFO", "connected to 127.0.0.1")


def test_lines_inside_a_request_carry_its_id_and_trace(root_logger):
    trace = logs.parse_trace({"traceparent": f"00-{TRACE}-{SPAN}-01"})
    with logs.request_context("req-7", trace):
        logging.getLogger("x").warning("inside")
    logging.getLogger("x").warning("outside")
    inside, outside = entries(root_logger.getvalue())
    assert inside["request_id"] == "req-7"
    assert inside[logs.TRACE_FIELD] == f"projects/my-project/traces/{TRACE}"
    assert inside[logs.SPAN_FIELD] == SPAN and inside[logs.SAMPLED_FIELD] is True
    assert not {"request_id", logs.TRACE_FIELD} & set(outside)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"traceparent": f"00-{TRACE}-{SPAN}-01"}, (TRACE, SPAN, True)),
        ({"traceparent": f"00-{TRACE}-{SPAN}-00"}, (TRACE, SPAN, False)),
        # Google's header: the span id in decimal; o=1 sampled
        ({"X-Cloud-Trace-Context": f"{TRACE}/1;o=1"}, (TRACE, "0000000000000001", True)),
        ({"X-Cloud-Trace-Context": f"{TRACE.upper()}/255"}, (TRACE, "00000000000000ff", False)),
        # traceparent wins over the older header
        (
            {"traceparent": f"00-{TRACE}-{SPAN}-01", "X-Cloud-Trace-Context": "a" * 32 + "/1"},
            (TRACE, SPAN, True),
        ),
    ],
)
def test_a_trace_is_read_from_either_header(headers, expected):
    trace = logs.parse_trace(headers)
    assert trace is not None and (trace.trace_id, trace.span_id, trace.sampled) == expected


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"traceparent": f"00-{'0' * 32}-{SPAN}-01"},  # all-zero trace id: invalid
        {"traceparent": f"00-{TRACE}-{'0' * 16}-01"},  # all-zero parent id: invalid
        {"traceparent": f"ff-{TRACE}-{SPAN}-01"},  # version ff: invalid
        {"traceparent": f"00-{TRACE.upper()}-{SPAN}-01"},  # upper case: invalid
        {"traceparent": f"00-{TRACE}-{SPAN}-01\n{{forged}}"},
        {"X-Cloud-Trace-Context": "not-a-trace"},
    ],
)
def test_a_malformed_trace_is_ignored(headers):
    assert logs.parse_trace(headers) is None


def test_calls_for_a_request_forward_its_id_and_trace_as_a_child_span():
    assert logs.outgoing_headers() == {}
    trace = logs.parse_trace({"traceparent": f"00-{TRACE}-{SPAN}-01"})
    with logs.request_context("req-9", trace):
        first, second = logs.outgoing_headers(), logs.outgoing_headers()
    assert first["X-Request-Id"] == "req-9"
    version, trace_id, span, flags = first["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE, "01")
    assert span != SPAN and span != second["traceparent"].split("-")[2]  # a span per call
    with logs.request_context("req-10", None):
        assert logs.outgoing_headers() == {"X-Request-Id": "req-10"}


# --- through the function ------------------------------------------------------------------


@pytest.fixture
def app_client(function_env, monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "my-project")
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    app = functions_framework.create_app("recognize", str(ROOT / "function" / "main.py"))
    yield app.test_client()
    root.handlers[:], root.level = saved


@pytest.fixture
def broken_history(monkeypatch):
    """GET /predictions raises an exception nothing expects (before the app is made)."""

    def broken(self, request):
        raise RuntimeError("the history broke")

    monkeypatch.setattr(Api, "_history", broken)


@pytest.mark.usefixtures("broken_history")  # before app_client makes the app
def test_an_internal_error_is_one_entry_grouped_with_its_request_line(app_client, capsys):
    capsys.readouterr()
    response = app_client.get(
        "/predictions",
        headers={"traceparent": f"00-{TRACE}-{SPAN}-01", "X-Request-Id": "req-500"},
    )
    assert response.status_code == 500
    error, request_line = entries(capsys.readouterr().out)
    assert (
        error["severity"] == "ERROR" and "RuntimeError: the history broke" in (error["stack_trace"])
    )
    assert request_line["status"] == 500
    for entry in (error, request_line):
        assert entry["request_id"] == "req-500"
        assert entry[logs.TRACE_FIELD] == f"projects/my-project/traces/{TRACE}"


def test_a_path_with_a_newline_or_escape_cannot_forge_or_colour_a_line(app_client, capsys):
    """#24's log-injection row: %0A and %1b in the path stay inside one escaped line."""
    capsys.readouterr()
    forged = '/predictions/%0A{"severity":"CRITICAL","message":"forged"}%1b[31mred'
    response = app_client.get(forged)
    assert response.status_code in (400, 404)
    out = capsys.readouterr().out
    assert "\x1b" not in out and out.count("\n") == 1  # one line, no raw ESC byte
    (entry,) = entries(out)
    assert entry["severity"] == "WARNING"
    assert entry["path"].startswith('/predictions/\n{"severity":"CRITICAL"')
    assert "\x1b[31mred" in entry["path"]  # the decoded path, kept as data
