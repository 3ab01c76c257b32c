"""Errors with TensorFlow's canonical codes, so REST answers match TF Serving's."""

from __future__ import annotations

# TF Serving's http_server.cc maps tensorflow::error::Code to HTTP like this.
_HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


class ServingError(Exception):
    """A failure carrying a canonical code name (e.g. ``NOT_FOUND``) and a message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code if code in _HTTP_STATUS else "UNKNOWN"
        self.message = message

    @property
    def http_status(self) -> int:
        """The HTTP status TF Serving answers for this code."""
        return _HTTP_STATUS[self.code]

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ConfigError(ServingError):
    """A model server config that cannot be read or is rejected as a whole."""


def invalid_argument(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


def not_found(message: str) -> ServingError:
    return ServingError("NOT_FOUND", message)


def from_exception(exc: BaseException) -> ServingError:
    """Map any exception (TF OpError included) to a ServingError, keeping TF's code."""
    if isinstance(exc, ServingError):
        return exc
    code_number = getattr(exc, "error_code", None)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if isinstance(code_number, int):
        from tensorflow.core.protobuf import error_codes_pb2

        try:
            return ServingError(error_codes_pb2.Code.Name(code_number), message)
        except ValueError:
            pass
    return ServingError("UNKNOWN", message)
