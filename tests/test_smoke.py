"""The main path in one test: a cold start streams tokens through RPH."""

from support import app, request, running_rph


async def test_cold_start_streams_tokens() -> None:
    async with running_rph([app()]) as rph:
        body = b'{"prompt": "hi", "stream": true, "max_tokens": 5}'
        response = await request(rph.port, "POST", "/v1/completions", body)
        assert response.status == 200
        assert response.body.count(b"data: ") == 7  # 5 tokens, finish, [DONE]
        assert response.body.endswith(b"data: [DONE]\n\n")
