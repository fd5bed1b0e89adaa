"""Whether RPH can listen on its ports now, and who holds a taken one.

`python -m rph` looks before it serves, and `--check` looks too, so that a
port another program holds is reported in one line that names the port and,
when psutil can tell, the program holding it, instead of a bind error deep
in a traceback. The look binds each address the way trio's listener will,
then lets it go at once.
"""

from __future__ import annotations

import errno
import os
import socket

from rph.config import Config
from rph.proc.ports import describe_listener

# Windows reports a taken port with its own WSA code, POSIX with EADDRINUSE.
_IN_USE = {errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", errno.EADDRINUSE)}
_NO_PERMISSION = {errno.EACCES, getattr(errno, "WSAEACCES", errno.EACCES)}


def port_problems(config: Config) -> list[str]:
    """One line for each port of `config` that RPH cannot listen on now."""
    problems = []
    for port, host in config.ports().items():
        error = bind_error(host, port)
        if error is not None:
            problems.append(explain(config, host, port, error))
    return problems


def bind_error(host: str, port: int) -> OSError | None:
    """The error binding host:port would raise now, or None if it is free."""
    try:
        addresses = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as error:
        return error
    for family, kind, protocol, _, address in addresses:
        try:
            sock = socket.socket(family, kind, protocol)
        except OSError as error:
            # A machine without IPv6 still resolves "localhost" to ::1 too;
            # trio's listener skips such an address, and so does this look.
            if error.errno == errno.EAFNOSUPPORT:
                continue
            return error
        try:
            with sock:
                # As trio's listener does: on POSIX a port whose last
                # connections linger in TIME_WAIT can be bound again; on
                # Windows this option would let two programs share a port.
                if os.name != "nt":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
        except OSError as error:
            return error
    return None


def explain(config: Config, host: str, port: int, error: OSError) -> str:
    """One line saying why RPH cannot listen on host:port, and what to do."""
    where = f"cannot listen on {_url(host, port)} ({config.path})"
    if error.errno in _IN_USE:
        holder = describe_listener(port) or "another program"
        return (
            f"{where}: the port is already in use by {holder}; stop that"
            f" program, or move the entries of port {port} to another port"
        )
    if error.errno in _NO_PERMISSION:
        return (
            f"{where}: permission denied; ports below 1024 need"
            " administrator rights, choose a port above 1024"
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return (
            f"{where}: {host} is not an address of this machine; use"
            ' "127.0.0.1", or "0.0.0.0" for every address'
        )
    return f"{where}: {error.strerror or error}"


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
