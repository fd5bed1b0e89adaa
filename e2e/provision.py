"""Provision a real llama.cpp backend for RPH's end-to-end checks.

Run as ``python3 e2e/provision.py``. Everything goes into a cache folder
outside the clone, ``$RPH_E2E_CACHE`` (default ``~/.cache/rph-e2e``), so a
second run reuses it and takes seconds:

    sdist/     the llama-cpp-python source archive, downloaded once
    wheels/    the wheel compiled from it, one folder per build recipe
    venv/      llama-cpp-python[server], and gguf and numpy for the model
    models/    the real vocabulary and the tiny model written over it
    logs/      the full output of each step
    provisioned.json   what the e2e checks need (paths, server command)

How it works:

1. The sdist of the pinned llama-cpp-python is downloaded. It carries
   llama.cpp's sources and the vocabulary-only GGUF files of its tests.
2. The sdist is compiled into a wheel, CPU only, without llama.cpp's
   tests, examples, tools, server or multimodal library and without
   ``-march=native`` (about 4 minutes on 2 cores, at low priority). The
   wheel is kept, so a fresh venv installs it in seconds.
3. A venv gets that wheel with its ``[server]`` extra, and gguf and numpy.
4. ``tiny_model.py`` runs inside the venv and writes a 2-layer llama of
   width 64 with seeded random weights over llama.cpp's SentencePiece
   vocabulary, then loads it with llama.cpp and checks that it generates.

Every step says what it does and how long it took. The last line printed
is machine-readable (``RPH_E2E python=... model=... json=...``, values
quoted for ``shlex.split``). A failure ends the run with exit status 1
and one line on stderr that names the step, the cause and the log.

Standard library only: this runs before the venv exists.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

# The version these scripts were verified with; the e2e checks depend on its
# server's behaviour (endpoints, streaming, --interrupt_requests).
LLAMA_CPP_PYTHON = "0.3.36"
# What tiny_model.py needs. The clients the checks drive (openai, httpx)
# live in RPH's own virtualenv: `make e2e` installs the `e2e` extra there.
MODEL_REQUIREMENTS = ("gguf==0.19.0", "numpy")

# llama.cpp is a subproject here, so its tests, examples and tools default
# to off already; saying so keeps that true if upstream changes the default.
# LLAVA_BUILD=OFF skips libmtmd (multimodal), which only the vision chat
# handlers load, lazily. GGML_NATIVE=OFF builds for a fixed instruction set
# (AVX2 on x86-64), so a cached wheel runs on any machine of the kind CI uses,
# not only the one that built it. OpenSSL only serves llama.cpp's downloader.
CMAKE_ARGS = " ".join(
    (
        "-DGGML_NATIVE=OFF",
        "-DGGML_BLAS=OFF",
        "-DGGML_CCACHE=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_TOOLS=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAVA_BUILD=OFF",
    )
)

# The SentencePiece vocabulary of llama 1/2 (32000 tokens, 724 kB): small,
# and its byte tokens are typed as such, so tiny_model.py can exclude them.
VOCAB_MEMBER = "vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf"

# Bump when tiny_model.py changes what it writes, so old caches regenerate.
MODEL_NAME = "tiny-llama-spm-v1.gguf"

# How often the compile step reports progress, seconds.
PROGRESS_EVERY = 30.0

# A ninja progress line, as pip -v relays it: "[37/140] /usr/bin/g++ ...".
NINJA_STEP = re.compile(rb"\[(\d+)/(\d+)\]")

# pip's own words when a registry cannot be reached or does not have it.
UNREACHABLE = re.compile(
    r"Could not find a version|No matching distribution|Max retries exceeded"
    r"|Failed to establish a new connection|Temporary failure in name resolution"
    r"|Network is unreachable|Connection refused|Read timed out",
)

HERE = Path(__file__).resolve().parent


class ProvisionError(Exception):
    """A step failed; the message is the one line the user sees."""


def say(message: str) -> None:
    print(f"[provision] {message}", flush=True)


@contextlib.contextmanager
def step(title: str) -> Iterator[dict[str, str]]:
    """Announce a step, then report its outcome and how long it took.

    The body may set ``outcome["result"]`` ("reused", "built", ...).
    """
    say(f"{title} ...")
    outcome = {"result": "done"}
    started = time.monotonic()
    yield outcome
    say(f"  {outcome['result']} in {time.monotonic() - started:.1f} s")


def venv_python(venv: Path) -> Path:
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def run_logged(
    argv: list[str],
    log: Path,
    what: str,
    env: dict[str, str] | None = None,
    progress: bool = False,
) -> None:
    """Run ``argv`` with its output in ``log``; raise ProvisionError on failure.

    With ``progress``, a line like "compiled 86/140 after 1m40s" is printed
    every PROGRESS_EVERY seconds from the ninja steps in the output.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    last_report = started
    with log.open("wb") as sink:
        sink.write(("$ " + shlex.join(argv) + "\n").encode())
        sink.flush()
        try:
            proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
            )
        except OSError as exc:
            raise ProvisionError(f"{what}: cannot run {argv[0]}: {exc}") from exc
        assert proc.stdout is not None
        for line in proc.stdout:
            sink.write(line)
            now = time.monotonic()
            match = NINJA_STEP.search(line)
            if progress and match and now - last_report >= PROGRESS_EVERY:
                done, total = match.group(1).decode(), match.group(2).decode()
                minutes, seconds = divmod(int(now - started), 60)
                say(f"  compiled {done}/{total} after {minutes}m{seconds:02d}s")
                last_report = now
        status = proc.wait()
    if status != 0:
        raise ProvisionError(f"{what}: {explain_failure(log)} (log: {log})")


def explain_failure(log: Path) -> str:
    """Name the cause of a failed run from its log, in a few words."""
    text = log.read_text(errors="replace")
    if UNREACHABLE.search(text):
        return "the package registry is unreachable or lacks a package"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    if errors:
        return errors[-1].removeprefix("ERROR:").strip()
    return lines[-1] if len(lines) > 1 else "failed"


def spec_digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:10]


def fetch_sdist(cache: Path) -> Path:
    folder = cache / "sdist"
    target = folder / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    with step(f"llama-cpp-python {LLAMA_CPP_PYTHON} source archive") as outcome:
        if target.is_file():
            outcome["result"] = "reused"
            return target
        partial = folder / "partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        run_logged(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                "llama-cpp-python",
                "--dest",
                str(partial),
                f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
            ],
            cache / "logs" / "sdist.log",
            "downloading the llama-cpp-python sdist",
        )
        # pip names the file as the registry does; normalise it for reuse.
        downloaded = sorted(partial.glob("*.tar.gz"))
        if len(downloaded) != 1:
            raise ProvisionError(f"expected one sdist in {partial}, got {downloaded}")
        downloaded[0].replace(target)
        shutil.rmtree(partial, ignore_errors=True)
        outcome["result"] = "downloaded"
        return target


def build_wheel(cache: Path, sdist: Path) -> Path:
    """Return the cached wheel for this version and CMAKE_ARGS, compiling it once."""
    folder = cache / "wheels" / f"{LLAMA_CPP_PYTHON}-{spec_digest(CMAKE_ARGS)}"
    with step("llama-cpp-python wheel (CPU only)") as outcome:
        wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
        if wheels:
            outcome["result"] = "reused"
            return wheels[0]
        say(f"  compiling llama.cpp: about 4 min on 2 cores; CMAKE_ARGS={CMAKE_ARGS}")
        env = dict(os.environ)
        env["CMAKE_ARGS"] = CMAKE_ARGS
        env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(os.cpu_count() or 1)
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        argv = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-v",
            "--wheel-dir",
            str(partial),
            str(sdist),
        ]
        # A long compile shares the machine with tests and other builds.
        if shutil.which("nice"):
            argv = ["nice", "-n", "10", *argv]
        run_logged(
            argv,
            cache / "logs" / "wheel.log",
            "compiling llama-cpp-python",
            env=env,
            progress=True,
        )
        shutil.rmtree(folder, ignore_errors=True)
        partial.replace(folder)
        outcome["result"] = "compiled"
        return sorted(folder.glob("llama_cpp_python-*.whl"))[0]


def make_venv(cache: Path, wheel: Path) -> Path:
    """Return the venv's interpreter, installing into the venv when needed."""
    venv = cache / "venv"
    python = venv_python(venv)
    requirements = [
        f"llama-cpp-python[server]=={LLAMA_CPP_PYTHON}",
        *MODEL_REQUIREMENTS,
    ]
    wanted: dict[str, object] = {
        "python": sys.version,
        "wheel": wheel.name,
        "requirements": requirements,
    }
    marker = venv / "rph-e2e.json"
    with step("virtualenv with llama-cpp-python[server] and gguf") as outcome:
        if venv_is_usable(marker, python, wanted):
            outcome["result"] = "reused"
            return python
        shutil.rmtree(venv, ignore_errors=True)
        run_logged(
            [sys.executable, "-m", "venv", str(venv)],
            cache / "logs" / "venv.log",
            "creating the virtualenv",
        )
        run_logged(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--find-links",
                str(wheel.parent),
                "--only-binary",
                "llama-cpp-python",
                *requirements,
            ],
            cache / "logs" / "install.log",
            "installing into the virtualenv",
        )
        marker.write_text(json.dumps(wanted, indent=2))
        outcome["result"] = "installed"
        return python


def venv_is_usable(marker: Path, python: Path, wanted: dict[str, object]) -> bool:
    """True if the venv holds what is wanted and its packages import (~1 s)."""
    try:
        if json.loads(marker.read_text()) != wanted:
            return False
    except (OSError, ValueError):
        return False
    probe = subprocess.run(
        [str(python), "-c", "import llama_cpp.server.app, gguf"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def extract_vocab(cache: Path, sdist: Path) -> Path:
    target = cache / "models" / Path(VOCAB_MEMBER).name
    with step(f"vocabulary {target.name} from the sdist") as outcome:
        if target.is_file():
            outcome["result"] = "reused"
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        member = f"{sdist.name.removesuffix('.tar.gz')}/{VOCAB_MEMBER}"
        try:
            with tarfile.open(sdist) as archive:
                source = archive.extractfile(member)
                if source is None:
                    raise KeyError(member)
                partial = target.with_suffix(".partial")
                partial.write_bytes(source.read())
        except (KeyError, tarfile.TarError) as exc:
            raise ProvisionError(f"reading {member} from {sdist}: {exc}") from exc
        partial.replace(target)
        outcome["result"] = "extracted"
        return target


def write_model(cache: Path, python: Path, vocab: Path) -> Path:
    target = cache / "models" / MODEL_NAME
    with step(f"tiny model {target.name}") as outcome:
        if target.is_file():
            outcome["result"] = "reused"
            return target
        run_logged(
            [str(python), str(HERE / "tiny_model.py"), str(vocab), str(target)],
            cache / "logs" / "model.log",
            "writing the tiny model",
        )
        outcome["result"] = "written and checked"
        return target


@contextlib.contextmanager
def locked(cache: Path) -> Iterator[None]:
    """Hold the cache for this run, so two runs do not build into it at once."""
    cache.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: runs are not serialised there.
        yield
        return
    with (cache / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("waiting for another provisioning run to finish ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def server_argv(python: Path, model: Path) -> list[str]:
    """The command line that serves the tiny model; the caller adds --port."""
    return [
        str(python),
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        # /v1/models lists the alias; without one it lists the file's path.
        "--model_alias",
        "tiny",
        "--host",
        "127.0.0.1",
        "--n_ctx",
        "2048",
        # By default a new request cuts off the one being generated.
        "--interrupt_requests",
        "False",
    ]


@dataclasses.dataclass(frozen=True)
class Provisioned:
    """What the e2e checks need; written to ``provisioned.json`` as is."""

    cache: str
    python: str
    model: str
    vocab: str
    wheel: str
    llama_cpp_python: str
    cmake_args: str
    server_argv: list[str]


def provision(cache: Path) -> Provisioned:
    """Bring every part up to date in ``cache``; raise ProvisionError."""
    with locked(cache):
        sdist = fetch_sdist(cache)
        wheel = build_wheel(cache, sdist)
        python = make_venv(cache, wheel)
        vocab = extract_vocab(cache, sdist)
        model = write_model(cache, python, vocab)
        facts = Provisioned(
            cache=str(cache),
            python=str(python),
            model=str(model),
            vocab=str(vocab),
            wheel=str(wheel),
            llama_cpp_python=LLAMA_CPP_PYTHON,
            cmake_args=CMAKE_ARGS,
            server_argv=server_argv(python, model),
        )
        record = json.dumps(dataclasses.asdict(facts), indent=2) + "\n"
        (cache / "provisioned.json").write_text(record)
    return facts


def default_cache() -> Path:
    configured = os.environ.get("RPH_E2E_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "rph-e2e"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache",
        type=Path,
        default=default_cache(),
        help="cache folder (default: $RPH_E2E_CACHE or ~/.cache/rph-e2e)",
    )
    cache = parser.parse_args().cache.expanduser().resolve()

    say(f"cache: {cache}")
    started = time.monotonic()
    try:
        facts = provision(cache)
    except (ProvisionError, OSError) as exc:
        print(f"provision: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("provision: interrupted", file=sys.stderr, flush=True)
        return 130
    say(f"ready in {time.monotonic() - started:.1f} s")
    say("serve it with: " + shlex.join([*facts.server_argv, "--port", "8080"]))
    fields = {
        "python": facts.python,
        "model": facts.model,
        "cache": facts.cache,
        "json": str(cache / "provisioned.json"),
    }
    line = " ".join(f"{key}={shlex.quote(value)}" for key, value in fields.items())
    print(f"RPH_E2E {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
