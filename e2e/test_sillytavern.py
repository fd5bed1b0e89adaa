"""SillyTavern's own request shapes, through RPH, to a real llama.cpp server.

The heads are those SillyTavern 1.12.6 was seen sending (see the traffic
notes in the design folder): node-fetch requests with `Connection: close`
for status and generation, one connection each; Node's fetch for the
tokenizer, lowercase headers, several requests on one kept connection; and
Stop, which closes the generation's connection mid-stream. The routes are
llama-cpp-python's (`/v1/completions`, as SillyTavern uses for KoboldCpp,
ooba and Tabby, and `/extras/tokenize`): what is checked is how the
connections are used and what the answers tell the client.
"""

from __future__ import annotations

import time

import psutil
import pytest
from clients import RawClient, assert_streamed, get, post, sse_texts
from rph_process import RunningRPH

# node-fetch's headers, in its order; Host comes last.
NODE_FETCH = (
    ("Content-Type", "application/json"),
    ("Accept", "*/*"),
    ("Content-Length", "{length}"),
    ("User-Agent", "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)"),
    ("Accept-Encoding", "gzip,deflate"),
    ("Connection", "close"),
)

NODE_FETCH_GET = tuple(h for h in NODE_FETCH if h[0] != "Content-Length")

# Node's built-in fetch, in its order, after a first `host` header.
NODE_TOKENIZER = (
    ("connection", "keep-alive"),
    ("Content-Type", "application/json"),
    ("accept", "*/*"),
    ("accept-language", "*"),
    ("sec-fetch-mode", "cors"),
    ("user-agent", "node"),
    ("accept-encoding", "gzip, deflate"),
    ("content-length", "{length}"),
)

# SillyTavern's text-completion body carries about sixty sampler settings.
SAMPLERS = {
    "temperature": 0.7,
    "top_p": 0.9,
    "top_k": 40,
    "min_p": 0.05,
    "repeat_penalty": 1.1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "seed": -1,
    "stop": ["\nUser:", "</s>"],
    **{f"st_setting_{n}": n for n in range(50)},
}

# Tokens for a generation the user lets finish, and for one the user stops:
# the stopped one would run for seconds if the server kept generating.
SHORT_ANSWER = 300
LONG_ANSWER = 1900

# Events read before the user presses Stop.
EVENTS_BEFORE_STOP = 20

# How many tokenizer requests SillyTavern sends for a few messages.
TOKENIZER_BURST = 12

# A kept connection is read with a timeout this long; an idle server sends
# nothing, so the read times out rather than seeing a close.
STILL_OPEN_AFTER = 0.3

# The server notices a closed client at its next token (about a
# millisecond here), and RPH closes the backend connection within 100 ms.
NOTICED_STOP_WITHIN = 10.0

# CPU the server may use while idle, as a share of one core.
IDLE_CPU_SHARE = 0.2
CPU_WINDOW = 0.3


def host(rph: RunningRPH, name: str = "Host") -> tuple[str, str]:
    # SillyTavern rewrites localhost to 127.0.0.1 and always sends the port.
    return (name, f"127.0.0.1:{rph.ports['tiny']}")


def generation(prompt: str, max_tokens: int) -> dict[str, object]:
    return {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "model": "tiny",
        **SAMPLERS,
    }


@pytest.mark.timeout(60)
def test_node_fetch_requests_each_get_an_answer_that_says_it_closes(
    rph: RunningRPH,
) -> None:
    rph.start_app("tiny")
    requests = [
        get("/v1/models", [*NODE_FETCH_GET, host(rph)]),
        post(
            "/v1/completions", generation("Hi", SHORT_ANSWER), [*NODE_FETCH, host(rph)]
        ),
        get("/v1/models", [*NODE_FETCH_GET, host(rph)]),
    ]
    for data in requests:
        with RawClient(rph.ports["tiny"]) as client:
            sent = time.monotonic()
            response = client.exchange(data)
            assert response.status == 200, response.body
            # Node's agent would reuse the socket otherwise: "socket hang up".
            assert response.says_close, response.head
            assert client.peer_closed()
            if data.startswith(b"POST"):
                assert response.body.rstrip().endswith(b"data: [DONE]")
                assert len(sse_texts(response.body)) == SHORT_ANSWER
                assert_streamed(response.arrivals, sent)
            else:
                models = response.json()
                assert isinstance(models, dict)
                assert [model["id"] for model in models["data"]] == ["tiny"]


@pytest.mark.timeout(60)
def test_tokenizer_burst_shares_one_kept_connection(rph: RunningRPH) -> None:
    rph.start_app("tiny")
    texts = [f"Message number {n} says hello." for n in range(TOKENIZER_BURST)]
    with RawClient(rph.ports["tiny"]) as client:
        for text in texts:
            data = post(
                "/extras/tokenize",
                {"input": text},
                [host(rph, "host"), *NODE_TOKENIZER],
            )
            response = client.exchange(data)
            assert response.status == 200, response.body
            assert not response.says_close, response.head
            tokens = response.json()
            assert isinstance(tokens, dict)
            assert len(tokens["tokens"]) > len(text.split())
        client.sock.settimeout(STILL_OPEN_AFTER)
        with pytest.raises(TimeoutError):
            client.sock.recv(1)


@pytest.mark.timeout(60)
def test_stop_ends_the_generation(rph: RunningRPH) -> None:
    rph.start_app("tiny")
    server = psutil.Process(rph.status("tiny")["pid"])
    log_mark = rph.log_size()
    with RawClient(rph.ports["tiny"]) as client:
        client.send(
            post(
                "/v1/completions",
                generation("Write a long story.", LONG_ANSWER),
                [*NODE_FETCH, host(rph)],
            )
        )
        response = client.read_head()
        assert response.status == 200
        client.read_body(response, pieces=EVENTS_BEFORE_STOP)
        began = response.arrivals[0]
        per_token = (response.arrivals[-1] - began) / (len(response.arrivals) - 1)
    stopped = time.monotonic()

    # The server says so itself when its client's connection closes.
    rph.wait_for_log("[tiny] Disconnected from client", log_mark, NOTICED_STOP_WITHIN)

    # It has stopped generating: its CPU use drops to nothing...
    cpu_before = sum(server.cpu_times()[:2])
    time.sleep(CPU_WINDOW)
    cpu_share = (sum(server.cpu_times()[:2]) - cpu_before) / CPU_WINDOW
    assert cpu_share < IDLE_CPU_SHARE

    # ...and the next request does not queue behind the stopped one.
    sent = time.monotonic()
    with RawClient(rph.ports["tiny"]) as client:
        answer = client.exchange(
            post("/v1/completions", generation("Hi", 5), [*NODE_FETCH, host(rph)])
        )
    took = time.monotonic() - sent
    assert answer.status == 200
    still_to_go = (LONG_ANSWER - EVENTS_BEFORE_STOP) * per_token - (sent - stopped)
    assert took < still_to_go / 2, (
        f"answered in {took:.2f} s; had the stopped generation gone on, it had"
        f" {still_to_go:.2f} s to go"
    )
