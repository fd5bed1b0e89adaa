"""The stand-in backend behaves as the tests and benchmarks of RPH rely on.

Each test runs examples/standin.py as a real child process on a free port
and talks to it over real sockets.
"""

import contextlib
import hashlib
import http.client
import itertools
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

STANDIN = Path(__file__).resolve().parent.parent / "examples" / "standin.py"
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)\n")


@contextlib.contextmanager
def running_standin(*args: str) -> Iterator[int]:
    """Run the stand-in on a free port, yield the port, then stop it with
    SIGTERM and check that it said so and exited 0."""
    command = [sys.executable, str(STANDIN), "--port", "0", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = LISTENING.fullmatch(line)
        assert match, f"unexpected first line {line!r}"
        yield int(match[1])
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            rest, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    assert process.returncode == 0
    assert rest == "stopping\n"


def get_json(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def read_until_closed(sock: socket.socket) -> bytes:
    received = bytearray()
    while data := sock.recv(65536):
        received += data
    return bytes(received)


pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="stops the stand-in with SIGTERM"
)


@pytest.mark.timeout(30)
def test_streamed_events_arrive_one_token_interval_apart() -> None:
    interval = 0.2
    with running_standin("--token-interval", str(interval)) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = {"stream": True, "max_tokens": 4, "messages": []}
        conn.request("POST", "/v1/chat/completions", json.dumps(body))
        response = conn.getresponse()
        arrivals, events = [], []
        for line in response:
            if line.startswith(b"data: "):
                arrivals.append(time.monotonic())
                events.append(line.removeprefix(b"data: ").strip())
        conn.close()

    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.getheader("Content-Type") == "text/event-stream"
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    texts = [chunk["choices"][0]["delta"].get("content") for chunk in chunks]
    assert texts == [" tok0", " tok1", " tok2", " tok3", None]
    assert [chunk["index"] for chunk in chunks] == [0, 1, 2, 3, 4]
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals[:4])]
    assert all(gap > 0.75 * interval for gap in gaps), gaps


@pytest.mark.timeout(30)
def test_echo_reports_a_chunked_upload_as_received() -> None:
    body = bytes(range(256)) * 8192  # 2 MiB
    head = (
        b"POST /echo?q=1 HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\n"
        b"X-Twice: one\r\n"
        b"x-twice: two\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"Expect: 100-continue\r\n"
        b"\r\n"
    )
    continue_ = b"HTTP/1.1 100 Continue\r\n\r\n"
    with (
        running_standin() as port,
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
    ):
        sock.sendall(head)
        interim = b""
        while len(interim) < len(continue_):
            interim += sock.recv(len(continue_) - len(interim))
        # Only now the body: the stand-in asked for it before reading any.
        assert interim == continue_
        for start in range(0, len(body), 65536):
            piece = body[start : start + 65536]
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        echo = json.loads(response.read())
        response.close()

    assert echo["method"] == "POST"
    assert echo["target"] == "/echo?q=1"
    assert echo["headers"] == [
        ["Host", "127.0.0.1"],
        ["X-Twice", "one"],
        ["x-twice", "two"],
        ["Transfer-Encoding", "chunked"],
        ["Expect", "100-continue"],
    ]
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.timeout(30)
def test_kobold_stream_is_http10_and_ends_with_the_connection() -> None:
    body = json.dumps({"prompt": "Hi", "max_length": 3}).encode()
    request = (
        b"POST /api/extra/generate/stream HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with (
        running_standin("--token-interval", "0.01") as port,
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
    ):
        sock.sendall(request)
        # The client asked for keep-alive; the answer still ends by close.
        received = read_until_closed(sock)

    head, _, payload = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"content-length" not in head.lower()
    assert b"transfer-encoding" not in head.lower()
    events = payload.split(b"\n\n")
    assert events.pop() == b""
    assert all(event.startswith(b"event: message\ndata: ") for event in events)
    tokens = [json.loads(event.split(b"data: ")[1])["token"] for event in events]
    assert tokens == [" tok0", " tok1", " tok2"]


@pytest.mark.parametrize(
    ("body", "wait_for_first_event"),
    [
        ({"stream": True, "max_tokens": 5}, True),
        ({"stream": True, "standin_delay": 20}, False),
    ],
    ids=["between-tokens", "before-the-head"],
)
@pytest.mark.timeout(30)
def test_a_client_leaving_ends_its_stream_at_once(
    body: dict[str, Any], wait_for_first_event: bool
) -> None:
    # Tokens 20 s apart: without watching the socket, nothing would notice.
    with running_standin("--token-interval", "20") as port:
        encoded = json.dumps(body).encode()
        request = b"POST /completion HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (
            len(encoded),
            encoded,
        )
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            if wait_for_first_event:
                received = b""
                while b"data: " not in received:
                    received += sock.recv(65536)
            else:
                time.sleep(0.2)
        left_at = time.monotonic()

        stats = get_json(port, "/stats")
        while stats["aborted_streams"] == 0 and time.monotonic() - left_at < 2:
            time.sleep(0.01)
            stats = get_json(port, "/stats")

    assert stats["aborted_streams"] == 1
    assert stats["completed_streams"] == 0
    assert stats["in_flight"] == 0
