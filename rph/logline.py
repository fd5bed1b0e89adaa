"""One log line per event, whatever a message holds.

The README promises one line per event: a log is read, searched and kept
line by line, and a line without a timestamp and level belongs to nobody.
Some messages hold text RPH did not write (the lines a program printed, a
progress bar's carriage returns): `one_line` joins it with a separator a
reader can see, and the formatter applies it to every record.
"""

from __future__ import annotations

import logging

# Shown between what were separate lines: rare in programs' output, and
# read at a glance as "next line".
LINE_SEPARATOR = " | "


def one_line(text: str) -> str:
    """`text` with every line break (CR, LF and Unicode's) made visible."""
    return LINE_SEPARATOR.join(text.splitlines())


class OneLineFormatter(logging.Formatter):
    """Formats each record's message as a single line.

    A traceback (logged only for a bug in RPH) still follows on lines of
    its own: it is read by whoever fixes the bug, whole.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        return one_line(super().formatMessage(record))
