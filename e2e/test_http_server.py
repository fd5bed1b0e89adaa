"""Python's `http.server` behind RPH: HTTP/1.0 answers that end by closing.

KoboldCpp is built on this server: it answers HTTP/1.0 whatever the client
asked for and closes the connection after each answer. A client that wants
to keep its connection must be told, by the answer itself, that it ends.
"""

from __future__ import annotations

import hashlib
import http.client

import httpx
import pytest
from clients import RawClient, get
from rph_process import BIG_FILE_NAME, BIG_FILE_SIZE, RunningRPH

# A download of 64 MiB through two sockets takes about a second here.
DOWNLOAD_TIMEOUT = 60

# A client reads the download in pieces this size.
READ_PIECE = 1024 * 1024


def sha256_of_file(rph: RunningRPH) -> str:
    digest = hashlib.sha256()
    with (rph.served / BIG_FILE_NAME).open("rb") as source:
        while piece := source.read(READ_PIECE):
            digest.update(piece)
    return digest.hexdigest()


@pytest.mark.timeout(DOWNLOAD_TIMEOUT)
def test_a_64mb_file_downloads_intact(rph: RunningRPH) -> None:
    digest = hashlib.sha256()
    received = 0
    with (
        httpx.Client(base_url=rph.url("files"), timeout=DOWNLOAD_TIMEOUT) as client,
        client.stream("GET", f"/{BIG_FILE_NAME}") as response,
    ):
        assert response.status_code == 200
        assert response.http_version == "HTTP/1.0"
        assert int(response.headers["content-length"]) == BIG_FILE_SIZE
        for piece in response.iter_raw(READ_PIECE):
            digest.update(piece)
            received += len(piece)
    assert received == BIG_FILE_SIZE
    assert digest.hexdigest() == sha256_of_file(rph)


@pytest.mark.timeout(30)
def test_a_keep_alive_client_is_told_the_connection_ends(rph: RunningRPH) -> None:
    port = rph.ports["files"]
    request = get(
        "/",
        [("Host", f"127.0.0.1:{port}"), ("Connection", "keep-alive")],
    )
    with RawClient(port) as client:
        listing = client.exchange(request)
        assert listing.status == 200
        assert BIG_FILE_NAME.encode() in listing.body
        assert listing.says_close, listing.head
        assert client.peer_closed()

    # The standard library's client reads the same head the same way.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/", headers={"Connection": "keep-alive"})
        response = connection.getresponse()
        assert response.will_close
        assert BIG_FILE_NAME.encode() in response.read()
    finally:
        connection.close()

    # A pooling client opens a new connection for the next request on its own.
    with httpx.Client(base_url=rph.url("files"), timeout=30) as pool:
        for _ in range(3):
            assert pool.get("/").status_code == 200
