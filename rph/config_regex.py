"""How `body_regex` and a `cmdline` string are understood.

`compile_body_regex` turns a config's pattern into what the router runs on
each request body: an RE2 search, linear in the body's length whatever the
pattern (Python's `re` is quadratic on patterns such as ".*a.*"), where "."
also matches newlines. `split_cmdline` splits a command line written as one
string the way the platform's shell would, without running a shell.
"""

import os
import shlex
from typing import Any

import re2


def compile_body_regex(pattern: str) -> Any:
    """Compile a `body_regex` for searching raw request bodies (bytes).

    The pattern may match anywhere in the body and "." matches newlines too.
    Leading and trailing ".*" (or ".*?") are dropped: a search means the same
    without them, and with them RE2 has to scan to the end of the body for
    every match. "." matches a whole UTF-8 character, so it does not step
    over bytes that are not UTF-8. Raises `re2.error` with RE2's reason.
    """
    options = re2.Options()
    options.dot_nl = True  # JSON bodies are often pretty-printed over many lines
    options.never_capture = True  # routing only asks whether it matches
    options.log_errors = False  # the reason goes into the config problem instead
    written = re2.compile(pattern.encode(), options)
    stripped = _strip_dot_stars(pattern)
    if stripped == pattern:
        return written
    return re2.compile(stripped.encode(), options)


def _strip_dot_stars(pattern: str) -> str:
    # Leading: "." can only be a wildcard at the very start; a quantifier right
    # after ".*" would make the pattern invalid and it was compiled already.
    while True:
        for lead in (".*?", ".*"):
            if pattern.startswith(lead) and not pattern[len(lead) :].startswith(
                ("*", "+", "?", "{")
            ):
                pattern = pattern[len(lead) :]
                break
        else:
            break

    # Trailing: the "." must not be escaped (an odd run of backslashes before
    # it), and \Q...\E quotes everything after it when \E is left out.
    if "\\Q" in pattern:
        return pattern
    while True:
        for tail in (".*?", ".*"):
            if pattern.endswith(tail):
                head = pattern[: -len(tail)]
                if (len(head) - len(head.rstrip("\\"))) % 2 == 0:
                    pattern = head
                    break
        else:
            return pattern


def split_cmdline(text: str) -> tuple[str, ...]:
    """Split a command line as the platform's shell would, never running a shell.

    POSIX quoting on POSIX; on Windows backslashes stay (they are path
    separators) and double quotes around an argument are removed. Raises
    ValueError for an unclosed quote.
    """
    if os.name != "nt":
        return tuple(shlex.split(text))
    parts = shlex.split(text, posix=False)
    return tuple(p[1:-1] if len(p) >= 2 and p[0] == p[-1] == '"' else p for p in parts)
