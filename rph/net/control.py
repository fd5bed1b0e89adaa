"""The endpoints RPH answers itself, on every port.

`/startcoordinator` and `/stopcoordinator` switch the pausables on and off;
`/rph/status` shows everything (as JSON, or as a table with `?format=text`);
`/rph/apps/NAME/start` and `.../stop` preload and unload an app. They change
which program holds the GPU, so a web page must not reach them: a request a
browser marks as cross-site is refused, and so, on a loopback listener, is a
`Host` that is not a loopback name (a DNS-rebound name would otherwise pass
as same-site).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from rph import statustext
from rph.errors import BadRequest, Forbidden, MethodNotAllowed, NoRoute
from rph.hosts import is_loopback_name
from rph.net.http import Request
from rph.proc.supervisor import Supervisor

COORDINATOR_PATHS = ("/startcoordinator", "/stopcoordinator")
PREFIX = "/rph/"
JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"


def is_control(path: str) -> bool:
    return path in COORDINATOR_PATHS or path.startswith(PREFIX) or path == "/rph"


async def answer(
    request: Request, supervisor: Supervisor, loopback_listener: bool
) -> tuple[int, bytes, bytes]:
    """Carry out a control request; returns the status, body and content type.

    Raises an RPHError (400, 403, 404, 405) that changes nothing.
    """
    _check_origin(request, loopback_listener)
    path, method = request.path, request.method
    if path in COORDINATOR_PATHS:
        _allow(method, b"GET", b"POST")
        await supervisor.set_coordinator(path == "/startcoordinator")
        return 200, _dump(_coordinator(supervisor)), JSON

    if path == "/rph/status":
        _allow(method, b"GET", b"HEAD")
        return _status(request, supervisor)

    parts = path.removeprefix(PREFIX).split("/")
    if len(parts) == 3 and parts[0] == "apps" and parts[2] in ("start", "stop"):
        _allow(method, b"POST")
        name = parts[1]
        supervisor.app(name)  # 404 for an unknown name
        if parts[2] == "start":
            await supervisor.preload(name)
        else:
            await supervisor.unload(name)
        return 200, _dump(_one_app(supervisor, name)), JSON
    raise NoRoute(f"RPH has no control endpoint {path}")


def _status(request: Request, supervisor: Supervisor) -> tuple[int, bytes, bytes]:
    query = request.target.partition(b"?")[2].decode("latin-1")
    wanted = parse_qs(query).get("format", ["json"])[-1]
    if wanted == "text":
        return 200, statustext.render(supervisor.status()).encode(), TEXT
    if wanted == "json":
        return 200, _dump(supervisor.status()), JSON
    raise BadRequest(f'format={wanted} is unknown; use "json" (the default) or "text"')


def _coordinator(supervisor: Supervisor) -> dict[str, Any]:
    status = supervisor.status()
    return {"coordinator": status["coordinator"], "pausables": status["pausables"]}


def _one_app(supervisor: Supervisor, name: str) -> dict[str, Any]:
    apps = supervisor.status()["apps"]
    return next(app for app in apps if app["name"] == name)


def _dump(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n"


def _allow(method: bytes, *allowed: bytes) -> None:
    if method not in allowed:
        names = ", ".join(m.decode() for m in allowed)
        raise MethodNotAllowed(f"use {names} for this endpoint")


def _check_origin(request: Request, loopback_listener: bool) -> None:
    fetch_site = (request.header(b"sec-fetch-site") or b"").lower()
    if fetch_site == b"cross-site":
        raise Forbidden("control endpoints refuse cross-site requests")

    host = _hostname((request.header(b"host") or b"").decode("latin-1"))
    origin = request.header(b"origin")
    if origin is not None:
        origin_host = _hostname(origin.decode("latin-1"), url=True)
        if not origin_host or origin_host != host:
            raise Forbidden("control endpoints refuse requests from another site")

    if loopback_listener and host and not is_loopback_name(host):
        raise Forbidden(f"control endpoints answer only loopback names, not {host!r}")


def _hostname(value: str, url: bool = False) -> str:
    """The host part of a Host header (or an Origin URL), lower case.

    Brackets of an IPv6 address are removed; a value that is not a host at
    all (an unbalanced "[", say) gives "", which is never a loopback name.
    """
    if not value:
        return ""
    try:
        return (urlsplit(value if url else "//" + value).hostname or "").lower()
    except ValueError:
        raise Forbidden(f"control endpoints refuse the host {value!r}") from None
