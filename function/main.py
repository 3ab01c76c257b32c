"""Function entry point. functions-framework target: `recognize`.

Deploy this directory as it is (Cloud Functions source, or the function container).
Nothing here connects at import time; see recognizer/api.py for why.
"""

import flask

from recognizer.api import Api
from recognizer.config import Settings

_api = Api(Settings.from_env())


def recognize(request: flask.Request) -> flask.Response:
    """Route one request: POST /predict, GET /predictions[/<id>[/image]], /healthz, /readyz, /."""
    return _api.handle(request)
