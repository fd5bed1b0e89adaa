"""The OpenAI Python SDK, streaming through RPH from a real llama.cpp server.

Each check starts with the server stopped: the first request starts it
(cold), the second finds it running (warm). Both must stream: the tokens
reach the SDK while the server is still producing them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import openai
import pytest
from clients import assert_streamed
from rph_process import RunningRPH

# Long enough that the generation outlasts a model load (see
# clients.STREAMED_SHARE); about a second of tokens here.
STREAM_TOKENS = 500

# Every check below has a cold start and two streams of about a second.
CHECK_TIMEOUT = 60


# A stream's text, when each token arrived, and when the request was sent.
Streamed = tuple[str, list[float], float]


@pytest.fixture
def sdk(rph: RunningRPH) -> Iterator[openai.OpenAI]:
    # No retries: the SDK retries a 502 or a reset quietly by default, which
    # would hide exactly what these checks look for.
    client = openai.OpenAI(
        base_url=f"{rph.url('tiny')}/v1", api_key="unused", max_retries=0
    )
    with client:
        yield client


def stream_chat(sdk: openai.OpenAI) -> Streamed:
    """A streamed chat completion: its text, each token's arrival, the send."""
    sent = time.monotonic()
    stream = sdk.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Tell me a story."}],
        max_tokens=STREAM_TOKENS,
        stream=True,
    )
    texts, arrivals = [], []
    with stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                texts.append(chunk.choices[0].delta.content)
                arrivals.append(time.monotonic())
    return "".join(texts), arrivals, sent


def stream_text(sdk: openai.OpenAI) -> Streamed:
    """A streamed text completion: its text, each token's arrival, the send."""
    sent = time.monotonic()
    stream = sdk.completions.create(
        model="tiny",
        prompt="Once upon a time",
        max_tokens=STREAM_TOKENS,
        stream=True,
    )
    texts, arrivals = [], []
    with stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                texts.append(chunk.choices[0].text)
                arrivals.append(time.monotonic())
    return "".join(texts), arrivals, sent


@pytest.mark.timeout(CHECK_TIMEOUT)
@pytest.mark.parametrize("stream", [stream_chat, stream_text], ids=["chat", "text"])
def test_sdk_streams_cold_then_warm(
    rph: RunningRPH, sdk: openai.OpenAI, stream: Callable[[openai.OpenAI], Streamed]
) -> None:
    rph.stop_app("tiny")
    starts = rph.status("tiny")["starts"]

    text, arrivals, sent = stream(sdk)
    assert rph.status("tiny")["starts"] == starts + 1, "the request started it"
    assert text
    assert_streamed(arrivals, sent)

    text, arrivals, sent = stream(sdk)
    assert rph.status("tiny")["starts"] == starts + 1, "it was still running"
    assert text
    assert_streamed(arrivals, sent)
