"""`python -m rph`: arguments, logging, and the trio run.

`python -m rph [--config FILE]` serves until Ctrl-C or SIGTERM, which stop
listening and stop every app and pausable tree, then exit 0; a second Ctrl-C
kills every tree at once. `--check` validates the config and the ports and
serves nothing; `python -m rph status` asks a running RPH what it is doing.
Exit statuses: 0 done, 1 cannot serve (a port taken, another RPH on this
config), 2 a config mistake, 130 killed by the second Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from rph import __version__, status_command
from rph.config import AppConfig, Config, ConfigError, find_config_file, load_config
from rph.config_keys import SECONDS_PER_MINUTE
from rph.daemon import serve
from rph.hosts import bracketed
from rph.logline import OneLineFormatter
from rph.net.router import under
from rph.portcheck import port_problems
from rph.proc.leftovers import AlreadyRunning, Ledger
from rph.proc.lifetime import kill_every_tree
from rph.proc.supervisor import Supervisor
from rph.redact import mask_cmdline

log = logging.getLogger("rph")

# Exit statuses: a config mistake differs from a failure while running.
EXIT_CONFIG = 2
EXIT_FAILED = 1
EXIT_KILLED = 130


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rph",
        description="Start GPU-hungry servers on demand behind HTTP ports.",
        epilog="'rph status [--port N] [--config FILE]' prints what a running"
        " RPH is doing.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="config file (default: ./config.json, then the user config folder)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the config and that its ports are free, list the apps, exit",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="DEBUG adds one line per exchange (default: INFO)",
    )
    parser.add_argument(
        "--quiet-apps",
        action="store_true",
        help="do not log the output of apps and pausables",
    )
    parser.add_argument("--version", action="version", version=f"rph {__version__}")
    return parser.parse_args(argv)


def setup_logging(level: str, quiet_apps: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        OneLineFormatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
    )
    logging.basicConfig(level=level, handlers=[handler])
    if quiet_apps:
        logging.getLogger("rph.app").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["status"]:
        return status_command.main(argv[1:])
    args = parse_arguments(argv)
    setup_logging(args.log_level, args.quiet_apps)
    try:
        path = find_config_file(args.config)
        config = load_config(path)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return EXIT_CONFIG
    except OSError as error:
        print(f"{error.filename}: cannot read: {error.strerror}", file=sys.stderr)
        return EXIT_CONFIG

    taken = port_problems(config)
    if args.check:
        # The file is fine, but RPH could not serve it now: no "OK" then.
        for problem in taken:
            print(problem, file=sys.stderr)
        if taken:
            return EXIT_FAILED
        print(summary(config))
        return 0

    log.info("rph %s, config %s", __version__, config.path)
    for problem in taken:
        log.error("%s", problem)
    if taken:
        return EXIT_FAILED
    try:
        return trio.run(run, config)
    except* AlreadyRunning as group:
        for failure in leaves(group):
            log.error("%s", failure)
    except* OSError:
        # A port taken since the look above is said the way the look says
        # it; any other OSError is a bug, and its traceback is wanted.
        taken = port_problems(config)
        if not taken:
            raise
        for problem in taken:
            log.error("%s", problem)
    return EXIT_FAILED


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside `error`, however deeply nurseries grouped them."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


async def run(config: Config) -> int:
    """Serve until SIGINT or SIGTERM; returns the exit status."""
    ledger = Ledger.for_config(config.path)
    serve_scope = trio.CancelScope()
    supervisors: list[Supervisor] = []

    async def watch_signals(
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                if not serve_scope.cancel_called:
                    log.info(
                        "%s: stopping every app (Ctrl-C again to kill at once)",
                        signal.Signals(signum).name,
                    )
                    serve_scope.cancel()
                    continue
                log.warning("killing every process tree now")
                for supervisor in supervisors:
                    kill_every_tree(supervisor)
                os._exit(EXIT_KILLED)

    async with trio.open_nursery() as nursery:
        await nursery.start(watch_signals)
        with serve_scope:
            async with trio.open_nursery() as serving:
                supervisor, _ = await serving.start(serve, config, ledger)
                supervisors.append(supervisor)
        nursery.cancel_scope.cancel()
    log.info("stopped")
    return 0


def summary(config: Config) -> str:
    """What `--check` prints for a good config: one line per app."""
    lines = [
        f"{config.path}: OK, {len(config.apps)} on-demand app(s),"
        f" {len(config.pausables)} pausable(s)"
    ]
    for app in config.apps:
        route = f"http://{bracketed(app.host)}:{app.port}{app.path}"
        if app.body_regex is not None:
            route += f" when the body matches {app.body_regex!r}"
        facts = ["never idle-stopped"]
        if app.timeout is not None:
            facts = [f"idle stop after {app.timeout / SECONDS_PER_MINUTE:g} min"]
        if app.conflicts_with:
            facts.append(f"conflicts with {', '.join(app.conflicts_with)}")
        if app.passive_paths:
            facts.append(f"passive {', '.join(app.passive_paths)}")
        lines.append(f"  {app.name}: {route} -> {app.endpoint}; {'; '.join(facts)}")
    for pausable in config.pausables:
        lines.append(f"  {pausable.name}: pausable, {mask_cmdline(pausable.cmdline)}")
    lines.extend(f"  note: {note}" for note in shadowed_paths(config.apps))
    return "\n".join(lines)


def shadowed_paths(apps: Sequence[AppConfig]) -> list[str]:
    """A line for each path whose apps all need a body_regex to match while
    a shorter path of the same port has apps: the longest path wins, so a
    body none of them matches gets 404 rather than reaching the shorter
    path's apps — legal, but easy to mistake for a fallback."""
    groups: dict[tuple[int, str], list[AppConfig]] = {}
    for app in apps:
        groups.setdefault((app.port, app.path), []).append(app)

    notes = []
    for (port, path), group in groups.items():
        if any(app.body_regex is None for app in group):
            continue
        shorter = [p for q, p in groups if q == port and p != path and under(path, p)]
        if not shorter:
            continue
        names = ", ".join(app.name for app in group)
        notes.append(
            f"port {port}: a request under {path} that no body_regex of {names}"
            f" matches gets 404; the apps of {max(shorter, key=len)} are not tried"
        )
    return notes


if __name__ == "__main__":
    sys.exit(main())
