"""Every problem of a config file's entries, found in one pass.

`check_entries` takes the parsed JSON document and returns the entries it
could read, with defaults filled in, and every problem found. Each problem is
one line naming the file, the entry (by name, else by position, #1 being the
first), the key, what was found and what was expected; the lines come in file
order. Checks that span entries (unique names, conflicts, passive paths
outside the entry's path, default apps, one host per port, endpoints that
would loop back) run on whatever could be read; checks that look at the disk
(workdir, program) run only when asked.

Two things are settled here rather than refused: an entry without `host`
takes the host another entry of its port names, and conflicts are made
symmetric, with apps that share an endpoint conflicting implicitly (both
cannot serve on it at once).
"""

import difflib
import itertools
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rph import hosts
from rph.config_keys import DEFAULT_HOST, KINDS, Invalid, quote, show


@dataclass
class Entry:
    index: int  # position in the array, from 0
    kind: str  # "ondemand" or "pausable"
    label: str  # 'entry "name" (#2)', or 'entry #2' without a usable name
    values: dict[str, Any] = field(default_factory=dict)  # keys read, defaults

    def has(self, *keys: str) -> bool:
        return all(key in self.values for key in keys)


class _Report:
    """Problem lines, put into file order when read."""

    def __init__(self, file: str) -> None:
        self._file = file
        self._lines: list[tuple[int, int, str]] = []

    def add(self, index: int, text: str) -> None:
        self._lines.append((index, len(self._lines), f"{self._file}: {text}"))

    def key(self, entry: Entry, key: str, text: str) -> None:
        self.add(entry.index, f"{entry.label}: key {quote(key)}: {text}")

    def lines(self) -> list[str]:
        return [line for _, _, line in sorted(self._lines)]


def check_entries(
    document: object, file: str, folder: Path, *, check_programs: bool
) -> tuple[list[Entry], list[str]]:
    """Read every entry of `document`; return the entries and the problem lines.

    `file` is how messages name the file, `folder` the absolute folder that a
    relative workdir starts from. Entries are complete only when no problem
    was found.
    """
    report = _Report(file)
    if not isinstance(document, list):
        report.add(-1, f"expected a JSON array of entries, found {show(document)}")
        return [], report.lines()
    if not document:
        report.add(-1, "the array has no entries; copy some from config.example.json")

    entries = []
    for index, raw in enumerate(document):
        entry = _read_entry(raw, index, report)
        if entry is not None:
            entries.append(entry)

    _check_names(entries, report)
    _check_conflicts(entries, report)
    _check_passive_paths(entries, report)
    _check_ports(entries, report)
    _link_conflicts(entries)
    for entry in entries:
        _place(entry, folder, report, check_programs=check_programs)
    return entries, report.lines()


def find_program(program: str, workdir: Path, env: Mapping[str, str]) -> str | None:
    """The file that running `program` in `workdir` would execute, or None.

    The lookup subprocess.Popen(cwd=workdir, env=...) does on POSIX: a
    program with a folder in its name ("./run.sh", "bin/server") is taken
    from `workdir` when relative; a bare name is looked up on PATH, the one
    `env` sets, else RPH's own. On Windows PATHEXT applies ("koboldcpp" finds
    koboldcpp.exe).
    """
    if os.path.dirname(program):
        return shutil.which(str(workdir / program))
    return shutil.which(program, path=env.get("PATH", os.environ.get("PATH")))


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to a misspelt `word`, ignoring case, if any is close."""
    by_lower = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(word.lower(), by_lower, n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def _label(raw: object, index: int) -> str:
    name = raw.get("name") if isinstance(raw, dict) else None
    if isinstance(name, str) and name:
        return f"entry {quote(name)} (#{index + 1})"
    return f"entry #{index + 1}"


def _read_entry(raw: object, index: int, report: _Report) -> Entry | None:
    label = _label(raw, index)
    if not isinstance(raw, dict):
        report.add(index, f"{label}: expected an object {{...}}, found {show(raw)}")
        return None

    kind = raw.get("type")
    if not (isinstance(kind, str) and kind in KINDS):
        entry = Entry(index, "", label)
        expected = " or ".join(quote(known) for known in KINDS)
        if "type" not in raw:
            report.key(entry, "type", f"missing; expected {expected}")
        else:
            hint = did_you_mean(kind, KINDS) if isinstance(kind, str) else None
            tail = f"; did you mean {quote(hint)}?" if hint else ""
            report.key(entry, "type", f"expected {expected}, found {show(kind)}{tail}")
        return None

    # Keys that fail stay out of `values`, so later checks skip what they need.
    entry = Entry(index, kind, label)
    keys = KINDS[kind]
    for key, value in raw.items():
        if key == "type":
            continue
        spec = keys.get(key)
        if spec is None:
            report.key(entry, key, _unknown_key(key, kind))
        elif value is None and not spec.required:
            entry.values[key] = spec.default
        else:
            try:
                entry.values[key] = spec.read(value)
            except Invalid as error:
                found = f"expected {spec.expected}, found {show(value)}"
                report.key(entry, key, str(error) or found)

    for key, spec in keys.items():
        if key in raw:
            continue
        if spec.required:
            report.key(entry, key, f"missing; expected {spec.expected}")
        else:
            entry.values[key] = spec.default
    return entry


def _unknown_key(key: str, kind: str) -> str:
    for other, keys in KINDS.items():
        if other != kind and key in keys:
            return f"not a key of {kind} entries (only {other} entries have it)"
    hint = did_you_mean(key, KINDS[kind])
    if hint is not None:
        return f"unknown key; did you mean {quote(hint)}?"
    return f"unknown key; the keys are type, {', '.join(KINDS[kind])}"


def _check_names(entries: list[Entry], report: _Report) -> None:
    first: dict[str, Entry] = {}
    for entry in entries:
        if not entry.has("name"):
            continue
        name = entry.values["name"]
        seen = first.setdefault(name, entry)
        if seen is not entry:
            report.key(
                entry,
                "name",
                f"{quote(name)} is also the name of entry #{seen.index + 1};"
                " names must be unique",
            )


def _check_conflicts(entries: list[Entry], report: _Report) -> None:
    apps = {e.values["name"] for e in entries if e.kind == "ondemand" and e.has("name")}
    pausables = {
        e.values["name"] for e in entries if e.kind == "pausable" and e.has("name")
    }
    for entry in entries:
        if entry.kind != "ondemand" or not entry.has("conflicts_with"):
            continue
        for name in entry.values["conflicts_with"]:
            if name == entry.values.get("name"):
                problem = "is this entry's own name"
            elif name in apps:
                continue
            elif name in pausables:
                problem = (
                    "is a pausable entry; pausables stop for every ondemand app anyway"
                )
            else:
                hint = did_you_mean(name, apps)
                problem = "names no ondemand entry"
                problem += f"; did you mean {quote(hint)}?" if hint else ""
            report.key(entry, "conflicts_with", f"{quote(name)} {problem}")


def _check_passive_paths(entries: list[Entry], report: _Report) -> None:
    # A request reaches an entry only under its `path`: a passive path
    # elsewhere would never match, and the abort it was meant for would
    # start the app instead.
    for entry in entries:
        if entry.kind != "ondemand" or not entry.has("passive_paths", "path"):
            continue
        path = entry.values["path"]
        for passive in entry.values["passive_paths"]:
            if not _is_under(passive, path):
                report.key(
                    entry,
                    "passive_paths",
                    f"{quote(passive)} is outside this entry's path {quote(path)},"
                    " so no request reaches it here; write a path under"
                    f" {quote(path)}",
                )


def _is_under(path: str, prefix: str) -> bool:
    """Whether `path` is `prefix` or below it, segment by segment."""
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def _check_ports(entries: list[Entry], report: _Report) -> None:
    apps = [e for e in entries if e.kind == "ondemand" and e.has("port", "host")]

    # 1. One default app (no body_regex) per port and path.
    defaults: dict[tuple[int, str], Entry] = {}
    for app in apps:
        if not app.has("path", "body_regex") or app.values["body_regex"] is not None:
            continue
        port, path = app.values["port"], app.values["path"]
        first = defaults.setdefault((port, path), app)
        if first is not app:
            report.key(
                app,
                "body_regex",
                f"this entry and {first.label} are both the default app"
                f" (no body_regex) of port {port} path {quote(path)};"
                " give one of them a body_regex",
            )

    # 2. One host per port: the first entry that names one sets it for all.
    claims: dict[int, Entry] = {}
    for app in apps:
        host = app.values["host"]
        if host is None:
            continue
        first = claims.setdefault(app.values["port"], app)
        if first.values["host"] != host:
            report.key(
                app,
                "host",
                f"port {app.values['port']} listens on {quote(host)} here but on"
                f" {quote(first.values['host'])} in {first.label}; all entries of"
                " one port must agree",
            )
    for app in apps:
        if app.values["host"] is None:
            claim = claims.get(app.values["port"])
            app.values["host"] = claim.values["host"] if claim else DEFAULT_HOST

    # 3. An endpoint that is one of RPH's own listeners would loop forever.
    listeners = {app.values["port"]: app for app in reversed(apps)}
    for app in apps:
        if not app.has("endpoint"):
            continue
        endpoint = app.values["endpoint"]
        listener = listeners.get(endpoint.port)
        if listener and hosts.reaches(endpoint.host, listener.values["host"]):
            report.key(
                app,
                "endpoint",
                f"{endpoint.url} is RPH's own listener (port {endpoint.port} of"
                f" {listener.label}), so requests would loop; point it at the"
                " port the app itself serves",
            )


def _link_conflicts(entries: list[Entry]) -> None:
    apps = [e for e in entries if e.kind == "ondemand" and e.has("name")]
    names = {app.values["name"] for app in apps}
    pairs: set[frozenset[str]] = set()
    for app in apps:
        for other in app.values.get("conflicts_with", ()):
            if other in names and other != app.values["name"]:
                pairs.add(frozenset((app.values["name"], other)))
    for one, two in itertools.combinations(apps, 2):
        if one.has("endpoint") and two.has("endpoint"):
            a, b = one.values["endpoint"], two.values["endpoint"]
            if a.port == b.port and hosts.same_address(a.host, b.host):
                pairs.add(frozenset((one.values["name"], two.values["name"])))
    for app in apps:
        name = app.values["name"]
        app.values["conflicts_with"] = tuple(
            other.values["name"]
            for other in apps
            if other is not app and frozenset((name, other.values["name"])) in pairs
        )


def _place(
    entry: Entry, folder: Path, report: _Report, *, check_programs: bool
) -> None:
    if not entry.has("workdir"):
        return
    written = entry.values["workdir"]
    workdir = Path(os.path.normpath(folder / written)) if written else folder
    entry.values["workdir"] = workdir
    if not check_programs:
        return

    # isdir, not Path.is_dir: it answers False for names the OS refuses.
    if written and not os.path.isdir(workdir):
        gone = "is not a folder" if os.path.exists(workdir) else "does not exist"
        report.key(entry, "workdir", f"folder {quote(str(workdir))} {gone}")
        return
    if not entry.has("cmdline", "env"):
        return
    program = entry.values["cmdline"][0]
    if find_program(program, workdir, entry.values["env"]) is not None:
        return
    if os.path.dirname(program):
        where = f"in workdir {quote(str(workdir))}, or not executable"
    elif shutil.which(str(workdir / program)):
        # Popen, like a shell, does not look in the folder it runs in.
        where = f"on PATH; for the one in workdir, write {quote('./' + program)}"
    else:
        where = "on PATH; give its full path, or set PATH in env"
    report.key(entry, "cmdline", f"program {quote(program)} not found {where}")
