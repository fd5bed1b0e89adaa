"""The errors RPH answers itself, each knowing its HTTP status.

Front-ends such as SillyTavern and Open WebUI show the `message` of an
OpenAI-style error body, so every message is written for the person reading
it there: what went wrong and, where it helps, what to do.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from rph.logline import LINE_SEPARATOR, one_line

# What an error shows as the last output of an app that printed nothing.
NOTHING_PRINTED = "(nothing)"


class RPHError(Exception):
    """An error that becomes an HTTP answer from RPH itself."""

    status = 500
    kind = "server_error"
    code = "internal_error"

    def __init__(self, message: str, last_output: Sequence[str] | None = None) -> None:
        """`last_output`, the last lines an app printed, follows `message`:
        a line each in the answer, one line in the log (see `log_text`)."""
        self.headline = message
        self.last_output = None if last_output is None else tuple(last_output)
        if self.last_output is not None:
            shown = "\n".join(self.last_output) or NOTHING_PRINTED
            message = f"{message} Last output:\n{shown}"
        super().__init__(message)
        self.message = message

    def log_text(self) -> str:
        """The whole message as one log line, the app's lines joined."""
        if self.last_output is None:
            return one_line(self.message)
        shown = LINE_SEPARATOR.join(map(one_line, self.last_output))
        return one_line(self.headline) + f" Last output: {shown or NOTHING_PRINTED}"

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
