"""httpx and curl get the same answers through RPH as from the server itself.

With temperature 0 the tiny model answers a prompt the same way every time,
so "the same" means the same text, not just the same status. Headers that
differ by nature (date, request id, timing) are left out of the comparison.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from clients import RawClient, assert_streamed, post, sse_texts
from rph_process import RunningRPH

GREEDY = {"model": "tiny", "temperature": 0, "seed": 1}

# Headers whose values change from one answer to the next.
VARYING = {"date", "x-request-id", "openai-processing-ms", "content-length"}

# A stream long enough to see it arrive in pieces.
STREAM_TOKENS = 300

# llama.cpp's server (uvicorn) closes a kept connection after 5 s idle; a
# client pool keeps it longer. The pause outlasts the server's timeout.
SERVER_KEEP_ALIVE = 5.0
PAUSE_PAST_KEEP_ALIVE = SERVER_KEEP_ALIVE + 1.0

# curl sends `Expect: 100-continue` for a body over 1 MiB; 2 MB of prompt
# takes the server a few seconds to tokenize.
BIG_PROMPT_BYTES = 2 * 1000 * 1000
CURL_TIMEOUT = 120


def comparable(headers: httpx.Headers) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers.multi_items() if k not in VARYING]


@pytest.mark.timeout(90)
def test_httpx_answers_as_the_server_does(rph: RunningRPH) -> None:
    rph.start_app("tiny")
    body = {**GREEDY, "prompt": "The weather today", "max_tokens": 40}
    with (
        httpx.Client(base_url=rph.url("tiny"), timeout=60) as proxied,
        httpx.Client(base_url=rph.direct_url("tiny"), timeout=60) as direct,
    ):
        for method, path, payload in [
            ("GET", "/v1/models", None),
            ("POST", "/v1/completions", body),
            ("POST", "/extras/tokenize", {"input": "hello world"}),
            ("GET", "/no/such/route", None),
        ]:
            ours = proxied.request(method, path, json=payload)
            theirs = direct.request(method, path, json=payload)
            assert ours.status_code == theirs.status_code, path
            assert comparable(ours.headers) == comparable(theirs.headers), path
            if path == "/v1/completions":
                ours_text = ours.json()["choices"][0]["text"]
                assert ours_text == theirs.json()["choices"][0]["text"]
            else:
                assert ours.content == theirs.content, path


@pytest.mark.timeout(90)
def test_httpx_streams_as_the_server_does(rph: RunningRPH) -> None:
    rph.start_app("tiny")
    body = {
        **GREEDY,
        "prompt": "A long time ago",
        "max_tokens": STREAM_TOKENS,
        "stream": True,
    }
    bodies = []
    for base in (rph.url("tiny"), rph.direct_url("tiny")):
        with httpx.Client(base_url=base, timeout=60) as client:
            sent = time.monotonic()
            with client.stream("POST", "/v1/completions", json=body) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                pieces, arrivals = [], []
                for piece in response.iter_raw():
                    pieces.append(piece)
                    arrivals.append(time.monotonic())
        assert_streamed(arrivals, sent)
        bodies.append(b"".join(pieces))
    ours, theirs = (sse_texts(b) for b in bodies)
    assert len(ours) == STREAM_TOKENS
    assert ours == theirs


@pytest.mark.timeout(60)
def test_a_pooled_connection_outlives_the_servers_keep_alive(
    rph: RunningRPH,
) -> None:
    rph.start_app("tiny")
    limits = httpx.Limits(keepalive_expiry=PAUSE_PAST_KEEP_ALIVE * 2)
    with httpx.Client(base_url=rph.url("tiny"), timeout=30, limits=limits) as client:
        assert client.get("/v1/models").status_code == 200
        # RPH kept its connection to the server; the server closes it now.
        time.sleep(PAUSE_PAST_KEEP_ALIVE)
        for _ in range(3):
            assert client.get("/v1/models").status_code == 200


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    binary = shutil.which("curl")
    assert binary, "curl is not installed"
    return subprocess.run(
        [binary, "--silent", "--show-error", *args],
        capture_output=True,
        timeout=CURL_TIMEOUT,
        check=False,
    )


@pytest.mark.timeout(90)
def test_curl_streams_as_the_server_does(rph: RunningRPH) -> None:
    rph.start_app("tiny")
    body = json.dumps(
        {**GREEDY, "prompt": "Far away", "max_tokens": STREAM_TOKENS, "stream": True}
    )
    outputs = []
    for base in (rph.url("tiny"), rph.direct_url("tiny")):
        sent = time.monotonic()
        lines, arrivals = [], []
        with subprocess.Popen(
            [
                *("curl", "-sSN", f"{base}/v1/completions"),
                *("-H", "Content-Type: application/json", "-d", body),
            ],
            stdout=subprocess.PIPE,
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith(b"data: "):
                    lines.append(line)
                    arrivals.append(time.monotonic())
        assert process.returncode == 0
        assert_streamed(arrivals, sent)
        outputs.append(b"".join(lines))
    ours, theirs = (sse_texts(o) for o in outputs)
    assert len(ours) == STREAM_TOKENS
    assert ours == theirs


@pytest.mark.timeout(120)
def test_curl_sends_a_2mb_prompt_from_a_file(rph: RunningRPH, tmp_path: Path) -> None:
    rph.start_app("tiny")
    words = ("lorem", "ipsum", "dolor", "sit", "amet")
    text = " ".join(words[n % len(words)] for n in range(BIG_PROMPT_BYTES // 5))
    prompt = tmp_path / "prompt.json"
    prompt.write_text(json.dumps({"input": text}))
    assert prompt.stat().st_size > BIG_PROMPT_BYTES

    answers = []
    for base in (rph.url("tiny"), rph.direct_url("tiny")):
        result = curl(
            "--verbose",
            f"{base}/extras/tokenize/count",
            "-H",
            "Content-Type: application/json",
            "-d",
            f"@{prompt}",
        )
        assert result.returncode == 0, result.stderr.decode()
        trace = result.stderr.decode()
        assert "> Expect: 100-continue" in trace
        assert "< HTTP/1.1 100 Continue" in trace
        assert "< HTTP/1.1 200 OK" in trace
        answers.append(json.loads(result.stdout))
    ours, theirs = answers
    assert ours == theirs
    assert ours["count"] > len(text) // 10


@pytest.mark.timeout(60)
def test_an_http10_client_gets_an_answer_it_can_read(rph: RunningRPH) -> None:
    # `curl -0`, ab and older tools speak HTTP/1.0: no Host, no chunks.
    rph.start_app("tiny")
    body = {**GREEDY, "prompt": "Long ago", "max_tokens": 20, "stream": True}
    answers = []
    for port in (rph.ports["tiny"], rph.backends["tiny"]):
        request = post(
            "/v1/completions",
            body,
            [("Content-Type", "application/json"), ("Content-Length", "{length}")],
        ).replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)
        with RawClient(port) as client:
            answer = client.exchange(request)
            assert client.peer_closed()
        assert answer.status == 200, answer.body
        # Chunked framing is HTTP/1.1's: an HTTP/1.0 client would read the
        # chunk sizes as part of the body (RFC 9112 §6.1).
        assert answer.header("transfer-encoding") is None, answer.head
        assert answer.says_close, answer.head
        answers.append(answer)
    ours, theirs = (sse_texts(answer.body) for answer in answers)
    assert len(ours) == 20
    assert ours == theirs
