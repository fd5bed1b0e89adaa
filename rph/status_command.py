"""`python -m rph status`: ask a running RPH what it is doing.

It finds the port the way RPH finds its config (`--config`, ./config.json,
the user config folder) and takes the first port listed there, unless
`--port` names one; it connects to the address that port listens on (the
loopback address for a listener on every address) and prints the table of
`GET /rph/status?format=text`. When nothing answers there it says so in one
line and exits 1.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

import h11

from rph import __version__
from rph.config import ConfigError, find_config_file, load_config

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

# RPH answers status at once, whatever its apps are doing; a longer silence
# means something other than RPH holds the port.
ANSWER_TIMEOUT = 5.0
RECEIVE_SIZE = 65536
STATUS_TARGET = "/rph/status?format=text"
LOOPBACK = "127.0.0.1"

# A listener on every address is reached on the loopback one.
_REACHED_AS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


class Unreachable(Exception):
    """No RPH answered; the message says where it was looked for, one line."""


def main(argv: list[str]) -> int:
    """Print the status table of a running RPH; returns the exit status."""
    args = _parse_arguments(argv)
    try:
        host, port = status_address(args.port, args.config)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return EXIT_CONFIG
    except OSError as error:
        print(f"rph status: cannot read the config: {error}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        text = fetch_status_text(host, port)
    except Unreachable as error:
        print(f"rph status: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(text, end="")
    return EXIT_OK


def _parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rph status",
        description="Print what a running RPH is doing: each app and pausable.",
    )
    parser.add_argument(
        "--port",
        type=int,
        metavar="N",
        help="a port RPH listens on (default: the first port of the config;"
        " with --port alone, 127.0.0.1 is asked)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the config RPH runs with (default: ./config.json, then the user"
        " config folder)",
    )
    return parser.parse_args(argv)


def status_address(port: int | None, config_path: Path | None) -> tuple[str, int]:
    """The host and port to ask. Raises ConfigError, or OSError if unreadable.

    The config is read only when it is needed or named: for the port when
    `port` is None, for the port's address when `config_path` is given.
    """
    if port is not None and config_path is None:
        return LOOPBACK, port
    path = find_config_file(config_path)
    ports = load_config(path, check_programs=False).ports()
    if port is None:
        if not ports:
            raise ConfigError([f"{path}: no ondemand entry, so RPH listens on no port"])
        port = next(iter(ports))
    host = ports.get(port, LOOPBACK)
    return _REACHED_AS.get(host, host), port


def fetch_status_text(host: str, port: int) -> str:
    """The answer of GET /rph/status?format=text. Raises Unreachable."""
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=ANSWER_TIMEOUT) as sock:
            status, body = _get(sock, url.removeprefix("http://"))
    except ConnectionRefusedError:
        raise Unreachable(
            f"nothing listens on {url}; RPH is not running there"
            " (start it with: python -m rph --config FILE)"
        ) from None
    except TimeoutError:
        raise Unreachable(
            f"no answer from {url} within {ANSWER_TIMEOUT:g} s; is it RPH?"
        ) from None
    except h11.ProtocolError:
        raise Unreachable(f"{url} does not answer HTTP; it is not RPH") from None
    except OSError as error:
        raise Unreachable(f"cannot reach {url}: {error.strerror or error}") from None
    if status != 200:
        raise Unreachable(
            f"{url} answered {status} to GET /rph/status; it is not RPH, or not"
            " a version of RPH that has this command"
        )
    return body.decode(errors="replace")


def _get(sock: socket.socket, host_header: str) -> tuple[int, bytes]:
    client = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET",
        target=STATUS_TARGET,
        headers=[
            ("Host", host_header),
            ("User-Agent", f"rph-status/{__version__}"),
            ("Connection", "close"),
        ],
    )
    for message in (request, h11.EndOfMessage()):
        sock.sendall(client.send(message) or b"")

    status = 0
    body = b""
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(sock.recv(RECEIVE_SIZE))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status, body
