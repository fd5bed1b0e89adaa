"""The heads RPH writes: requests sent on to a backend, and its own answers.

The head sent to a backend is rebuilt from what h11 parsed, never copied
from the raw bytes, so a folded or bare-LF head cannot reach a backend that
would read it differently. RPH's own answers (errors, control endpoints)
are complete responses with a JSON body and a `Content-Length`.
"""

from __future__ import annotations

from rph.errors import RPHError
from rph.net.http import Request

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded.
# Content-Length is set by RPH from the buffered body; Expect is answered by
# RPH itself; Trailer announces trailers that de-chunking drops.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"content-length",
    }
)

# A client may name any header in `Connection`, but without these the
# backend could not read the request at all; they are end-to-end whatever
# the client says.
_NEVER_DROPPED = frozenset({b"host"})

JSON = b"application/json"


def forward_head(request: Request, peer: str, scheme: bytes = b"http") -> bytes:
    """The head RPH sends to the backend, rebuilt from the parse.

    Method, target, version and headers keep their order, case and
    duplicates; hop-by-hop headers and every header that `Connection`
    names go (decided before RPH adds its own), except `Upgrade` and
    `Connection: upgrade` for an upgrade request; the body's length is
    stated; X-Forwarded-For/-Proto/-Host are added last.
    """
    dropped = (HOP_BY_HOP | request.connection_tokens) - _NEVER_DROPPED
    upgrade = request.wants_upgrade
    # An HTTP/1.0 client cannot read chunks or 1xx answers: the backend must
    # know whom it answers, so the version goes on as the client sent it.
    lines = [b"%s %s HTTP/%s" % (request.method, request.target, request.http_version)]
    host = b""
    for name, value in request.headers:
        lower = name.lower()
        if lower == b"host":
            host = value
        if lower not in dropped or (upgrade and lower == b"upgrade"):
            lines.append(name + b": " + value)
    if upgrade:
        lines.append(b"Connection: upgrade")
    if request.has_body or request.body:
        lines.append(b"Content-Length: %d" % request.body_length)
    lines.append(b"X-Forwarded-For: " + peer.encode())
    lines.append(b"X-Forwarded-Proto: " + scheme)
    if host:
        lines.append(b"X-Forwarded-Host: " + host)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def error_response(error: RPHError, close: bool, head_only: bool = False) -> bytes:
    """A complete response for an error RPH answers itself.

    `head_only` (a HEAD request) leaves the body out but keeps its length.
    """
    return json_response(error.status, error.body(), close, JSON, head_only)


def json_response(
    status: int,
    body: bytes,
    close: bool,
    content_type: bytes = JSON,
    head_only: bool = False,
) -> bytes:
    """A complete response of RPH's own; `close` says the connection ends."""
    reason = REASONS.get(status, b"Error" if status >= 400 else b"OK")
    head = [
        b"HTTP/1.1 %d %s" % (status, reason),
        b"Content-Type: " + content_type,
        b"Content-Length: %d" % len(body),
        b"Cache-Control: no-store",
    ]
    if close:
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + (b"" if head_only else body)


REASONS = {
    200: b"OK",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}
