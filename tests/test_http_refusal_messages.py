"""What a client reads when RPH refuses a request it cannot read.

The status says what kind of mistake it was; the message, shown by
front-ends and logged, says it in plain words: never the parser's
internals (a `bytearray(b'...')`), never the same thing twice. Each case
goes through a real RPH, in one write, answered by a lane or by the
connection's task alike.
"""

from __future__ import annotations

import logging

import orjson
import pytest
from support import app, raw_exchange, running_rph

pytestmark = pytest.mark.usefixtures("answered_by")

HOST = b"Host: 127.0.0.1\r\n"

# The parser's words that must not reach a person.
INTERNALS = ("bytearray", "b'", "h11", "illegal", "peer")

MALFORMED_LINE = "malformed request line; expected METHOD /path HTTP/1.1"

cases: dict[str, tuple[bytes, int, str]] = {
    "garbage": (b"GARBAGE\r\n\r\n", 400, MALFORMED_LINE),
    "no version": (b"GET /\r\n" + HOST + b"\r\n", 400, MALFORMED_LINE),
    "HTTPS/1.1": (b"GET / HTTPS/1.1\r\n" + HOST + b"\r\n", 400, MALFORMED_LINE),
    "HTTP/1.1.1": (b"GET / HTTP/1.1.1\r\n" + HOST + b"\r\n", 400, MALFORMED_LINE),
    "HTTP/3 after a target with a space": (
        b"GET /a b HTTP/3\r\n" + HOST + b"\r\n",
        400,
        MALFORMED_LINE,
    ),
    "HTTP/3": (
        b"GET / HTTP/3\r\n" + HOST + b"\r\n",
        505,
        "HTTP/3 is not supported; use HTTP/1.1",
    ),
    "HTTP/2": (
        b"GET / HTTP/2\r\n" + HOST + b"\r\n",
        505,
        "HTTP/2 is not supported; use HTTP/1.1",
    ),
    "HTTP/0.9": (
        b"GET / HTTP/0.9\r\n\r\n",
        505,
        "HTTP/0.9 is not supported; use HTTP/1.1",
    ),
    "space before a colon": (
        b"GET / HTTP/1.1\r\n" + HOST + b"X-A : b\r\n\r\n",
        400,
        "malformed header line; expected Name: value",
    ),
    "missing Host": (
        b"GET / HTTP/1.1\r\n\r\n",
        400,
        "missing Host header (HTTP/1.1 requires one)",
    ),
    "differing Content-Lengths": (
        b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 1\r\nContent-Length: 2\r\n"
        b"\r\nab",
        400,
        "the Content-Length values differ",
    ),
    "chunk size not hex": (
        b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n",
        400,
        "malformed chunk size; expected a hexadecimal number",
    ),
    "chunked, chunked": (
        b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked, chunked\r\n"
        b"\r\n0\r\n\r\n",
        400,
        "malformed Transfer-Encoding; expected chunked, named once",
    ),
    "chunked in two headers": (
        b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "malformed Transfer-Encoding; expected chunked, named once",
    ),
    "gzip": (
        b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip\r\n\r\n",
        501,
        "Transfer-Encoding gzip is not supported; send the body as it is,"
        " with Content-Length, or chunked",
    ),
    "gzip in a second header": (
        b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: GZip\r\n\r\n0\r\n\r\n",
        501,
        "Transfer-Encoding gzip is not supported; send the body as it is,"
        " with Content-Length, or chunked",
    ),
    "gzip on a folded line": (
        b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n"
        b" , gzip\r\n\r\n0\r\n\r\n",
        501,
        "Transfer-Encoding gzip is not supported; send the body as it is,"
        " with Content-Length, or chunked",
    ),
}


@pytest.mark.timeout(15)
@pytest.mark.parametrize(("data", "status", "message"), cases.values(), ids=cases)
async def test_a_refusal_says_what_was_wrong_in_plain_words(
    data: bytes, status: int, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rph")
    llm = app()
    async with running_rph([llm]) as rph:
        raw = await raw_exchange(rph.port, data)
        assert rph.supervisor.apps["llm"].starts == 0

    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode(), raw
    assert b"\r\nConnection: close" in head
    assert orjson.loads(body)["error"]["message"] == message
    logged = [r.getMessage() for r in caplog.records if r.name == "rph.net"]
    assert [line for line in logged if line.endswith(f": {status} {message}")]
    for word in INTERNALS:
        assert word not in message.lower()
