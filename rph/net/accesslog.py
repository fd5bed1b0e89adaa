"""The log lines of exchanges: one per answered request, one per refusal.

Written from the connection's task or from its thread (net/lane), so the
time comes in as an argument rather than from trio's clock.
"""

from __future__ import annotations

import logging

from rph.errors import RPHError
from rph.logline import one_line
from rph.net.http import Request
from rph.net.relay import Outcome
from rph.net.router import Route

log = logging.getLogger("rph.net")


def log_refusal(peer: str, request: Request | None, error: RPHError) -> None:
    """An error that RPH answers itself: a warning for 5xx, else info."""
    log.log(
        logging.WARNING if error.status >= 500 else logging.INFO,
        "%s %s %s: %d %s",
        peer,
        request.method.decode() if request else "-",
        request.path if request else "-",
        error.status,
        one_line(error.headline),
    )


def log_exchange(
    peer: str,
    request: Request,
    route: Route,
    outcome: Outcome | None,
    client_closed: bool,
    now: float,
) -> None:
    """The DEBUG line of a relayed exchange; `outcome` None if it never ran."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    if outcome is None:
        status = "aborted"
    elif outcome.aborted:
        # The client left, before any answer or in the middle of one.
        status = f"{outcome.status or ''} aborted".lstrip()
    elif client_closed:
        # EOF while the answer came: a client gone, or one that only
        # half-closed; the backend was told and decided how to end.
        status = f"{outcome.status} (client closed)"
    else:
        status = str(outcome.status)
    sent = outcome.bytes_down if outcome else 0
    ttfb = (
        f"{outcome.first_byte_at - request.started:.3f}s"
        if outcome and outcome.first_byte_at
        else "-"
    )
    log.debug(
        "%s %s %s -> %s %s up=%d down=%d ttfb=%s total=%.3fs",
        peer,
        request.method.decode(),
        request.path,
        route.app.name,
        status,
        request.body_length,
        sent,
        ttfb,
        now - request.started,
    )
