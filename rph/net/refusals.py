"""What RPH answers for a request head it refuses, said for a person.

h11 reads the heads that are not plain (net/plainhead) and refuses what
breaks HTTP/1.1 with words of its own, which show its internals (a
bytearray's repr among them). Each refusal becomes the RPHError that
carries RPH's status and a message a client's user can read.
"""

from __future__ import annotations

import re

import h11

from rph.errors import (
    BadRequest,
    HeadTooLarge,
    RPHError,
    UnsupportedCoding,
    VersionNotSupported,
)

# What h11 refuses, by the start of its message (h11/_readers.py,
# _headers.py, _events.py), and what RPH says instead. Anything else it
# refuses is answered as a "malformed request".
_PLAIN_MESSAGES = (
    ("illegal request line", "malformed request line; expected METHOD /path HTTP/1.1"),
    ("no request line", "malformed request line; expected METHOD /path HTTP/1.1"),
    ("continuation line", "malformed head: it starts with a folded header line"),
    ("illegal header line", "malformed header line; expected Name: value"),
    ("conflicting content-length", "the Content-Length values differ"),
    ("bad content-length", "Content-Length is not a number of bytes"),
    ("missing mandatory host", "missing Host header (HTTP/1.1 requires one)"),
    ("found multiple host", "more than one Host header"),
    ("illegal chunk header", "malformed chunk size; expected a hexadecimal number"),
    ("malformed chunk footer", "malformed chunked body: a chunk must end with CRLF"),
)

# RFC 9112 §2.3: the version is HTTP/DIGIT.DIGIT, which h11 reads, leaving
# any but 1.0 and 1.1 to RPH (505). A request line well formed but for a
# version of digits alone (HTTP/3, as that version is called) asks for
# another HTTP too: 505 as well, not 400.
_OTHER_VERSION = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+ [\x21-\x7e]+ HTTP/([0-9]+)")

# A coding name is shown up to this long: real ones are short, and a
# hostile header need not come back whole.
SHOWN_CODING_CHARS = 40


def refusal_for(
    exc: h11.RemoteProtocolError, head_limit: int, head: bytes = b""
) -> RPHError:
    """The error to answer for what h11 refused; `head` is the buffer that
    starts with the request's head, when the head is what it refused."""
    if exc.error_status_hint == 431:
        return HeadTooLarge(f"request head over {head_limit} bytes")
    if exc.error_status_hint == 501:
        return _coding_error(_head_lines(head, head_limit))
    refusal = str(exc).lower()
    if refusal.startswith("illegal request line"):
        request_line = _head_lines(head, head_limit)[:1]
        if request_line and (other := _OTHER_VERSION.fullmatch(request_line[0])):
            return version_refusal(other[1])
    for start, message in _PLAIN_MESSAGES:
        if refusal.startswith(start):
            return BadRequest(message)
    return BadRequest("malformed request")


def _head_lines(data: bytes, limit: int) -> list[bytes]:
    """The lines of the head that starts `data`, without their ends."""
    lines = []
    # Past the limit no head is read: the body that follows is not split.
    for line in data[:limit].split(b"\n"):
        line = line.removesuffix(b"\r")
        if not line:
            break
        lines.append(line)
    return lines


def _coding_error(lines: list[bytes]) -> RPHError:
    """What to answer for a Transfer-Encoding other than one `chunked`.

    RFC 9110 §15.6.2: a coding the server does not know is 501. Chunked
    named twice (in one header or two) is no coding RPH fails to know but
    a malformed request (RFC 9112 §6.1), 400.
    """
    fields: list[bytes] = []
    for line in lines[1:]:
        if line.startswith((b" ", b"\t")) and fields:
            fields[-1] += line  # RFC 9112 §5.2: a folded line, read as h11 does
        else:
            fields.append(line)
    codings = [
        coding.strip().lower()
        for field in fields
        if field.lower().startswith(b"transfer-encoding:")
        for coding in field.partition(b":")[2].split(b",")
    ]
    unknown = [coding for coding in codings if coding and coding != b"chunked"]
    if unknown:
        shown = unknown[0].decode("latin-1")[:SHOWN_CODING_CHARS]
        return UnsupportedCoding(
            f"Transfer-Encoding {shown} is not supported; send the body as it"
            " is, with Content-Length, or chunked"
        )
    return BadRequest("malformed Transfer-Encoding; expected chunked, named once")


def version_refusal(version: bytes) -> RPHError:
    shown = version.decode("latin-1")
    return VersionNotSupported(f"HTTP/{shown} is not supported; use HTTP/1.1")
