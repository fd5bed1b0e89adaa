"""Plain request heads are read without h11, exactly as h11 reads them.

A head read two ways is how a request smuggles itself past a proxy: RPH
must never read a head differently from h11, which answers every head
that is not plain. These tests hold net/plainhead against h11 itself, on
heads that real clients send, on plain heads built from their grammar, and
on heads built from the characters and lines where readers of HTTP usually
disagree.
"""

from __future__ import annotations

import string

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rph.errors import BadRequest, HeadTooLarge
from rph.net import http
from rph.net.plainhead import read_plain_head

LIMIT = http.HEAD_LIMIT


def read_by_h11(head: bytes) -> object:
    """What h11 makes of `head`: the request's parts, "incomplete" or
    "refused"."""
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=LIMIT)
    parser.receive_data(head)
    try:
        event = parser.next_event()
    except h11.RemoteProtocolError:
        return "refused"
    if not isinstance(event, h11.Request):
        return "incomplete"
    head_size = len(head) - len(parser.trailing_data[0])
    headers = list(event.headers.raw_items())
    return event.method, event.target, event.http_version, headers, head_size


CLIENT_HEADS = [
    # SillyTavern's generation request to a text-completion backend.
    b"POST /api/v1/generate HTTP/1.1\r\naccept: */*\r\n"
    b"content-type: application/json\r\ncontent-length: 512\r\n"
    b"User-Agent: node-fetch\r\nAccept-Encoding: gzip,deflate\r\n"
    b"Host: 127.0.0.1:5001\r\nConnection: keep-alive\r\n\r\n",
    # The OpenAI SDK (Python), with an empty key and extra headers.
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost:8080\r\n"
    b"Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n"
    b"Accept: application/json\r\nContent-Type: application/json\r\n"
    b"User-Agent: OpenAI/Python 1.54.0\r\nX-Stainless-Lang: python\r\n"
    b"Authorization: Bearer \r\nContent-Length: 97\r\n\r\n",
    # curl, and an HTTP/1.0 client that sends no Host at all.
    b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:7000\r\n"
    b"User-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
    b"GET /health HTTP/1.0\r\n\r\n",
]


@pytest.mark.parametrize("head", CLIENT_HEADS)
def test_heads_that_clients_send_are_read_plainly_as_h11_reads_them(
    head: bytes,
) -> None:
    buffer = bytearray(head + b"body bytes that follow")

    plain = read_plain_head(buffer, LIMIT)

    assert plain is not None
    assert plain == read_by_h11(bytes(buffer))


@pytest.mark.parametrize(
    ("head", "why"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n X-Folded: b\r\n\r\n", "a folded line"),
        (b"GET / HTTP/1.1\nHost: a\n\n", "bare LF line ends"),
        (b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", "one bare LF"),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "space before the colon"),
        (b"GET / HTTP/1.1\r\n\r\n", "no Host in HTTP/1.1"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "two Hosts"),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", "another version"),
        (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", "another minor version"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", "a list"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", "a sign"),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
            b"Content-Length: 5\r\n\r\n",
            "two Content-Lengths",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "Transfer-Encoding",
        ),
        (b"GET / HTTP/1.1\r\nHost: a\x0cb\r\n\r\n", "a form feed in a value"),
        (b"GET / HTTP/1.1\r\nHost: a\x00\r\n\r\n", "a NUL in a value"),
        (b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", "a space in the target"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n", "an unfinished head"),
    ],
)
def test_a_head_that_is_not_plain_is_left_to_h11(head: bytes, why: str) -> None:
    assert read_plain_head(bytearray(head), LIMIT) is None, why


def test_a_plain_head_over_the_limit_is_left_to_h11_which_refuses_it() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * LIMIT + b"\r\n\r\n"

    assert read_plain_head(bytearray(head), LIMIT) is None
    with pytest.raises(HeadTooLarge):
        http.parse_head(bytearray(head))


def test_too_many_header_lines_are_refused_however_the_head_is_read() -> None:
    lines = b"".join(b"X-%d: v\r\n" % n for n in range(http.HEADER_LINES_LIMIT))
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + lines + b"\r\n"

    assert read_plain_head(bytearray(head), LIMIT) is not None
    with pytest.raises(HeadTooLarge):
        http.parse_head(bytearray(head))


def test_a_request_h11_refuses_is_still_refused() -> None:
    with pytest.raises(BadRequest):
        http.parse_head(bytearray(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"))


# Where readers of HTTP disagree: white space of every kind, separators,
# NUL and other controls, bytes over 0x7f, line ends cut in half.
TRICKY = [b" ", b"\t", b"\r", b"\n", b"\r\n", b":", b",", b"\x00", b"\x01"]
TRICKY += [b"\x0b", b"\x0c", b"\x7f", b"\x80", b"\xff", b"a", b"5", b"/"]
TRICKY_BYTES = [piece for piece in TRICKY if len(piece) == 1]

# Headers only h11 may read: it reads a list of equal lengths as one
# length, and lengths of up to 20 digits; plainhead reads neither.
H11_ONLY = [
    b"Transfer-Encoding: chunked",
    b"transfer-encoding:CHUNKED",
    b"Transfer-Encoding: gzip",
    b"Content-Length: 5, 5",
    b"Content-Length: 5,5",
    b"Content-Length: 5, 6",
    b"Content-Length: " + b"1" * 19,
    b"Content-Length: " + b"9" * 20,
    b"Content-Length: " + b"9" * 21,
]

methods = st.sampled_from([b"GET", b"POST", b"M-1", b"get"])
targets = st.sampled_from([b"/", b"/v1/models?a=b", b"*", b"http://a/b"])
versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2"])
names = st.sampled_from(
    [b"Host", b"Content-Length", b"X-A", b"Connection", b"Transfer-Encoding"]
)
values = st.sampled_from(
    [b"a", b"12", b"", b"keep-alive, close", b"a\tb  c", b"chunked", b"5, 5"]
)
# Lengths around plainhead's bound (18 digits) and h11's (20).
values |= st.sampled_from([b"1" * 18, b"1" * 19, b"9" * 21])
separators = st.sampled_from([b": ", b":", b":\t", b":  "])
trailing = st.sampled_from([b"", b" ", b"\t \t"])

# The grammar of a plain head as h11 reads it: tokens for the method and the
# names (RFC 9110 §5.6.2), and in a value any byte but NUL and white space:
# laxer than RFC 9110 §5.5, which allows no controls, but it is h11's rule.
TOKEN_CHARS = "-!#$%&'*+.^_`|~" + string.digits + string.ascii_letters
WHITE = b" \t\n\x0b\x0c\r"
VALUE_BYTES = [byte for byte in range(1, 256) if byte not in WHITE]
SPECIAL = {b"host", b"content-length", b"transfer-encoding"}

tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12).map(str.encode)
plain_targets = st.lists(st.integers(0x21, 0x7E), min_size=1, max_size=24).map(bytes)
words = st.lists(st.sampled_from(VALUE_BYTES), min_size=1, max_size=6).map(bytes)
spaces = st.sampled_from([b" ", b"\t", b"  ", b" \t "])
optional_spaces = st.sampled_from([b"", b" ", b"\t", b" \t "])
# Leading zeros included; plainhead reads up to 18 digits.
lengths = st.text(string.digits, min_size=1, max_size=18).map(str.encode)


@st.composite
def cased(draw: st.DrawFn, name: bytes) -> bytes:
    """`name` with each letter in either case, as clients spell it."""
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    letters = zip(name.decode(), flips, strict=True)
    return "".join(c.upper() if flip else c.lower() for c, flip in letters).encode()


@st.composite
def header_values(draw: st.DrawFn) -> bytes:
    """A value with spaces and tabs only between its characters."""
    value = b""
    for index, word in enumerate(draw(st.lists(words, max_size=4))):
        value += (draw(spaces) if index else b"") + word
    return value


@st.composite
def plain_heads(draw: st.DrawFn) -> bytes:
    """A plain head, by construction: a request line, then header lines in
    any order with one Host (none or one in HTTP/1.0), at most one
    Content-Length of at most 18 digits and no Transfer-Encoding."""
    version = draw(st.sampled_from([b"1.0", b"1.1"]))
    request_line = draw(tokens) + b" " + draw(plain_targets) + b" HTTP/" + version
    fields = []
    if version == b"1.1" or draw(st.booleans()):
        fields.append((draw(cased(b"Host")), draw(header_values())))
    if draw(st.booleans()):
        fields.append((draw(cased(b"Content-Length")), draw(lengths)))
    others = tokens.filter(lambda name: name.lower() not in SPECIAL)
    for _ in range(draw(st.integers(0, 4))):
        fields.append((draw(others), draw(header_values())))
    lines = [
        name + b":" + draw(optional_spaces) + value + draw(optional_spaces)
        for name, value in draw(st.permutations(fields))
    ]
    return b"\r\n".join([request_line, *lines]) + b"\r\n\r\n"


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    """A head, plain or nearly, then changed by bytes that readers of HTTP
    disagree on: about half the time in one byte only (a head one byte from
    plain is where two grammars part), else in up to three places."""
    if draw(st.booleans()):
        head = bytearray(draw(plain_heads()))
    else:
        lines = [b" ".join([draw(methods), draw(targets), draw(versions)])]
        if draw(st.integers(0, 3)):
            lines.append(b"Host: " + draw(values))
        for _ in range(draw(st.integers(0, 3))):
            field = draw(names) + draw(separators) + draw(values) + draw(trailing)
            lines.append(field)
        head = bytearray(b"\r\n".join(lines) + b"\r\n\r\n")
    if draw(st.booleans()):
        at = draw(st.integers(0, len(head) - 1))
        head[at : at + 1] = draw(st.sampled_from(TRICKY_BYTES))
    else:
        for _ in range(draw(st.integers(0, 3))):
            at = draw(st.integers(0, len(head)))
            cut = draw(st.integers(0, 2))
            head[at : at + cut] = draw(st.sampled_from(TRICKY))
    return bytes(head) + draw(st.binary(max_size=8))


@settings(max_examples=3000, deadline=None)
@given(heads())
def test_whatever_plainhead_reads_h11_reads_the_same(head: bytes) -> None:
    plain = read_plain_head(bytearray(head), LIMIT)

    if plain is not None:
        assert plain == read_by_h11(head)


@settings(max_examples=1000, deadline=None)
@given(plain_heads(), st.binary(max_size=8))
def test_a_plain_head_is_read_plainly_as_h11_reads_it(
    head: bytes, after: bytes
) -> None:
    plain = read_plain_head(bytearray(head + after), LIMIT)

    assert plain is not None
    assert plain == read_by_h11(head + after)


@settings(max_examples=300, deadline=None)
@given(plain_heads(), st.sampled_from(H11_ONLY), st.integers(0, 5))
def test_a_header_only_h11_may_read_leaves_the_head_to_h11(
    head: bytes, header: bytes, place: int
) -> None:
    lines = head.split(b"\r\n")
    at = 1 + place % (len(lines) - 2)  # after the request line, before the end
    head = b"\r\n".join([*lines[:at], header, *lines[at:]])

    assert read_plain_head(bytearray(head), LIMIT) is None
    assert read_by_h11(head) != "incomplete"  # h11 reads it whole, or refuses it
