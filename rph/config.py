"""Load and validate RPH's config file into frozen dataclasses.

The file is a JSON array of objects, each `"type": "ondemand"` (a server
started when a request needs it, stopped when idle) or `"type": "pausable"`
(a program kept running while no on-demand app runs). `load_config` returns a
`Config`, or raises `ConfigError` listing every problem at once, one line
each, shaped

    config.json: entry "koboldcpp" (#2): key "conflict_with": unknown key; ...

naming the file as given, the entry (#1 is the first), the key, what was
found and what was expected. In the dataclasses every duration is in seconds,
whatever unit the file uses (`timeout` is written in minutes), and defaults
are filled in. `find_config_file` decides which file to load.

The keys and how each value is read are in `rph.config_keys`, the checks
across entries and on the disk in `rph.config_checks`, and how body_regex and
cmdline strings are understood in `rph.config_regex`.
"""

import codecs
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import platformdirs

from rph.config_checks import check_entries, find_program
from rph.config_regex import compile_body_regex, split_cmdline

__all__ = [
    "AppConfig",
    "Config",
    "ConfigError",
    "PausableConfig",
    "compile_body_regex",
    "find_config_file",
    "find_program",
    "load_config",
    "parse_config",
    "split_cmdline",
]

CONFIG_NAME = "config.json"
EXAMPLE_NAME = "config.example.json"
APP_NAME = "rph"  # the folder under the user's config folder

# The example sits at the root of the source tree, next to the package.
_EXAMPLE = Path(__file__).resolve().parent.parent / EXAMPLE_NAME


class ConfigError(Exception):
    """Every problem found in a config file, each one line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class AppConfig:
    """One `"type": "ondemand"` entry: a server started when a request needs it."""

    name: str
    cmdline: tuple[str, ...]  # program first; never run through a shell
    workdir: Path  # absolute
    endpoint: str  # as written, e.g. "http://127.0.0.1:5002"
    endpoint_host: str  # "127.0.0.1" ([brackets] of IPv6 removed)
    endpoint_port: int  # 5002
    body_regex: str | None  # as written; None: the default app of port and path
    # Both directions: a conflict written on either side is on both, and apps
    # sharing an endpoint conflict without saying so. Names in file order.
    conflicts_with: tuple[str, ...]
    port: int  # the port RPH listens on for it
    path: str  # "/" or "/v1": leading "/", no trailing "/"
    timeout: float | None  # seconds idle before the stop; None: never
    health: str | None  # path polled until 2xx; None: ready once TCP accepts
    start_timeout: float  # seconds
    stop_timeout: float  # seconds from the polite stop to the kill
    env: Mapping[str, str] = field(hash=False)  # merged over RPH's own
    host: str  # the address the port's listener binds
    passive_paths: tuple[str, ...]
    max_body: int  # bytes
    index: int  # position in the file's array, from 0


@dataclass(frozen=True)
class PausableConfig:
    """One `"type": "pausable"` entry: runs while no on-demand app does."""

    name: str
    cmdline: tuple[str, ...]
    workdir: Path
    stop_timeout: float
    env: Mapping[str, str] = field(hash=False)
    index: int


@dataclass(frozen=True)
class Config:
    path: Path  # absolute path of the file loaded
    apps: tuple[AppConfig, ...]  # in file order
    pausables: tuple[PausableConfig, ...]

    def ports(self) -> dict[int, str]:
        """Each port RPH listens on, with the host it binds."""
        return {app.port: app.host for app in self.apps}


def load_config(path: Path, *, check_programs: bool = True) -> Config:
    """Read and check the config file at `path`.

    With `check_programs` false, neither workdirs nor programs are looked
    for on the disk (for an example written on another machine). Raises
    ConfigError with every problem found, or OSError when unreadable.
    """
    return parse_config(path.read_bytes(), path, check_programs=check_programs)


def parse_config(data: bytes, path: Path, *, check_programs: bool = True) -> Config:
    """Check config file contents `data`, as if read from `path`; see load_config."""
    document = _parse_json(data, str(path))
    absolute = Path(os.path.abspath(path))
    entries, problems = check_entries(
        document, str(path), absolute.parent, check_programs=check_programs
    )
    if problems:
        raise ConfigError(problems)

    apps = []
    pausables = []
    for entry in entries:
        values = entry.values
        if entry.kind == "pausable":
            pausables.append(PausableConfig(index=entry.index, **values))
            continue
        endpoint = values.pop("endpoint")
        apps.append(
            AppConfig(
                endpoint=endpoint.url,
                endpoint_host=endpoint.host,
                endpoint_port=endpoint.port,
                index=entry.index,
                **values,
            )
        )
    return Config(absolute, tuple(apps), tuple(pausables))


def find_config_file(explicit: Path | None) -> Path:
    """The config file to load: `explicit` (from --config) if given, else
    ./config.json, else config.json in the user's config folder for RPH.

    Raises ConfigError, with one line saying how to make a config from the
    example, when that file does not exist.
    """
    example = _EXAMPLE if _EXAMPLE.is_file() else Path(EXAMPLE_NAME)
    if explicit is not None:
        if explicit.is_file():
            return explicit
        raise ConfigError(
            [
                f"{explicit}: no such config file; make one from the example:"
                f" cp {example} {explicit}, then edit each cmdline"
            ]
        )

    user_folder = Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))
    candidates = [Path(CONFIG_NAME), user_folder / CONFIG_NAME]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        [
            f"no config file: looked for {Path.cwd() / CONFIG_NAME} and"
            f" {candidates[1]}; make one from the example: cp {example}"
            f" {CONFIG_NAME}, then edit each cmdline (or pass --config FILE)"
        ]
    )


def _parse_json(data: bytes, file: str) -> object:
    # Windows editors save with a byte order mark, which orjson refuses, and
    # PowerShell's ">" writes UTF-16.
    encoding = "utf-8-sig"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        line, column = _position(data[: error.start])
        raise ConfigError(
            [f"{file}: line {line}, column {column}: not UTF-8 text"]
        ) from None

    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as error:
        where = f"line {error.lineno}, column {error.colno}"
        raise ConfigError([f"{file}: {where}: not valid JSON: {error.msg}"]) from None


def _position(before: bytes) -> tuple[int, int]:
    """Line and column (from 1) just after `before`."""
    line = before.count(b"\n") + 1
    column = len(before) - (before.rfind(b"\n") + 1) + 1
    return line, column
