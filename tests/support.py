"""What the tests share: the stand-in backend, an in-process RPH, a client.

Every backend is a real program on a real port (the stand-in, or a few
lines of `python -c`), every client a real socket. RPH itself runs inside
the test's trio run, so a test can look at the supervisor directly.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import h11
import trio

from rph.config import AppConfig, Config, PausableConfig
from rph.daemon import serve
from rph.proc.leftovers import Ledger
from rph.proc.supervisor import Supervisor

ROOT = Path(__file__).resolve().parent.parent
STANDIN = ROOT / "examples" / "standin.py"
# How often wait_accepting tries to connect.
ACCEPT_POLL = 0.05


def free_port() -> int:
    """A port nobody listens on now (the backend's port must be known)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def standin(port: int, *args: str) -> tuple[str, ...]:
    """The command line of a stand-in backend on `port`."""
    return (sys.executable, str(STANDIN), "--port", str(port), *args)


def python_program(code: str) -> tuple[str, ...]:
    """The command line of a tiny program given as Python source."""
    return (sys.executable, "-c", code)


def app(name: str = "llm", **changes: Any) -> AppConfig:
    """An on-demand app on listen port 0 with a stand-in backend."""
    backend = changes.pop("backend_port", None) or free_port()
    base = AppConfig(
        name=name,
        cmdline=standin(backend, "--token-interval", "0.01"),
        workdir=ROOT,
        endpoint=f"http://127.0.0.1:{backend}",
        endpoint_host="127.0.0.1",
        endpoint_port=backend,
        body_regex=None,
        conflicts_with=(),
        port=0,
        path="/",
        timeout=None,
        health=None,
        start_timeout=30.0,
        stop_timeout=5.0,
        env=MappingProxyType({}),
        host="127.0.0.1",
        passive_paths=(),
        max_body=256 * 1024 * 1024,
        index=0,
    )
    return replace(base, **changes)


def pausable(name: str, cmdline: Sequence[str], **changes: Any) -> PausableConfig:
    base = PausableConfig(
        name=name,
        cmdline=tuple(cmdline),
        workdir=ROOT,
        stop_timeout=5.0,
        env=MappingProxyType({}),
        index=0,
    )
    return replace(base, **changes)


@dataclass
class RPH:
    supervisor: Supervisor
    ports: dict[int, int]
    host: str = "127.0.0.1"

    @property
    def port(self) -> int:
        """The bound port of the only (or first) configured port."""
        return next(iter(self.ports.values()))


@asynccontextmanager
async def running_rph(
    apps: Sequence[AppConfig],
    pausables: Sequence[PausableConfig] = (),
    ledger: Ledger | None = None,
) -> AsyncIterator[RPH]:
    """RPH serving `apps` in this trio run; every tree is stopped on exit."""
    config = Config(ROOT / "test-config.json", tuple(apps), tuple(pausables))
    async with trio.open_nursery() as nursery:
        supervisor, ports = await nursery.start(serve, config, ledger)
        try:
            yield RPH(supervisor, ports)
        finally:
            nursery.cancel_scope.cancel()


@dataclass
class Response:
    status: int
    http_version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    # (trio time, bytes) of every piece of body as it arrived
    pieces: list[tuple[float, bytes]] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> Any:
        import orjson

        return orjson.loads(self.body)


async def wait_accepting(port: int, process: trio.Process | None = None) -> None:
    """Wait until something accepts connections on `port`; with `process`,
    fail at once if that process exits first."""
    while True:
        assert process is None or process.returncode is None, "it exited"
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            await trio.sleep(ACCEPT_POLL)
            continue
        await stream.aclose()
        return


async def connect(port: int, host: str = "127.0.0.1") -> trio.SocketStream:
    return await trio.open_tcp_stream(host, port)


async def request(
    port: int,
    method: str = "GET",
    target: str = "/",
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
    stream: trio.SocketStream | None = None,
) -> Response:
    """Send one request and read its whole response (h11 parses it).

    With `stream`, the request goes on that (keep-alive) connection and it
    stays open; else a new connection is opened and closed.
    """
    own = stream is None
    sock = stream or await connect(port)
    try:
        return await exchange(sock, method, target, body, headers)
    finally:
        if own:
            await sock.aclose()


async def exchange(
    sock: trio.SocketStream,
    method: str,
    target: str,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
) -> Response:
    client = h11.Connection(h11.CLIENT)
    names = {name.lower() for name, _ in headers}
    all_headers = list(headers)
    if "host" not in names:
        all_headers.insert(0, ("Host", "127.0.0.1"))
    if body and "content-length" not in names and "transfer-encoding" not in names:
        all_headers.append(("Content-Length", str(len(body))))
    data = client.send(h11.Request(method=method, target=target, headers=all_headers))
    if body:
        data += client.send(h11.Data(data=body))
    data += client.send(h11.EndOfMessage())
    await sock.send_all(data)
    return await read_response(sock, client)


async def read_response(sock: trio.SocketStream, client: h11.Connection) -> Response:
    response: Response | None = None
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(await sock.receive_some(65536))
            continue
        if isinstance(event, h11.Response):
            response = Response(
                event.status_code, event.http_version, list(event.headers.raw_items())
            )
        elif isinstance(event, h11.Data):
            assert response is not None
            response.pieces.append((trio.current_time(), bytes(event.data)))
            response.body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            assert response is not None
            return response


async def raw_exchange(
    port: int, data: bytes, *, byte_by_byte: bool = False, read_for: float = 10.0
) -> bytes:
    """Send raw bytes and return everything received until the server closes.

    Stops reading after `read_for` seconds, returning what came so far.
    """
    sock = await connect(port)
    received = b""
    async with sock:
        try:
            if byte_by_byte:
                for i in range(len(data)):
                    await sock.send_all(data[i : i + 1])
            else:
                await sock.send_all(data)
        except trio.BrokenResourceError:
            pass  # the server may refuse before reading everything
        with trio.move_on_after(read_for):
            try:
                while chunk := await sock.receive_some(65536):
                    received += chunk
            except trio.BrokenResourceError:
                pass
    return received


async def read_until(sock: trio.SocketStream, end: bytes) -> bytes:
    """What the server sends until it has sent `end` (10 s at most)."""
    received = b""
    with trio.fail_after(10):
        while not received.endswith(end):
            chunk = await sock.receive_some(65536)
            assert chunk, f"closed before {end!r}: {received!r}"
            received += chunk
    return received


async def read_until_eof(sock: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes (10 s at most)."""
    received = b""
    with trio.fail_after(10):
        while chunk := await sock.receive_some(65536):
            received += chunk
    return received


def status_of(raw: bytes) -> int:
    """The status code of the first response in `raw`, or 0 if none."""
    parts = raw.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


async def serve_then_stop(
    args: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    meanwhile: Callable[[], Awaitable[None]] | None = None,
    limit: float = 20.0,
) -> tuple[int, str]:
    """Run `python -m rph` until it listens, await `meanwhile`, then Ctrl-C.

    Returns the exit status and everything it logged.
    """
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "rph", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    logged = b""
    try:
        with trio.fail_after(limit):
            while b"listening on" not in logged:
                chunk = await process.stderr.receive_some()
                assert chunk, logged.decode()
                logged += chunk
            if meanwhile is not None:
                await meanwhile()
            process.send_signal(signal.SIGINT)
            while chunk := await process.stderr.receive_some():
                logged += chunk
            status = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stderr.aclose()
    return status, logged.decode()
