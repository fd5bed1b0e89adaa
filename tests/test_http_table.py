"""Raw bytes in, status out: every malformed, ambiguous or hostile request.

Each case sends its bytes exactly as written — in one write, or in small
pieces where the way a head arrives matters — to an RPH whose one app is
stopped, and checks what a client and the backend would notice: the status
RPH answered (with the OpenAI-style error body, and `Connection: close`
when it closes), whether the app was started, and whether the request
reached it. Control endpoints are refused to other sites and names.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import orjson
import pytest
import trio
from support import app, connect, running_rph

from rph.errors import HeadTooLarge
from rph.net import http as rph_http
from rph.net.client import ClientConnection

# Every case holds whether a lane or the connection's task answers it.
pytestmark = pytest.mark.usefixtures("answered_by")

HOST = b"Host: 127.0.0.1\r\n"
CLOSE = b"Connection: close\r\n"
MAX_BODY = 1000  # the app's max_body in every case
OVER = MAX_BODY * 2
HUGE_HEAD = 70 * 1024  # over the 64 KiB head limit


@dataclass(frozen=True)
class Case:
    data: bytes
    status: int  # 0: no answer at all
    forwarded: bool = False  # the app was started and got the request
    piece: int | None = None  # written in pieces of this many bytes
    pause: float = 0.0  # between pieces: a slow client
    eof: bool = False  # the client half-closes after its bytes
    deadline: float | None = None  # RPH's idle, head and body deadlines
    coordinator_on: bool = True  # after the request


def get(path: bytes, *headers: bytes, version: bytes = b"1.1") -> bytes:
    return b"GET %s HTTP/%s\r\n" % (path, version) + b"".join(headers) + b"\r\n"


def post(*headers: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    head = b"POST /echo HTTP/%s\r\n" % version + b"".join(headers) + b"\r\n"
    return head + body


def chunked(*chunks: bytes) -> bytes:
    head = post(HOST, CLOSE, b"Transfer-Encoding: chunked\r\n")
    return head + b"".join(chunks)


def also_bytewise(cases: dict[str, Case], *names: str) -> None:
    """Add each named case again, written one byte at a time."""
    for name in names:
        cases[f"{name}, byte by byte"] = replace(cases[name], piece=1)


cases: dict[str, Case] = {
    # Requests RPH must forward, for contrast.
    "plain GET": Case(get(b"/echo", HOST, CLOSE), 200, forwarded=True),
    "valid chunked body": Case(
        chunked(b"5\r\nhello\r\n", b"6;ext=1\r\n world\r\n", b"0\r\nX-T: 1\r\n\r\n"),
        200,
        forwarded=True,
    ),
    "identical Content-Lengths": Case(
        post(HOST, CLOSE, b"Content-Length: 3\r\n" * 2, body=b"abc"),
        200,
        forwarded=True,
    ),
    "empty line before the request": Case(
        b"\r\n" + get(b"/echo", HOST, CLOSE), 200, forwarded=True
    ),
    "folded header": Case(get(b"/echo", HOST, CLOSE, b"X: a\r\n b\r\n"), 200, True),
    "bare LF line ends": Case(
        b"GET /echo HTTP/1.1\nHost: x\nConnection: close\n\n", 200, True
    ),
    "HTTP/1.0 without Host": Case(get(b"/echo", version=b"1.0"), 200, forwarded=True),
    # Framing that two parsers could read two ways.
    "Content-Length with Transfer-Encoding": Case(
        post(HOST, b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n")
        + b"0\r\n\r\n",
        400,
    ),
    "Transfer-Encoding with Content-Length": Case(
        post(HOST, b"Transfer-Encoding: chunked\r\n", b"Content-Length: 5\r\n")
        + b"0\r\n\r\n",
        400,
    ),
    "differing Content-Lengths": Case(
        post(HOST, b"Content-Length: 3\r\n", b"Content-Length: 4\r\n", body=b"abcd"),
        400,
    ),
    "Content-Length list that differs": Case(
        post(HOST, b"Content-Length: 3, 4\r\n", body=b"abcd"), 400
    ),
    "Content-Length not a number": Case(post(HOST, b"Content-Length: 1e3\r\n"), 400),
    "negative Content-Length": Case(post(HOST, b"Content-Length: -1\r\n"), 400),
    "Transfer-Encoding on HTTP/1.0": Case(
        post(b"Transfer-Encoding: chunked\r\n", version=b"1.0") + b"0\r\n\r\n", 400
    ),
    "Transfer-Encoding gzip": Case(
        post(HOST, b"Transfer-Encoding: gzip\r\n") + b"0\r\n\r\n", 501
    ),
    "Transfer-Encoding gzip, chunked": Case(
        post(HOST, b"Transfer-Encoding: gzip, chunked\r\n") + b"0\r\n\r\n", 501
    ),
    "chunk size not hex": Case(chunked(b"zz\r\nhello\r\n0\r\n\r\n"), 400),
    "negative chunk size": Case(chunked(b"-5\r\nhello\r\n0\r\n\r\n"), 400),
    "chunk size with 0x": Case(chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400),
    "chunk size of 30 digits": Case(chunked(b"f" * 30 + b"\r\nab\r\n"), 400),
    "chunk longer than its size": Case(chunked(b"3\r\nhello\r\n0\r\n\r\n"), 400),
    # Heads that are not HTTP/1.1 as a backend would read it.
    "NUL in a header": Case(get(b"/", HOST, b"X-A: a\x00b\r\n"), 400),
    "bare CR in a header": Case(get(b"/", HOST, b"X-A: a\rb\r\n"), 400),
    "space before a colon": Case(get(b"/", HOST, b"X-A : b\r\n"), 400),
    "space in the target": Case(get(b"/a b", HOST), 400),
    "missing Host on HTTP/1.1": Case(get(b"/echo"), 400),
    "two Hosts": Case(get(b"/echo", HOST, b"Host: 127.0.0.2\r\n"), 400),
    "HTTP/2.0 request line": Case(get(b"/echo", HOST, version=b"2.0"), 505),
    "client closes in the middle of a head": Case(
        b"GET /echo HTTP/1.1\r\nHo", 400, eof=True
    ),
    # Limits.
    "head over 64 KiB": Case(
        get(b"/", HOST, b"X-Big: " + b"a" * HUGE_HEAD + b"\r\n"), 431
    ),
    "head over 64 KiB, in pieces": Case(
        get(b"/", HOST, b"X-Big: " + b"a" * HUGE_HEAD + b"\r\n"), 431, piece=512
    ),
    "101 header lines": Case(get(b"/", HOST, *[b"X-N: 1\r\n"] * 100), 431),
    "Content-Length over max_body": Case(
        post(HOST, b"Content-Length: %d\r\n" % OVER, body=b"x" * OVER), 413
    ),
    "Content-Length over max_body, with Expect": Case(
        post(HOST, b"Content-Length: %d\r\n" % OVER, b"Expect: 100-continue\r\n"), 413
    ),
    "absurd Content-Length": Case(
        post(HOST, b"Content-Length: " + b"9" * 19 + b"\r\n"), 413
    ),
    "chunked body over max_body": Case(
        chunked(b"%x\r\n" % OVER, b"x" * OVER, b"\r\n0\r\n\r\n"), 413
    ),
    "client closes in the middle of a body": Case(
        post(HOST, b"Content-Length: 10\r\n", body=b"abc"), 0, eof=True
    ),
    "client closes in the middle of a chunked body": Case(
        chunked(b"a\r\nabc"), 0, eof=True
    ),
    # Slow clients (deadlines shortened from 30 s).
    "silent connection": Case(b"", 0, deadline=0.2),
    "head trickling in slower than the deadline": Case(
        get(b"/echo", HOST), 408, piece=1, pause=0.02, deadline=0.2
    ),
    "body stalling while buffered": Case(
        post(HOST, b"Content-Length: 10\r\n", body=b"abc"), 408, deadline=0.2
    ),
    # Control endpoints refuse other sites and names, and change nothing.
    "coordinator from another site": Case(
        get(b"/stopcoordinator", HOST, CLOSE, b"Origin: http://evil.example\r\n"), 403
    ),
    "coordinator from a null origin": Case(
        get(b"/stopcoordinator", HOST, CLOSE, b"Origin: null\r\n"), 403
    ),
    "coordinator, cross-site fetch": Case(
        get(b"/stopcoordinator", HOST, CLOSE, b"Sec-Fetch-Site: cross-site\r\n"), 403
    ),
    "coordinator via a rebound name": Case(
        get(b"/stopcoordinator", b"Host: evil.example:6000\r\n", CLOSE), 403
    ),
    "coordinator via a host that is no host": Case(
        get(b"/stopcoordinator", b"Host: [::1\r\n", CLOSE), 403
    ),
    "coordinator from an origin that is no URL": Case(
        get(b"/stopcoordinator", HOST, CLOSE, b"Origin: http://[evil\r\n"), 403
    ),
    "app start via a rebound name": Case(
        b"POST /rph/apps/llm/start HTTP/1.1\r\nHost: evil.example\r\n"
        b"Content-Length: 0\r\nConnection: close\r\n\r\n",
        403,
    ),
    "coordinator from the same site": Case(
        get(b"/stopcoordinator", HOST, CLOSE, b"Origin: http://127.0.0.1:6000\r\n"),
        200,
        coordinator_on=False,
    ),
    "coordinator via localhost": Case(
        get(b"/stopcoordinator", b"Host: localhost:6000\r\n", CLOSE),
        200,
        coordinator_on=False,
    ),
}
also_bytewise(
    cases,
    "valid chunked body",
    "Content-Length with Transfer-Encoding",
    "differing Content-Lengths",
    "Transfer-Encoding gzip",
    "chunk size not hex",
    "NUL in a header",
    "bare CR in a header",
    "missing Host on HTTP/1.1",
    "two Hosts",
)


async def send_raw(port: int, case: Case) -> bytes:
    """Send the case's bytes as it says; return all received until EOF."""
    sock = await connect(port)
    received = b""
    async with sock:
        try:
            if case.piece is None:
                await sock.send_all(case.data)
            else:
                for start in range(0, len(case.data), case.piece):
                    await sock.send_all(case.data[start : start + case.piece])
                    if case.pause:
                        await trio.sleep(case.pause)
            if case.eof:
                await sock.send_eof()
        except trio.BrokenResourceError:
            pass  # RPH may refuse before reading everything
        with trio.fail_after(10):
            while chunk := await sock.receive_some(65536):
                received += chunk
    return received


def final_response(raw: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """The status, headers and body of the first non-1xx response."""
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if status >= 200:
            length = int(headers.get(b"content-length", b"0"))
            return status, headers, rest[:length]
        raw = rest
    return 0, {}, b""


async def backend_requests(port: int) -> int:
    """How many requests the stand-in on `port` answered, this one excluded."""
    sock = await connect(port)
    async with sock:
        await sock.send_all(get(b"/stats", HOST, CLOSE))
        raw = b""
        while chunk := await sock.receive_some(65536):
            raw += chunk
    return int(orjson.loads(final_response(raw)[2])["requests"]) - 1


@pytest.mark.timeout(15)
@pytest.mark.parametrize("case", cases.values(), ids=cases.keys())
async def test_raw_request(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    if case.deadline is not None:
        for name in ("IDLE_DEADLINE", "HEAD_DEADLINE", "BODY_IDLE_DEADLINE"):
            monkeypatch.setattr(rph_http, name, case.deadline)
    llm = app(max_body=MAX_BODY)
    async with running_rph([llm]) as rph:
        raw = await send_raw(rph.port, case)
        status, headers, body = final_response(raw)
        assert status == case.status, raw[:300]

        if status >= 400:
            error = orjson.loads(body)["error"]
            assert {"message", "type", "code"} <= error.keys()
            assert error["message"]
            assert headers[b"connection"] == b"close"
        started = rph.supervisor.apps["llm"].starts > 0
        assert started == case.forwarded
        if started:
            assert await backend_requests(llm.endpoint_port) == 1
        assert rph.supervisor.coordinator_on == case.coordinator_on


async def test_oversized_head_in_a_single_read_is_refused() -> None:
    # h11 checks its limit only while it waits for more, so the head must
    # arrive whole in one read to reach RPH's own check: a socketpair holds
    # it all before RPH reads.
    ours, theirs = trio.socket.socketpair()
    head = get(b"/", HOST, b"X-Big: " + b"a" * HUGE_HEAD + b"\r\n")
    with ours, theirs:
        await theirs.send(head)
        conn = ClientConnection(trio.SocketStream(ours), "test")
        async with conn.stream, trio.open_nursery() as nursery:
            nursery.start_soon(conn.read_continuously)
            with pytest.raises(HeadTooLarge):
                await rph_http.read_request(conn, lambda path: MAX_BODY)
            nursery.cancel_scope.cancel()
        assert len(conn.buffer) == len(head)  # all of it came in one read
