"""`python -m rph`: arguments, logging, and the trio run.

Ctrl-C or SIGTERM stops listening and stops every app and pausable tree,
then exits 0; a second Ctrl-C kills every tree at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import trio

from rph import __version__
from rph.config import Config, ConfigError, find_config_file, load_config
from rph.daemon import serve
from rph.proc.leftovers import Ledger
from rph.proc.supervisor import Supervisor

log = logging.getLogger("rph")

# Exit statuses: a config mistake differs from a failure while running.
EXIT_CONFIG = 2
EXIT_FAILED = 1
EXIT_KILLED = 130


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rph",
        description="Start GPU-hungry servers on demand behind HTTP ports.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="config file (default: ./config.json, then the user config folder)",
    )
    parser.add_argument(
        "--check", action="store_true", help="validate the config and exit"
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
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    if quiet_apps:
        logging.getLogger("rph.app").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    setup_logging(args.log_level, args.quiet_apps)
    try:
        path = find_config_file(args.config)
        config = load_config(path)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return EXIT_CONFIG
    except OSError as error:
        print(f"{args.config}: cannot read: {error.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check:
        print(summary(config))
        return 0

    log.info("rph %s, config %s", __version__, config.path)
    try:
        return trio.run(run, config)
    except* (OSError, RuntimeError) as group:
        # A port already taken, or another RPH running on this config.
        for failure in group.exceptions:
            log.error("cannot serve: %s", failure)
    return EXIT_FAILED


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
                    supervisor.kill_now()
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
        route = f"port {app.port} path {app.path}"
        if app.body_regex:
            route += f" body /{app.body_regex}/"
        idle = "no idle stop"
        if app.timeout:
            idle = f"idle stop after {app.timeout / 60:g} min"
        lines.append(f"  {app.name}: {route} -> {app.endpoint} ({idle})")
    for pausable in config.pausables:
        lines.append(f"  {pausable.name}: pausable")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
