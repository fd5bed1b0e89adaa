"""The config loader: what a user's file becomes, and what each mistake says."""

import os
import re
import shlex
import stat
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import platformdirs
import pytest
import re2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rph
from rph.config import (
    AppConfig,
    Config,
    ConfigError,
    compile_body_regex,
    find_config_file,
    load_config,
    parse_config,
)
from rph.config_keys import DEFAULT_HOST, KINDS, ONDEMAND_KEYS

REPO = Path(rph.__file__).resolve().parent.parent
SCHEMA = Path(rph.__file__).resolve().parent / "config_schema.json"
PROGRAM = sys.executable  # a program that exists wherever the tests run
DROP = object()  # a key left out of an entry

# file: entry: key: message, the shape every problem about a key has.
SHAPE = re.compile(
    r'config\.json: entry (?:"[^"]*" \(#\d+\)|#\d+): key "(?P<key>[^"]*)": \S.*'
)


def app(**keys: Any) -> dict[str, Any]:
    """A valid ondemand entry, changed by `keys`."""
    entry = {
        "type": "ondemand",
        "name": "a",
        "cmdline": [PROGRAM, "-c", "pass"],
        "endpoint": "http://127.0.0.1:6002",
        "port": 6001,
    }
    return _change(entry, keys)


def pausable(**keys: Any) -> dict[str, Any]:
    """A valid pausable entry, changed by `keys`."""
    return _change({"type": "pausable", "name": "p", "cmdline": [PROGRAM]}, keys)


def _change(entry: dict[str, Any], keys: dict[str, Any]) -> dict[str, Any]:
    entry = {**entry, **keys}
    return {key: value for key, value in entry.items() if value is not DROP}


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty folder, so that the file is named "config.json"."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load(document: Any, *, check_programs: bool = True) -> Config:
    path = Path("config.json")
    path.write_bytes(orjson.dumps(document))
    return load_config(path, check_programs=check_programs)


def problems(document: Any, *, check_programs: bool = True) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(document, check_programs=check_programs)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def only_problem(document: Any) -> str:
    (problem,) = problems(document)
    return problem


# The example and what a loaded file becomes


def test_example_loads() -> None:
    config = load_config(REPO / "config.example.json", check_programs=False)

    kobold, summarizer, llama = config.apps
    assert kobold.name == "koboldcpp"
    assert kobold.port == summarizer.port == 5001
    assert (kobold.endpoint_host, kobold.endpoint_port) == ("127.0.0.1", 5002)
    assert kobold.passive_paths == ("/api/extra/abort",)
    assert kobold.timeout == 600.0
    assert kobold.body_regex is None
    # SillyTavern's Summarize extension's default prompt, as the seed wrote
    # patterns: with leading and trailing ".*".
    assert summarizer.body_regex == ".*Summarize the most important facts.*"
    assert "koboldcpp" in summarizer.conflicts_with
    assert "summarizer" in kobold.conflicts_with
    assert llama.health == "/health"
    assert llama.port not in (5001, llama.endpoint_port)
    assert [p.name for p in config.pausables] == ["comfyui"]
    assert config.ports() == {5001: "127.0.0.1", 8080: "127.0.0.1"}
    assert config.path.is_absolute()


def test_defaults(here: Path) -> None:
    (a,) = load([app()]).apps
    assert a == AppConfig(
        name="a",
        cmdline=(PROGRAM, "-c", "pass"),
        workdir=here,
        endpoint="http://127.0.0.1:6002",
        endpoint_host="127.0.0.1",
        endpoint_port=6002,
        body_regex=None,
        conflicts_with=(),
        port=6001,
        path="/",
        timeout=None,
        health=None,
        start_timeout=300.0,
        stop_timeout=10.0,
        env={},
        host=DEFAULT_HOST,
        passive_paths=(),
        max_body=256 * 1024 * 1024,
        index=0,
    )
    hash(a)  # usable as a dict key, env notwithstanding


@pytest.mark.parametrize(
    ("kind", "key"),
    [
        (kind, key)
        for kind, keys in KINDS.items()
        for key, spec in keys.items()
        if not spec.required
    ],
)
def test_null_means_the_default(here: Path, kind: str, key: str) -> None:
    entry = app if kind == "ondemand" else pausable
    written = load([entry(**{key: None})])
    left_out = load([entry(**{key: DROP})])
    assert written == left_out


@pytest.mark.parametrize(
    ("minutes", "seconds"), [(10, 600.0), (1.5, 90.0), (0.25, 15.0), (0, None)]
)
def test_timeout_minutes_become_seconds(
    here: Path, minutes: float, seconds: float | None
) -> None:
    (a,) = load([app(timeout=minutes)]).apps
    assert a.timeout == seconds


def test_cmdline_string_is_split_as_a_shell_would(here: Path) -> None:
    line = f"{shlex.quote(PROGRAM)} --model '/models/my model.gguf' --port 5002"
    (a,) = load([app(cmdline=line)]).apps
    assert a.cmdline == (PROGRAM, "--model", "/models/my model.gguf", "--port", "5002")


@pytest.mark.skipif(os.name == "nt", reason="POSIX quoting")
@given(
    st.lists(
        st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00")),
        min_size=1,
    ).filter(lambda args: args[0] != "")
)
def test_cmdline_round_trips_through_shlex_join(arguments: list[str]) -> None:
    document = orjson.dumps([app(cmdline=shlex.join(arguments))])
    config = parse_config(document, Path("config.json"), check_programs=False)
    assert config.apps[0].cmdline == tuple(arguments)


def test_path_is_normalised(here: Path) -> None:
    entries = [
        app(name="a", path="/v1/", body_regex="x"),
        app(name="b", path="v2", body_regex="x"),
        app(name="c", path="", body_regex="x"),
    ]
    assert [a.path for a in load(entries).apps] == ["/v1", "/v2", "/"]


def test_relative_workdir_starts_from_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    (folder / "models").mkdir(parents=True)
    path = folder / "config.json"
    entries = [app(workdir="models"), pausable(workdir="../conf/./models")]
    path.write_bytes(orjson.dumps([*entries, pausable(name="q")]))

    config = load_config(path)
    assert config.apps[0].workdir == folder / "models"
    assert config.pausables[0].workdir == folder / "models"
    assert config.pausables[1].workdir == folder  # no workdir: the file's folder


def test_conflicts_are_symmetric_and_shared_endpoints_conflict(here: Path) -> None:
    entries = [
        app(name="a", body_regex="a"),
        app(name="b", body_regex="b", conflicts_with=["a"]),
        app(name="c", endpoint="http://127.0.0.1:7002"),
        app(name="d", endpoint="http://localhost:7002", port=6003),
    ]
    a, b, c, d = load(entries).apps
    assert (a.conflicts_with, b.conflicts_with) == (("b",), ("a",))
    assert (c.conflicts_with, d.conflicts_with) == (("d",), ("c",))


def test_endpoint_on_another_address_of_a_listening_port(here: Path) -> None:
    (a,) = load([app(endpoint="http://127.0.0.2:6001")]).apps
    assert (a.endpoint_host, a.endpoint_port) == ("127.0.0.2", 6001)
    (b,) = load([app(endpoint="http://[::1]:6002/")]).apps
    assert (b.endpoint, b.endpoint_host) == ("http://[::1]:6002/", "::1")


def test_host_is_taken_from_the_entry_of_the_port_that_names_it(here: Path) -> None:
    entries = [app(name="a"), app(name="b", body_regex="x", host="0.0.0.0")]
    config = load(entries)
    assert [a.host for a in config.apps] == ["0.0.0.0", "0.0.0.0"]
    assert config.ports() == {6001: "0.0.0.0"}


def test_program_found_on_the_entry_path_or_relative_to_workdir(here: Path) -> None:
    tools = here / "tools"
    tools.mkdir()
    for name in ("mybackend", "run.sh"):
        (tools / name).write_text("#!/bin/sh\n")
        (tools / name).chmod(0o755)

    load([app(cmdline="mybackend", env={"PATH": str(tools)})])
    load([app(cmdline="./run.sh --flag", workdir="tools")])
    load([app(cmdline=["tools/run.sh"])])
    assert only_problem([app(cmdline="mybackend")]).endswith(
        'key "cmdline": program "mybackend" not found on PATH; give its full path,'
        " or set PATH in env"
    )
    assert only_problem([app(cmdline="run.sh", workdir="tools")]).endswith(
        'program "run.sh" not found on PATH; for the one in workdir, write "./run.sh"'
    )


@pytest.mark.skipif(os.name == "nt", reason="POSIX execute permission")
def test_program_that_is_not_executable(here: Path) -> None:
    Path("run.sh").write_text("#!/bin/sh\n")
    Path("run.sh").chmod(stat.S_IRUSR | stat.S_IWUSR)
    problem = only_problem([app(cmdline="./run.sh")])
    assert problem.endswith(
        f'key "cmdline": program "./run.sh" not found in workdir "{here}",'
        " or not executable"
    )


# Mistakes: each gives one line naming file, entry, key and what was expected

# fmt: off
MISTAKES = [  # (what, document, key named, part of the message)
    ("misspelt key", [app(conflict_with=[])], "conflict_with",
     'unknown key; did you mean "conflicts_with"?'),
    ("unknown key", [app(colour="red")], "colour", "the keys are type, name,"),
    ("key of the other type", [pausable(port=5001)], "port",
     "not a key of pausable entries (only ondemand entries have it)"),
    ("no type", [app(type=DROP)], "type", 'missing; expected "ondemand" or'),
    ("unknown type", [app(type="ondmand")], "type", 'did you mean "ondemand"?'),
    ("type not a string", [app(type=1)], "type", "found 1"),
    ("minutes as words", [app(timeout="ten")], "timeout",
     'expected a number of minutes, 0 or more, found "ten"'),
    ("boolean port", [app(port=True)], "port", "found true"),
    ("boolean timeout", [app(timeout=False)], "timeout", "found false"),
    ("port too big", [app(port=70000)], "port", "1..65535, found 70000"),
    ("port zero", [app(port=0)], "port", "found 0"),
    ("fractional port", [app(port=5001.5)], "port", "found 5001.5"),
    ("negative timeout", [app(timeout=-1)], "timeout", "found -1"),
    ("negative stop_timeout", [pausable(stop_timeout=-0.5)], "stop_timeout",
     "0 or more, found -0.5"),
    ("zero start_timeout", [app(start_timeout=0)], "start_timeout",
     "more than 0, found 0"),
    ("negative max_body", [app(max_body=-1)], "max_body", "found -1"),
    ("conflict with nobody", [app(conflicts_with=["b"])], "conflicts_with",
     '"b" names no ondemand entry'),
    ("conflict misspelt",
     [app(conflicts_with=["kobold"]), app(name="koboldcpp", body_regex="x")],
     "conflicts_with", 'names no ondemand entry; did you mean "koboldcpp"?'),
    ("conflict with a pausable", [app(conflicts_with=["p"]), pausable()],
     "conflicts_with", '"p" is a pausable entry'),
    ("conflict with itself", [app(conflicts_with=["a"])], "conflicts_with",
     "this entry's own name"),
    ("conflicts not an array", [app(conflicts_with="b")], "conflicts_with",
     'expected an array of names, found "b"'),
    ("passive path without /", [app(passive_paths=["api/extra/abort"])],
     "passive_paths", 'item 1: expected a URL path starting with "/"'),
    ("passive path a number", [app(passive_paths=[1])], "passive_paths",
     "item 1:"),
    ("passive path outside the path",
     [app(path="/v1", passive_paths=["/api/extra/abort"])], "passive_paths",
     '"/api/extra/abort" is outside this entry\'s path "/v1"'),
    ("same name twice", [app(name="x"), pausable(name="x")], "name",
     "also the name of entry #1"),
    ("two default apps", [app(name="a"), app(name="b")], "body_regex",
     'both the default app (no body_regex) of port 6001 path "/"'),
    ("invalid regex", [app(body_regex="(")], "body_regex",
     'invalid regular expression "(": missing ): ('),
    ("https endpoint", [app(endpoint="https://127.0.0.1:6002")], "endpoint",
     "plain HTTP"),
    ("endpoint without scheme", [app(endpoint="127.0.0.1:6002")], "endpoint",
     "expected a URL http://HOST:PORT"),
    ("endpoint without port", [app(endpoint="http://127.0.0.1")], "endpoint",
     "expected a URL http://HOST:PORT"),
    ("endpoint with a path", [app(endpoint="http://127.0.0.1:6002/v1")],
     "endpoint", "expected a URL http://HOST:PORT"),
    ("endpoint port too big", [app(endpoint="http://127.0.0.1:65536")],
     "endpoint", "expected a URL http://HOST:PORT"),
    ("endpoint is a listener", [app(endpoint="http://localhost:6001")],
     "endpoint", "is RPH's own listener"),
    ("endpoint is a wildcard listener",
     [app(host="0.0.0.0", endpoint="http://[::1]:6001")], "endpoint",
     "http://[::1]:6001 is RPH's own listener"),
    ("hosts differ",
     [app(name="a", host="0.0.0.0"), app(name="b", host="::1", body_regex="x")],
     "host", 'port 6001 listens on "::1" here but on "0.0.0.0" in entry "a"'),
    ("workdir missing", [app(workdir="nowhere")], "workdir", "does not exist"),
    ("program missing", [app(cmdline="no-such-program-rph --port 1")],
     "cmdline", 'program "no-such-program-rph" not found on PATH'),
    ("empty cmdline string", [app(cmdline="")], "cmdline", "with no program"),
    ("empty cmdline array", [app(cmdline=[])], "cmdline", "with no program"),
    ("empty program", [app(cmdline=["", "x"])], "cmdline", "with no program"),
    ("number in cmdline", [app(cmdline=[PROGRAM, "--port", 5002])], "cmdline",
     "item 3: expected a string, found 5002"),
    ("unclosed quote", [app(cmdline="prog 'x")], "cmdline",
     "No closing quotation"),
    ("env not an object", [app(env=["A=1"])], "env", "expected an object"),
    ("env value a number", [pausable(env={"CUDA_VISIBLE_DEVICES": 0})], "env",
     '"CUDA_VISIBLE_DEVICES": expected a string, found 0'),
    ("env name with =", [pausable(env={"A=B": "1"})], "env",
     "not an environment variable name"),
    ("health without /", [app(health="health")], "health",
     'expected a URL path starting with "/", found "health"'),
    ("name with a slash", [app(name="a/b")], "name", 'without "/"'),
    ("empty name", [app(name="")], "name", 'found ""'),
    ("host not an address", [app(host="local host")], "host",
     'found "local host"'),
    ("path with a query", [app(path="/v1?x=1")], "path", 'found "/v1?x=1"'),
]
# fmt: on


@pytest.mark.parametrize(
    ("document", "key", "fragment"),
    [pytest.param(d, k, f, id=name) for name, d, k, f in MISTAKES],
)
def test_mistake_is_named(here: Path, document: Any, key: str, fragment: str) -> None:
    lines = problems(document)
    for line in lines:
        match = SHAPE.fullmatch(line)
        assert match, line
        assert match["key"] == key, line
    assert any(fragment in line for line in lines), lines


def test_exact_messages(here: Path) -> None:
    assert only_problem(
        [app(), app(name="koboldcpp", body_regex="x", conflict_with=[])]
    ) == (
        'config.json: entry "koboldcpp" (#2): key "conflict_with": unknown key;'
        ' did you mean "conflicts_with"?'
    )
    assert problems([app(name=DROP, timeout="ten")]) == [
        'config.json: entry #1: key "timeout": expected a number of minutes,'
        ' 0 or more, found "ten"',
        'config.json: entry #1: key "name": missing; expected a name'
        ' (a non-empty string without "/")',
    ]
    looping = app(name="b", body_regex="x", endpoint="http://127.0.0.1:6001")
    assert only_problem([app(), looping]) == (
        'config.json: entry "b" (#2): key "endpoint": http://127.0.0.1:6001 is'
        ' RPH\'s own listener (port 6001 of entry "a" (#1)), so requests would'
        " loop; point it at the port the app itself serves"
    )
    assert only_problem([app(), pausable(name="a")]) == (
        'config.json: entry "a" (#2): key "name": "a" is also the name of'
        " entry #1; names must be unique"
    )


@pytest.mark.parametrize(
    ("kind", "key"),
    [
        (kind, key)
        for kind, keys in KINDS.items()
        for key, spec in keys.items()
        if spec.required
    ],
)
def test_each_required_key_is_required(here: Path, kind: str, key: str) -> None:
    entry = (app if kind == "ondemand" else pausable)(**{key: DROP})
    expected = KINDS[kind][key].expected
    assert f'key "{key}": missing; expected {expected}' in problems([entry])[-1]


@pytest.mark.parametrize(
    ("kind", "key"),
    [(kind, key) for kind, keys in KINDS.items() for key in keys],
)
def test_each_key_says_what_it_expected(here: Path, kind: str, key: str) -> None:
    spec = KINDS[kind][key]
    wrong = [1] if "object" in spec.types else {"x": 1}
    found = "an array" if "object" in spec.types else "an object"
    entry = (app if kind == "ondemand" else pausable)(**{key: wrong})
    label = "entry #1" if key == "name" else f'entry "{entry["name"]}" (#1)'
    assert only_problem([entry]) == (
        f'config.json: {label}: key "{key}": expected {spec.expected}, found {found}'
    )


def test_every_problem_at_once_in_file_order(here: Path) -> None:
    lines = problems(
        [
            app(name="a", port="5001", colour="red"),
            7,
            pausable(name="a", workdir="nowhere"),
            app(name="c", conflicts_with=["zzz"]),
        ]
    )
    assert [line.split(": ")[1] for line in lines] == [
        'entry "a" (#1)',
        'entry "a" (#1)',
        "entry #2",
        'entry "a" (#3)',
        'entry "a" (#3)',
        'entry "c" (#4)',
    ]
    assert lines[2] == "config.json: entry #2: expected an object {...}, found 7"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            b'[\n  {"type": "ondemand",}\n]',
            "line 2, column 22: not valid JSON: trailing comma",
        ),
        (b"", "line 1, column 1: not valid JSON"),
        (b'{"type": "ondemand"}', "expected a JSON array of entries, found an object"),
        (b"[]", "the array has no entries"),
        (b'[\n"\xff"]', "line 2, column 2: not UTF-8 text"),
    ],
)
def test_file_level_mistakes(here: Path, content: bytes, problem: str) -> None:
    Path("config.json").write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_config(Path("config.json"))
    (line,) = caught.value.problems
    assert line.startswith(f"config.json: {problem}")


def test_byte_order_marks_are_accepted(here: Path) -> None:
    text = orjson.dumps([app()]).decode()
    Path("config.json").write_bytes(b"\xef\xbb\xbf" + text.encode())
    load_config(Path("config.json"))
    Path("config.json").write_bytes(text.encode("utf-16"))
    load_config(Path("config.json"))


def test_unreadable_file_raises_oserror(here: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_config(Path("missing.json"))


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # what orjson can write
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(["type", *ONDEMAND_KEYS, "conflict_with"]) | st.text()
ENTRY = st.dictionaries(KEYS, JSON, max_size=8) | st.fixed_dictionaries(
    {"type": st.sampled_from(list(KINDS))}, optional={k: JSON for k in ONDEMAND_KEYS}
)


def junk_problems(data: bytes, *, check_programs: bool) -> list[str]:
    """The problems found in `data`, or none when it loads."""
    try:
        parse_config(data, Path("config.json"), check_programs=check_programs)
    except ConfigError as error:
        return error.problems or ["ConfigError without a problem"]
    return []


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(document=JSON | st.lists(ENTRY, max_size=5), check_programs=st.booleans())
def test_junk_raises_only_config_error(document: Any, check_programs: bool) -> None:
    data = orjson.dumps(document)
    for line in junk_problems(data, check_programs=check_programs):
        assert line.startswith("config.json: ")
        assert "\n" not in line


@given(st.binary(max_size=200))
def test_junk_bytes_raise_only_config_error(data: bytes) -> None:
    junk_problems(data, check_programs=False)


# Which file is loaded


@pytest.fixture
def user_folder(here: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = here / "user"
    folder.mkdir()
    monkeypatch.setattr(platformdirs, "user_config_dir", lambda *_, **__: str(folder))
    return folder


def test_find_prefers_explicit_then_cwd_then_user_folder(
    here: Path, user_folder: Path
) -> None:
    (user_folder / "config.json").write_text("[]")
    assert find_config_file(None) == user_folder / "config.json"

    Path("config.json").write_text("[]")
    assert find_config_file(None) == Path("config.json")

    Path("other.json").write_text("[]")
    assert find_config_file(Path("other.json")) == Path("other.json")


def test_find_says_how_to_make_one(here: Path, user_folder: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        find_config_file(None)
    (problem,) = caught.value.problems
    assert str(here / "config.json") in problem
    assert str(user_folder / "config.json") in problem
    assert "cp " in problem
    assert "config.example.json" in problem

    with pytest.raises(ConfigError) as caught:
        find_config_file(Path("mine.json"))
    (problem,) = caught.value.problems
    assert problem.startswith("mine.json: no such config file")
    assert problem.endswith("config.example.json mine.json, then edit each cmdline")


# Body regexes


def test_body_regex_searches_anywhere_across_lines() -> None:
    regex = compile_body_regex(".*summarize.*")
    assert regex.search(b'{"prompt": "Please\\n\nsummarize\nthis"}')
    assert not regex.search(b'{"prompt": "hello"}')
    assert compile_body_regex("a.b").search(b"xa\nbx")


@pytest.mark.parametrize(
    ("written", "compiled"),
    [
        (".*summarize.*", b"summarize"),
        (".*?x.*?", b"x"),
        (".*.*x", b"x"),
        (".*", b""),
        (r"a\.*", rb"a\.*"),  # an escaped dot is a literal dot
        (r"a\\.*", rb"a\\"),  # an escaped backslash, then a wildcard
        (r"\Qa.*", rb"\Qa.*"),  # quoted to the end
        ("(?s).*x", b"(?s).*x"),
    ],
)
def test_body_regex_drops_outer_dot_stars(written: str, compiled: bytes) -> None:
    assert compile_body_regex(written).pattern == compiled


@given(
    st.sampled_from(["", ".*", ".*?", ".*.*"]),
    st.sampled_from(["ab", "a.b", "a|b", "(ab)+", "[ab]c", "a\\.", "^a", "b$", ""]),
    st.sampled_from(["", ".*", ".*?"]),
    st.text("ab.\nc", max_size=12),
)
def test_dropping_dot_stars_keeps_what_matches(
    lead: str, core: str, tail: str, body: str
) -> None:
    # The oracle: RE2 itself, on the pattern as written.
    options = re2.Options()
    options.dot_nl = True
    pattern = lead + core + tail
    expected = re2.compile(pattern, options).search(body) is not None
    assert (compile_body_regex(pattern).search(body.encode()) is not None) == expected


def test_body_regex_is_linear_on_a_large_body() -> None:
    body = b'{"prompt": "' + b"a" * 2_000_000 + b'"}'
    regex = compile_body_regex(".*summarize.*")
    started = time.perf_counter()
    assert not regex.search(body)
    # Python's re takes minutes here; the contract says "well under 20 ms".
    assert time.perf_counter() - started < 0.5


# The schema editors show, kept in step with the loader


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = orjson.loads(SCHEMA.read_bytes())
    return schema


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        name = node["$ref"].removeprefix("#/$defs/")
        return _resolve(schema, schema["$defs"][name])
    return node


def _as_json(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple):
        return list(value)
    return value


@pytest.mark.parametrize("kind", list(KINDS))
def test_schema_has_the_loaders_keys(kind: str) -> None:
    schema = _schema()
    definition = schema["$defs"][kind]
    keys = KINDS[kind]
    properties = {
        key: _resolve(schema, node) for key, node in definition["properties"].items()
    }

    assert set(properties) == {"type", *keys}
    assert set(definition["required"]) == {"type"} | {
        key for key, spec in keys.items() if spec.required
    }
    assert definition["additionalProperties"] is False
    assert properties["type"]["const"] == kind
    for key, spec in keys.items():
        node = properties[key]
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
        optional = set() if spec.required else {"null"}
        assert set(types) == set(spec.types) | optional, key
        assert node["description"], key
        if spec.default is not None:
            assert node["default"] == _as_json(spec.default), key


def test_schema_dispatches_on_type() -> None:
    items = _schema()["items"]
    assert set(items["properties"]["type"]["enum"]) == set(KINDS)
    targets = {
        rule["if"]["properties"]["type"]["const"]: rule["then"]["$ref"]
        for rule in items["allOf"]
    }
    assert targets == {kind: f"#/$defs/{kind}" for kind in KINDS}
