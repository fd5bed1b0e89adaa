"""Masking secrets before anything reaches the log.

Command lines carry API keys (`--api-key`, `--hf-token`, `PASSWORD=...`),
and logs get pasted into bug reports: the values of options named like a
secret are replaced by `***`. The name's last word decides, so that
`--token-interval` stays readable while `--hf-token` is masked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_SECRET_WORDS = frozenset(
    {"key", "apikey", "token", "secret", "password", "passwd", "auth", "credentials"}
)
_WORD_SEPARATORS = re.compile(r"[-_.]+")
MASK = "***"


def is_secret_name(name: str) -> bool:
    """True for `--api-key`, `HF_TOKEN`, `password`; False for `--tokens`."""
    words = [w for w in _WORD_SEPARATORS.split(name.lower().lstrip("-")) if w]
    return bool(words) and words[-1] in _SECRET_WORDS


def mask_cmdline(argv: Sequence[str]) -> str:
    """The command line as one string, secret option values masked."""
    shown: list[str] = []
    mask_next = False
    for arg in argv:
        if mask_next:
            shown.append(MASK)
            mask_next = False
            continue
        name, sep, _ = arg.partition("=")
        if sep and is_secret_name(name):
            shown.append(f"{name}={MASK}")
        else:
            shown.append(arg)
            mask_next = arg.startswith("-") and not sep and is_secret_name(arg)
    return " ".join(shown)
