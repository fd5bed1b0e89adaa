"""Where a backend's response ends, however its bytes are cut into reads.

RPH follows a response's framing only to know where it ends; getting that
wrong either cuts a response or glues the next one onto it. These tests
feed the framing code what a socket might deliver: any split of a valid
body, heads framed every way a backend may, and framing that is broken.
"""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rph.errors import BackendFailed
from rph.net.framing import (
    BodyEnd,
    ChunkedTracker,
    Framing,
    find_head_end,
    parse_response_head,
)


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    """A valid chunked body: chunks with optional extensions, then trailers."""
    body = b""
    for payload in draw(st.lists(st.binary(min_size=1, max_size=300), max_size=8)):
        size = b"%x" % len(payload)
        if draw(st.booleans()):
            size = size.upper()
        extension = draw(st.sampled_from([b"", b";a=1", b' ;name="v"', b"\t"]))
        body += size + extension + b"\r\n" + payload + b"\r\n"
    trailers = draw(st.lists(st.sampled_from([b"X-T: 1", b"Digest: abc"]), max_size=2))
    return body + b"0\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def feed_all(pieces: list[bytes]) -> int:
    """Where the tracker says the body ends, counted from the first byte."""
    tracker = ChunkedTracker()
    offset = 0
    for piece in pieces:
        end = tracker.feed(piece)
        if end >= 0:
            return offset + end
        offset += len(piece)
    return -1


@given(
    body=chunked_bodies(),
    after=st.binary(max_size=50),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
)
def test_any_split_of_a_chunked_body_ends_in_the_same_place(
    body: bytes, after: bytes, cuts: list[int]
) -> None:
    assert feed_all(split(body + after, cuts)) == len(body)


def whole_chunks(body: bytes) -> list[bytes]:
    """`body` cut as a token stream arrives: a piece for each whole chunk,
    then one for the last chunk and the trailers."""
    pieces = []
    while not body.startswith(b"0"):
        line_end = body.index(b"\r\n") + 2
        size = int(re.match(rb"[0-9A-Fa-f]+", body)[0], 16)  # type: ignore[index]
        end = line_end + size + 2
        pieces.append(body[:end])
        body = body[end:]
    return [*pieces, body]


@given(body=chunked_bodies(), after=st.binary(max_size=50))
def test_a_body_fed_a_chunk_at_a_time_ends_in_the_same_place(
    body: bytes, after: bytes
) -> None:
    pieces = whole_chunks(body)
    assert b"".join(pieces) == body
    assert feed_all([*pieces, after]) == len(body)
    # The data of a whole chunk one byte longer than its size is refused.
    if len(pieces) > 1:
        with pytest.raises(ValueError, match="chunk"):
            feed_all([pieces[0][:-2] + b"x\r\n"])


@pytest.mark.parametrize(
    ("pieces", "end"),
    [
        # A piece shaped like a whole chunk but for its last two bytes.
        ([b"5\r\nhelloXY", b"3\r\nabc\r\n0\r\n\r\n"], None),
        # A piece shaped like a whole chunk inside another chunk's data.
        ([b"8\r\n", b"1\r\nx\r\n", b"AB\r\n0\r\n\r\n"], 18),
    ],
    ids=["no CRLF after the data", "within a chunk's data"],
)
def test_pieces_that_look_like_whole_chunks(
    pieces: list[bytes], end: int | None
) -> None:
    if end is None:
        with pytest.raises(ValueError, match="chunk"):
            feed_all(pieces)
    else:
        assert feed_all(pieces) == end


@given(body=chunked_bodies(), cut=st.integers(min_value=1))
def test_an_unfinished_chunked_body_never_ends(body: bytes, cut: int) -> None:
    unfinished = body[: cut % len(body)]
    assert feed_all(split(unfinished, [cut // 7, cut // 3])) == -1


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nhello\r\n",
        b"-5\r\nhello\r\n",
        b"0x5\r\nhello\r\n",
        b" 5\r\nhello\r\n",
        b"\r\n",
        b"1" * 17 + b"\r\n",
        b"3\r\nhello\r\n",  # data longer than its size
        b"5\r\nhello" + b"x" * 5000,
        b"5;" + b"e" * 5000,  # a size line that never ends
    ],
)
def test_broken_chunked_framing_is_refused(body: bytes) -> None:
    for size in (len(body), 1):  # in one piece, and byte by byte
        tracker = ChunkedTracker()
        with pytest.raises(ValueError, match="chunk"):  # noqa: PT012
            for start in range(0, len(body), size):
                tracker.feed(body[start : start + size])


HEADS = {
    "content-length": (b"HTTP/1.1 200 OK\r\nContent-Length: 5", Framing.LENGTH, 5),
    "repeated length": (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5", Framing.LENGTH, 5),
    "chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", Framing.CHUNKED, 0),
    "gzip then chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked",
        Framing.CHUNKED,
        0,
    ),
    "chunked then gzip": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip",
        Framing.CLOSE,
        0,
    ),
    "no length": (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain", Framing.CLOSE, 0),
    "HTTP/1.0": (b"HTTP/1.0 200 OK\r\nContent-Length: 2", Framing.LENGTH, 2),
    "no reason": (b"HTTP/1.1 200\r\nContent-Length: 2", Framing.LENGTH, 2),
    "204": (b"HTTP/1.1 204 No Content", Framing.NONE, 0),
    "304 with a length": (
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9",
        Framing.NONE,
        9,
    ),
    "103": (b"HTTP/1.1 103 Early Hints\r\nLink: </a>", Framing.NONE, 0),
    "101": (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket",
        Framing.TUNNEL,
        0,
    ),
    "bare LF": (b"HTTP/1.1 200 OK\nContent-Length: 3", Framing.LENGTH, 3),
}


@pytest.mark.parametrize(
    ("head", "framing", "length"), HEADS.values(), ids=HEADS.keys()
)
def test_response_framing(head: bytes, framing: Framing, length: int) -> None:
    parsed = parse_response_head(head + b"\r\n\r\n", b"GET")
    assert (parsed.framing, parsed.length) == (framing, length)


def test_response_to_head_has_no_body_whatever_it_says() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n"
    assert parse_response_head(raw, b"HEAD").framing is Framing.NONE


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1",
        b"HTTP/1.1 200 OK\r\nContent-Length:",
        b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b",
        b"HTTP/1.1 200 OK\r\nX-Space : a",
        b"HTTP/1.1 200 OK\r\nno colon",
        b"HTTP/2 200\r\nContent-Length: 1",
        b"SSH-2.0-OpenSSH_9.6",
    ],
)
def test_ambiguous_or_broken_response_heads_are_refused(head: bytes) -> None:
    with pytest.raises(BackendFailed):
        parse_response_head(head + b"\r\n\r\n", b"GET")


@pytest.mark.parametrize(
    ("head", "keeps"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0", True),
        # KoboldCpp's stream: keep-alive in words, but delimited by its close.
        (b"HTTP/1.0 200 OK\r\nconnection: keep-alive", False),
    ],
)
def test_whether_the_backend_keeps_its_connection(head: bytes, keeps: bool) -> None:
    assert parse_response_head(head + b"\r\n\r\n", b"GET").backend_keeps_alive is keeps


@pytest.mark.parametrize(
    ("head", "shown"),
    [
        (
            b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\n"
            b"Content-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
        (
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\nX-A: 1\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nX-A: 1\r\nConnection: close\r\n\r\n",
        ),
        # Already saying so: the head goes unchanged.
        (b"HTTP/1.0 200 OK\r\nX-A: 1\r\n\r\n", b"HTTP/1.0 200 OK\r\nX-A: 1\r\n\r\n"),
        (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
        ),
    ],
)
def test_head_saying_close(head: bytes, shown: bytes) -> None:
    assert parse_response_head(head, b"GET").saying_close() == shown


@given(
    head=st.sampled_from(
        [
            b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n",
            b"HTTP/1.0 204 X\n\n",
            b"HTTP/1.1 200\r\n\n",
        ]
    ),
    body=st.binary(max_size=40),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_head_end_is_found_reading_piece_by_piece(
    head: bytes, body: bytes, cuts: list[int]
) -> None:
    # As the relay searches: each time from just before the newest piece.
    buffer = b""
    for piece in split(head + body, cuts):
        searched = max(0, len(buffer) - 3)
        buffer += piece
        if (end := find_head_end(buffer, searched)) >= 0:
            assert end == len(head)
            return
    pytest.fail("the end of the head was never found")


def body_end(head: bytes) -> BodyEnd:
    return BodyEnd(parse_response_head(head, b"GET"))


LENGTH_5 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
UNTIL_CLOSE = b"HTTP/1.0 200 OK\r\n\r\n"


@pytest.mark.parametrize(
    ("head", "pieces", "expected"),
    [
        # Each piece: what of it is body, whether the body ended, cleanly.
        (LENGTH_5, [b"he", b"llo"], [(b"he", False, False), (b"llo", True, True)]),
        (LENGTH_5, [b"hello"], [(b"hello", True, True)]),
        (LENGTH_5, [b"helloJUNK"], [(b"hello", True, False)]),
        (
            CHUNKED,
            [b"2\r\nhi\r\n", b"0\r\n\r\nJUNK"],
            [(b"2\r\nhi\r\n", False, False), (b"0\r\n\r\n", True, False)],
        ),
        (CHUNKED, [b"2\r\nhi\r\n0\r\n\r\n"], [(b"2\r\nhi\r\n0\r\n\r\n", True, True)]),
        (
            UNTIL_CLOSE,
            [b"0\r\n\r\n", b"more"],
            [(b"0\r\n\r\n", False, False), (b"more", False, False)],
        ),
    ],
    ids=[
        "length",
        "length whole",
        "length and more",
        "chunked and more",
        "chunked whole",
        "until close",
    ],
)
def test_body_end_cuts_each_piece_where_the_body_ends(
    head: bytes, pieces: list[bytes], expected: list[tuple[bytes, bool, bool]]
) -> None:
    body = body_end(head)
    assert [body.cut(piece) for piece in pieces] == expected
    assert body.is_stream == (head != LENGTH_5)
    assert body.ends_at_close == (head == UNTIL_CLOSE)


def test_body_end_refuses_a_broken_chunked_body() -> None:
    with pytest.raises(ValueError, match="bad chunk size"):
        body_end(CHUNKED).cut(b"zz\r\nhi\r\n")
