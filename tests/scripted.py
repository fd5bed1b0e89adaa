"""Backends that misbehave on purpose, as a few lines of `python -c`.

Each one listens on a port and, for every connection that brings a request
head, runs a script with `conn` (the socket), `head` (what was read) and
`server` (the listening socket) in scope. Connections that bring nothing —
RPH's readiness probe — are closed and skipped. Connections are kept open
unless the script closes them, so a proxy that wrongly reuses one hangs
instead of passing by luck.
"""

from __future__ import annotations

import textwrap
from typing import Any

from support import app, free_port, python_program

from rph.config import AppConfig

_TEMPLATE = """
import os, socket, struct, sys, time
server = socket.create_server(("127.0.0.1", {port}))
kept = []
while True:
    conn, _ = server.accept()
    kept.append(conn)
    head = b""
    while b"\\r\\n\\r\\n" not in head:
        more = conn.recv(65536)
        if not more:
            break
        head += more
    if not head:
        conn.close()
        continue
{script}
"""

# Answers one request, then stops listening: the next connection is refused.
REFUSING = """
import socket, time
server = socket.create_server(("127.0.0.1", {port}))
probe, _ = server.accept()
probe.close()
server.close()
time.sleep(600)
"""


def scripted_app(name: str, script: str, **changes: Any) -> AppConfig:
    """An app whose backend runs `script` for every request it gets."""
    port = free_port()
    body = textwrap.indent(textwrap.dedent(script).strip(), " " * 4)
    code = _TEMPLATE.format(port=port, script=body)
    return app(name, backend_port=port, cmdline=python_program(code), **changes)


def refusing_app(name: str) -> AppConfig:
    """An app that passes the readiness probe, then refuses connections."""
    port = free_port()
    code = REFUSING.format(port=port)
    return app(name, backend_port=port, cmdline=python_program(code))
