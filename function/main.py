"""Function entry point. functions-framework target: `recognize`.

Deploy this directory as it is (Cloud Functions source, or the function container).
Every setting is read and checked here, at import, so a malformed one stops the function
before it serves (with every problem named); nothing connects at import time, see
recognizer/clients.py for why.
"""

import sys

import flask
import functions_framework

from recognizer import logs
from recognizer.api import Api
from recognizer.config import Settings
from recognizer.env import SettingsError

try:
    _settings = Settings.from_env()
except SettingsError as error:
    sys.exit(f"the function cannot start: {error}")
# Every line the function's code and its libraries log (the Cassandra driver's included)
# is one JSON entry on stdout, with the request's id and trace (recognizer/logs.py).
logs.configure("function", _settings.log_level, project=_settings.trace_project)
_api = Api(_settings)


@functions_framework.errorhandler(404)
def not_routed(error: Exception) -> flask.Response:
    """Paths functions-framework never hands to the function (a newline in a segment, which
    its /<path:path> rule does not match; /robots.txt and /favicon.ico, which it answers
    itself) get the function's own JSON 404, with a request id and a log line."""
    return _api.handle(flask.request)


def recognize(request: flask.Request) -> flask.Response:
    """Route one request: POST /predict, GET /predictions[/<id>[/image]], /healthz, /readyz, /."""
    return _api.handle(request)
