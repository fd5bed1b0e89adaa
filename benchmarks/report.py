"""Rows of figures, the table printed on stdout, the JSON kept on disk.

A row holds one figure's samples for each side. Its ratio is RPH's median
over the direct median, and the target (from the design) is judged on that
ratio; rows without a direct side (cold start, memory, CPU) are judged on
their own value. Beside RPH's ratio stands the floor's: the same ratio for
the bare forwarder in Python (benchmarks/forwarder.py), which does nothing
but pass bytes on. For latencies the tail is the 99th percentile, for rates
the 1st: the slow end either way.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
}


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) of `values`, interpolated; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Row:
    label: str
    unit: str
    rph: list[float]
    direct: list[float] | None = None
    floor: list[float] | None = None
    higher_is_better: bool = False
    # ("<=", 1.3) on the ratio to direct, or on the value without a direct side.
    target: tuple[str, float] | None = None
    # Which value is judged when there is no direct side.
    judged: str = "p50"
    # Why the row has no figure, when it could not be measured; its `rph`
    # is then empty and the JSON has null in its place.
    not_measured: str | None = None

    def stats(self, values: list[float]) -> dict[str, float]:
        tail = 0.01 if self.higher_is_better else 0.99
        return {
            "p50": percentile(values, 0.5),
            "tail": percentile(values, tail),
            "max": max(values, default=math.nan),
            "n": len(values),
        }

    @property
    def ratio(self) -> float | None:
        return self._to_direct(self.rph)

    @property
    def floor_ratio(self) -> float | None:
        return self._to_direct(self.floor) if self.floor else None

    def _to_direct(self, values: list[float]) -> float | None:
        """The ratio of the medians of `values` and the direct side."""
        if self.direct is None:
            return None
        direct = percentile(self.direct, 0.5)
        return percentile(values, 0.5) / direct if direct else math.nan

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        relation, bound = self.target
        value = (
            self.ratio if self.direct is not None else self.stats(self.rph)[self.judged]
        )
        if value is None or math.isnan(value):
            return False
        return COMPARE[relation](value, bound)

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "unit": self.unit,
            "direct": self.stats(self.direct) if self.direct is not None else None,
            "rph": None if self.not_measured else self.stats(self.rph),
            "not_measured": self.not_measured,
            "ratio": self.ratio,
            "floor": self.stats(self.floor) if self.floor else None,
            "floor_ratio": self.floor_ratio,
            "target": list(self.target) if self.target else None,
            "judged": "ratio of p50s" if self.direct is not None else self.judged,
            "met": self.met,
        }


def _number(value: float | None, width: int) -> str:
    if value is None:
        return " " * width
    if math.isnan(value):
        return "-".rjust(width)
    if abs(value) >= 100:
        return f"{value:{width}.0f}"
    if abs(value) >= 10:
        return f"{value:{width}.1f}"
    return f"{value:{width}.2f}"


# What stands in RPH's p50 column for a figure not measured: not a 0, and
# not the "-" of a figure that came out NaN.
NOT_MEASURED = "—"

# The narrowest the label column gets; the longest label widens it.
LABEL_WIDTH = 46
COLUMNS = (
    f"{'direct p50':>11}{'tail':>8}{'RPH p50':>10}{'tail':>8}{'ratio':>8}"
    f"{'floor':>7}  target"
)


def table(sections: list[tuple[str, list[Row]]]) -> str:
    """The table for a terminal: one line per row, sections as headings."""
    labels = [_label(row) for _, rows in sections for row in rows]
    width = max([LABEL_WIDTH, *(len(label) + 1 for label in labels)])
    header = f"{'measure':<{width}}{COLUMNS}"
    lines = [header, "-" * len(header)]
    for title, rows in sections:
        lines.append(title)
        for row in rows:
            lines.append(_line(row, width))
    return "\n".join(lines)


def _label(row: Row) -> str:
    return f"  {row.label} ({row.unit})"


def _line(row: Row, width: int) -> str:
    if row.not_measured:
        line = f"{_label(row):<{width}}{NOT_MEASURED:>29}"
        return f"{line}  not measured: {row.not_measured}"
    direct = row.stats(row.direct) if row.direct is not None else None
    rph = row.stats(row.rph)
    cells = [
        f"{_label(row):<{width}}",
        _number(direct["p50"] if direct else None, 11),
        _number(direct["tail"] if direct else None, 8),
        _number(rph["p50"], 10),
        _number(rph["tail"] if len(row.rph) > 1 else None, 8),
        _number(row.ratio, 8),
        _number(row.floor_ratio, 7),
    ]
    if row.target is not None:
        relation, bound = row.target
        what = "" if row.direct is not None else f" ({row.judged})"
        verdict = "met" if row.met else "MISSED"
        cells.append(f"  {relation} {bound:g}{what} {verdict}")
    return "".join(cells).rstrip()
