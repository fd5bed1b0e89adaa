"""The request heads RPH sees most, read without h11.

Nearly every request a desktop sends has a plain head: a request line,
header lines ending in CRLF, a `Host`, at most one `Content-Length` and no
`Transfer-Encoding`. h11 takes about 25 µs to read one, the largest part
of what RPH adds to a small request on a kept connection; two regular
expressions take a tenth of that.

`read_plain_head` reads only heads of that shape, and reads them exactly
as h11 would: same request line, same headers with the same values. For
anything else it declines (None) and h11 reads the head, answering its
errors: what is not plain is never read two ways. Its grammar is h11's,
restricted: CRLF line ends only, no folded lines, no `Transfer-Encoding`,
HTTP/1.0 and 1.1 only (tests/test_plainhead.py compares the two).
"""

from __future__ import annotations

import re

# RFC 9110 §5.6.2: a token; a method and a header name are tokens.
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"

# RFC 9112 §3: method SP request-target SP HTTP-version.
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.([01])")

# RFC 9112 §5: name ":" OWS value OWS. A value's characters are h11's:
# anything but NUL and white space, with spaces and tabs only inside.
_VALUE_CHAR = rb"[^\x00\s]"
_FIELD = re.compile(
    rb"(" + _TOKEN + rb"):[ \t]*"
    rb"((?:" + _VALUE_CHAR + rb"+(?:[ \t]+" + _VALUE_CHAR + rb"+)*)?)[ \t]*"
)

# h11 allows 20 digits; a body RPH accepts needs far fewer.
_LENGTH = re.compile(rb"[0-9]{1,18}")

PlainHead = tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]], int]


def read_plain_head(buffer: bytearray, limit: int) -> PlainHead | None:
    """The method, target, version, headers and head length of the plain
    head that starts `buffer`, if it is whole and at most `limit` bytes;
    else None."""
    end = buffer.find(b"\r\n\r\n", 0, limit)
    if end < 0:
        return None
    lines = bytes(buffer[:end]).split(b"\r\n")
    request_line = _REQUEST_LINE.fullmatch(lines[0])
    if request_line is None:
        return None

    headers = []
    hosts = lengths = 0
    for line in lines[1:]:
        field = _FIELD.fullmatch(line)
        if field is None:
            return None
        name, value = field.groups()
        lowered = name.lower()
        if lowered == b"host":
            hosts += 1
        elif lowered == b"content-length":
            lengths += 1
            if not _LENGTH.fullmatch(value):
                return None
        elif lowered == b"transfer-encoding":
            return None
        headers.append((name, value))

    method, target, minor = request_line.groups()
    version = b"1." + minor
    # h11 refuses a 1.1 request without one Host, and any with two; it
    # keeps only one of equal Content-Lengths: those are its to answer.
    if hosts > 1 or (version == b"1.1" and not hosts) or lengths > 1:
        return None
    return method, target, version, headers, end + 4
