"""The status as a person reads it in a terminal: plain-text tables.

`render` turns what `GET /rph/status` answers as JSON into the text that
`GET /rph/status?format=text` answers and `python -m rph status` prints:
the coordinator, one row per on-demand app, one row per pausable, and the
last line each program printed (which says why a start takes long).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Columns are separated by this many spaces: wide enough to tell apart,
# narrow enough that a row fits a terminal of 100 columns.
COLUMN_GAP = 2

# A last output line longer than this is cut: progress bars and JSON dumps
# would otherwise wrap over many lines of the table.
LAST_LINE_CHARS = 100

NOTHING = "-"
SECONDS_PER_MINUTE = 60
SECONDS_PER_HOUR = 3600

APP_COLUMNS = (
    *("APP", "STATE", "PID", "UP", "IN FLIGHT", "WAITING", "IDLE STOP IN"),
    *("STARTS", "CRASHES", "LISTENS ON"),
)
PAUSABLE_COLUMNS = ("PAUSABLE", "STATE", "PID", "UP", "RESTARTS", "RESTART IN")


def render(status: dict[str, Any]) -> str:
    """The status as text: a line per fact, tables aligned in columns."""
    blocks = [f"coordinator: {status['coordinator']}"]

    apps = status["apps"]
    if apps:
        blocks.append(
            table(
                APP_COLUMNS,
                [
                    [
                        app["name"],
                        app["state"],
                        _or_nothing(app["pid"]),
                        duration(app["uptime"]),
                        str(app["in_flight"]),
                        str(app["waiting"]),
                        duration(app["idle_stop_in"]),
                        str(app["starts"]),
                        str(app["restarts"]),
                        f":{app['port']}{app['path']}",
                    ]
                    for app in apps
                ],
            )
        )

    pausables = status["pausables"]
    if pausables:
        blocks.append(
            table(
                PAUSABLE_COLUMNS,
                [
                    [
                        pausable["name"],
                        pausable["state"],
                        _or_nothing(pausable["pid"]),
                        duration(pausable["uptime"]),
                        str(pausable["restarts"]),
                        duration(pausable["restart_in"]),
                    ]
                    for pausable in pausables
                ],
            )
        )

    last_lines = [
        f"{program['name']}: {_cut(program['last_output'][-1])}"
        for program in [*apps, *pausables]
        if program["last_output"]
    ]
    if last_lines:
        blocks.append("last output:\n" + "\n".join(f"  {line}" for line in last_lines))
    return "\n\n".join(blocks) + "\n"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows under headers, each column as wide as its widest cell."""
    widths = [
        max(len(row[column]) for row in [headers, *rows])
        for column in range(len(headers))
    ]
    gap = " " * COLUMN_GAP
    lines = [
        gap.join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [headers, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def duration(seconds: float | None) -> str:
    """A duration as a table cell: "4.2s", "3m05s", "2h07m", or "-"."""
    if seconds is None:
        return NOTHING
    if seconds < SECONDS_PER_MINUTE:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < SECONDS_PER_HOUR:
        minutes, rest = divmod(whole, SECONDS_PER_MINUTE)
        return f"{minutes}m{rest:02d}s"
    hours, rest = divmod(whole, SECONDS_PER_HOUR)
    return f"{hours}h{rest // SECONDS_PER_MINUTE:02d}m"


def _or_nothing(value: object) -> str:
    return NOTHING if value is None else str(value)


def _cut(line: str) -> str:
    if len(line) <= LAST_LINE_CHARS:
        return line
    return line[: LAST_LINE_CHARS - 1] + "…"
