"""The keys of a config entry and how each value is read.

`KINDS` maps each entry "type" to its table of keys. A `Key` says which JSON
types it accepts (config_schema.json lists the same; a test keeps the two in
step), what a user should have written, and how the JSON value becomes what
RPH uses: `read` returns the value or raises `Invalid`. An optional key
written as null means its default.
"""

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

import orjson
import re2

from rph.config_regex import compile_body_regex, split_cmdline

DEFAULT_START_TIMEOUT = 300.0  # a 70B model read from a slow disk takes minutes
DEFAULT_STOP_TIMEOUT = 10.0  # enough for a server to free its GPU memory politely
DEFAULT_HOST = "127.0.0.1"  # nothing outside this machine unless asked for
DEFAULT_MAX_BODY = 256 * 1024 * 1024  # a long prompt with a few images stays far below
SECONDS_PER_MINUTE = 60.0
SHOWN_CHARS = 60  # a found value longer than this is cut in messages

# Host names and IPv4 addresses; IPv6 addresses are checked with ipaddress.
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_ENDPOINT = re.compile(
    r"http://(?:\[(?P<ipv6>[^\]]+)\]|(?P<host>[^:/]+)):(?P<port>\d+)/?"
)


class Invalid(Exception):
    """A value RPH cannot use; without a message, "expected ..., found ..." is said."""


class Endpoint(NamedTuple):
    url: str  # as written
    host: str
    port: int


@dataclass(frozen=True)
class Key:
    types: tuple[str, ...]  # JSON Schema type names accepted, null aside
    expected: str  # what a message says should have been written
    read: Callable[[Any], Any]
    required: bool = False
    default: Any = None


def show(value: object) -> str:
    """A found value as messages quote it: scalars as JSON, containers by kind."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    text = orjson.dumps(value).decode()
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"


def quote(text: str) -> str:
    """A name, key or path inside a message, quoted as JSON writes strings."""
    return orjson.dumps(text).decode()


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid  # JSON true is not 1
    try:
        return float(value)
    except OverflowError:
        raise Invalid from None


def _integer(value: object) -> int:
    number = _number(value)
    if not number.is_integer():
        raise Invalid
    return int(number)


def _string(value: object) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise Invalid
    return value


def _strings(value: object, expected: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise Invalid
    for number, item in enumerate(value, 1):
        try:
            _string(item)
        except Invalid:
            raise Invalid(
                f"item {number}: expected {expected}, found {show(item)}"
            ) from None
    return tuple(value)


def _url_path(value: object) -> str:
    text = _string(value)
    if not text.startswith("/") or any(c.isspace() for c in text):
        raise Invalid
    return text


def read_name(value: object) -> str:
    name = _string(value)
    if "/" in name:
        raise Invalid  # names appear in URLs: /rph/apps/NAME/start
    return name


def read_cmdline(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            parts = split_cmdline(value)
        except ValueError as error:
            raise Invalid(
                f"cannot split {show(value)} as a shell would: {error}"
            ) from None
    elif isinstance(value, list):
        # An empty argument is fine (--prompt ""); only an empty program is not.
        for number, item in enumerate(value, 1):
            if not isinstance(item, str):
                raise Invalid(f"item {number}: expected a string, found {show(item)}")
        parts = tuple(value)
    else:
        raise Invalid
    if not parts or not parts[0]:
        raise Invalid(f"expected a command line, found {show(value)} with no program")
    if any("\x00" in part for part in parts):
        raise Invalid
    return parts


def read_workdir(value: object) -> str:
    return os.path.expanduser(_string(value))


def read_endpoint(value: object) -> Endpoint:
    text = _string(value)
    if text.startswith("https://"):
        raise Invalid(
            f"expected a URL http://HOST:PORT, found {show(value)}; RPH talks plain"
            " HTTP to the servers it starts"
        )
    match = _ENDPOINT.fullmatch(text)
    if match is None:
        raise Invalid
    host = match["ipv6"] or match["host"]
    port = int(match["port"])
    if not _is_host(host) or not 1 <= port <= 65535:
        raise Invalid
    return Endpoint(text, host, port)


def read_body_regex(value: object) -> str:
    pattern = _string(value)
    try:
        compile_body_regex(pattern)
    except re2.error as error:
        reason = error.args[0] if error.args else "rejected"
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        raise Invalid(f"invalid regular expression {show(value)}: {reason}") from None
    return pattern


def read_names(value: object) -> tuple[str, ...]:
    return _strings(value, "a name")


def read_port(value: object) -> int:
    port = _integer(value)
    if not 1 <= port <= 65535:
        raise Invalid
    return port


def read_path(value: object) -> str:
    if not isinstance(value, str) or any(c in value for c in "?#\x00"):
        raise Invalid
    if any(c.isspace() for c in value):
        raise Invalid
    return "/" + value.strip("/")  # "/v1/" and "v1" both mean "/v1"


def read_minutes(value: object) -> float | None:
    minutes = _number(value)
    if minutes < 0:
        raise Invalid
    return minutes * SECONDS_PER_MINUTE or None  # 0 means never


def read_start_seconds(value: object) -> float:
    seconds = _number(value)
    if seconds <= 0:
        raise Invalid
    return seconds


def read_stop_seconds(value: object) -> float:
    seconds = _number(value)
    if seconds < 0:
        raise Invalid
    return seconds


def read_env(value: object) -> Mapping[str, str]:
    if not isinstance(value, dict):
        raise Invalid
    for name, text in value.items():
        if not name or "=" in name or "\x00" in name:
            raise Invalid(f"{quote(name)} is not an environment variable name")
        if not isinstance(text, str) or "\x00" in text:
            raise Invalid(f"{quote(name)}: expected a string, found {show(text)}")
    return MappingProxyType(dict(value))


def read_host(value: object) -> str:
    host = _string(value)
    if not _is_host(host):
        raise Invalid
    return host


def read_passive_paths(value: object) -> tuple[str, ...]:
    paths = _strings(value, 'a URL path starting with "/"')
    for number, path in enumerate(paths, 1):
        try:
            _url_path(path)
        except Invalid:
            raise Invalid(
                f'item {number}: expected a URL path starting with "/",'
                f" found {show(path)}"
            ) from None
    return paths


def read_max_body(value: object) -> int:
    size = _integer(value)
    if size < 0:
        raise Invalid
    return size


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return _HOST_NAME.fullmatch(text) is not None
    return True


_NAME = Key(
    ("string",),
    'a name (a non-empty string without "/")',
    read_name,
    required=True,
)
_CMDLINE = Key(
    ("string", "array"),
    "a command line: a string, or an array of strings",
    read_cmdline,
    required=True,
)
_WORKDIR = Key(("string",), "a folder path", read_workdir)
_STOP_TIMEOUT = Key(
    ("number",),
    "a number of seconds, 0 or more",
    read_stop_seconds,
    default=DEFAULT_STOP_TIMEOUT,
)
_ENV = Key(
    ("object",),
    'an object of strings, such as {"CUDA_VISIBLE_DEVICES": "0"}',
    read_env,
    default=MappingProxyType({}),
)

ONDEMAND_KEYS: Mapping[str, Key] = MappingProxyType(
    {
        "name": _NAME,
        "cmdline": _CMDLINE,
        "workdir": _WORKDIR,
        "endpoint": Key(
            ("string",), "a URL http://HOST:PORT", read_endpoint, required=True
        ),
        "body_regex": Key(("string",), "a regular expression", read_body_regex),
        "conflicts_with": Key(("array",), "an array of names", read_names, default=()),
        "port": Key(("integer",), "an integer port 1..65535", read_port, required=True),
        "path": Key(
            ("string",), 'a URL path such as "/" or "/v1"', read_path, default="/"
        ),
        "timeout": Key(("number",), "a number of minutes, 0 or more", read_minutes),
        "health": Key(("string",), 'a URL path starting with "/"', _url_path),
        "start_timeout": Key(
            ("number",),
            "a number of seconds, more than 0",
            read_start_seconds,
            default=DEFAULT_START_TIMEOUT,
        ),
        "stop_timeout": _STOP_TIMEOUT,
        "env": _ENV,
        "host": Key(
            ("string",),
            'an address to listen on, such as "127.0.0.1" or "0.0.0.0"',
            read_host,
        ),
        "passive_paths": Key(
            ("array",),
            'an array of URL paths starting with "/"',
            read_passive_paths,
            default=(),
        ),
        "max_body": Key(
            ("integer",),
            "an integer number of bytes, 0 or more",
            read_max_body,
            default=DEFAULT_MAX_BODY,
        ),
    }
)

PAUSABLE_KEYS: Mapping[str, Key] = MappingProxyType(
    {
        "name": _NAME,
        "cmdline": _CMDLINE,
        "workdir": _WORKDIR,
        "stop_timeout": _STOP_TIMEOUT,
        "env": _ENV,
    }
)

KINDS: Mapping[str, Mapping[str, Key]] = MappingProxyType(
    {"ondemand": ONDEMAND_KEYS, "pausable": PAUSABLE_KEYS}
)
