"""The errors RPH answers itself, each knowing its HTTP status.

Front-ends such as SillyTavern and Open WebUI show the `message` of an
OpenAI-style error body, so every message is written for the person reading
it there: what went wrong and, where it helps, what to do.
"""

from __future__ import annotations

import orjson


class RPHError(Exception):
    """An error that becomes an HTTP answer from RPH itself."""

    status = 500
    kind = "server_error"
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.kind, "code": self.code}
        return orjson.dumps({"error": error})


class BadRequest(RPHError):
    status, kind, code = 400, "invalid_request_error", "bad_request"


class Forbidden(RPHError):
    status, kind, code = 403, "invalid_request_error", "forbidden"


class NoRoute(RPHError):
    status, kind, code = 404, "invalid_request_error", "no_app"


class MethodNotAllowed(RPHError):
    status, kind, code = 405, "invalid_request_error", "method_not_allowed"


class RequestTimeout(RPHError):
    status, kind, code = 408, "invalid_request_error", "request_timeout"


class BodyTooLarge(RPHError):
    status, kind, code = 413, "invalid_request_error", "body_too_large"


class HeadTooLarge(RPHError):
    status, kind, code = 431, "invalid_request_error", "head_too_large"


class UnsupportedCoding(RPHError):
    status, kind, code = 501, "invalid_request_error", "unsupported_coding"


class VersionNotSupported(RPHError):
    status, kind, code = 505, "invalid_request_error", "http_version_not_supported"


class BackendFailed(RPHError):
    """The backend exited while starting, or refused or reset a request."""

    status, kind, code = 502, "server_error", "backend_failed"


class NothingRunning(RPHError):
    status, kind, code = 503, "server_error", "app_not_running"


class StartTimeout(RPHError):
    status, kind, code = 504, "server_error", "start_timeout"
