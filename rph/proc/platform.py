"""What differs between POSIX and Windows when RPH holds a process tree.

RPH starts every child in a process group of its own, so that one polite
signal reaches the whole tree, and finds the tree again with psutil when it
must be killed. Everything that depends on the operating system lives here:
how a child is spawned, how it is asked to stop, how its exit is awaited and
how its output is read. The rest of `proc/` is written against these
functions only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import psutil
import trio

IS_WINDOWS = sys.platform == "win32"
IS_LINUX = sys.platform.startswith("linux")

# Linux: prctl(PR_SET_PDEATHSIG) makes the kernel signal a child when the
# *thread* that forked it exits. RPH therefore spawns from the trio thread,
# which lives exactly as long as RPH, never from a worker thread.
_PR_SET_PDEATHSIG = 1

# How often exits are polled where no exit notification exists (macOS,
# Windows, and the grandchildren of a tree on every platform).
EXIT_POLL_INTERVAL = 0.02

# psutil reports creation times rounded to the clock tick of the platform.
CREATE_TIME_SLACK = 0.05

# Output is read in pieces of this size; lines are split by the caller.
_READ_SIZE = 65536


def _arm_parent_death_signal() -> None:
    """Runs in the forked child before exec: die with RPH (Linux only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(
    argv: Sequence[str], cwd: Path, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """Start `argv` as the leader of a new process group, output piped.

    Must be called from the trio thread (see `_arm_parent_death_signal`).
    stderr is merged into stdout so that one pump keeps the lines in order.
    Raises OSError when the program cannot be started.
    """
    full_env = {**os.environ, **env}
    if IS_WINDOWS:
        popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            creationflags=subprocess.CREATE_NEW_PROCESS_GROUP,  # type: ignore[attr-defined]
        )
        _windows_job.assign(popen)
        return popen
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_arm_parent_death_signal if IS_LINUX else None,
    )


def ask_to_stop(popen: subprocess.Popen[bytes]) -> None:
    """Send the polite stop to the child's whole process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        if IS_WINDOWS:
            popen.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        else:
            os.killpg(popen.pid, signal.SIGTERM)


def kill_group(pid: int) -> None:
    """Kill what is left of the process group led by `pid` (POSIX)."""
    if not IS_WINDOWS:
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            os.killpg(pid, signal.SIGKILL)


def create_time(pid: int) -> float:
    """When `pid` started; with the pid it names one process for good."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


def tree_members(pid: int, started: float) -> list[psutil.Process]:
    """Every live process of the tree rooted at `pid`, the root included.

    `started` is the root's creation time: a recycled pid belongs to a
    stranger, whose tree is not ours. Descendants are found by parentage
    and, on POSIX, also by session: a grandchild whose parent already
    exited is re-parented to init and only its session still says where it
    came from.
    """
    members: dict[int, psutil.Process] = {}
    try:
        root = psutil.Process(pid)
        if abs(root.create_time() - started) >= CREATE_TIME_SLACK:
            return []  # the pid now names a stranger, and so may its session
        members[root.pid] = root
        for child in root.children(recursive=True):
            members[child.pid] = child
    except psutil.Error:
        pass  # the root has gone; its session may not have
    if not IS_WINDOWS:
        for proc in psutil.process_iter():
            with contextlib.suppress(OSError):
                if proc.pid not in members and os.getsid(proc.pid) == pid:
                    members[proc.pid] = proc
    return [proc for proc in members.values() if is_alive(proc)]


def is_alive(proc: psutil.Process) -> bool:
    """True while `proc` runs; a zombie has let go of its memory already."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_all(procs: Sequence[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def terminate_all(procs: Sequence[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()


async def wait_exit(popen: subprocess.Popen[bytes]) -> int:
    """Wait until the child exits, reap it and return its exit code."""
    if IS_LINUX:
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(popen.pid)
            try:
                await trio.lowlevel.wait_readable(pidfd)
            finally:
                os.close(pidfd)
    while popen.poll() is None:  # noqa: ASYNC110 - no exit notification here
        await trio.sleep(EXIT_POLL_INTERVAL)
    return popen.returncode


async def read_output(popen: subprocess.Popen[bytes]) -> AsyncIterator[bytes]:
    """Yield the child's output as it comes, until every writer closed it."""
    assert popen.stdout is not None
    if IS_WINDOWS:
        pipe = popen.stdout
        read1 = pipe.read1  # type: ignore[attr-defined]
        while chunk := await trio.to_thread.run_sync(read1, _READ_SIZE):
            yield chunk
        return
    stream = trio.lowlevel.FdStream(os.dup(popen.stdout.fileno()))
    popen.stdout.close()
    async with stream:
        while chunk := await stream.receive_some(_READ_SIZE):
            yield chunk


def state_folder() -> Path:
    """Where RPH keeps the record of what it started."""
    import platformdirs

    return Path(platformdirs.user_state_dir("rph"))


class _WindowsJob:
    """A Job Object with kill-on-close: the children die when RPH does.

    Windows has no parent-death signal; a job whose last handle closes
    (RPH exiting in any way) terminates every process assigned to it.
    """

    def __init__(self) -> None:
        self._handle: int | None = None

    def assign(self, popen: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(OSError, AttributeError):
            kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
            if self._handle is None:
                self._handle = self._create(kernel32)
            kernel32.AssignProcessToJobObject(
                self._handle,
                int(popen._handle),  # type: ignore[attr-defined]
            )

    @staticmethod
    def _create(kernel32: object) -> int:
        from ctypes import wintypes

        job_object_extended_limit_information = 9
        kill_on_job_close = 0x2000

        class _BasicLimits(ctypes.Structure):
            _fields_ = [
                ("PerProcessUserTimeLimit", ctypes.c_int64),
                ("PerJobUserTimeLimit", ctypes.c_int64),
                ("LimitFlags", wintypes.DWORD),
                ("MinimumWorkingSetSize", ctypes.c_size_t),
                ("MaximumWorkingSetSize", ctypes.c_size_t),
                ("ActiveProcessLimit", wintypes.DWORD),
                ("Affinity", ctypes.c_size_t),
                ("PriorityClass", wintypes.DWORD),
                ("SchedulingClass", wintypes.DWORD),
            ]

        class _ExtendedLimits(ctypes.Structure):
            _fields_ = [
                ("BasicLimitInformation", _BasicLimits),
                ("IoInfo", ctypes.c_uint64 * 6),
                ("ProcessMemoryLimit", ctypes.c_size_t),
                ("JobMemoryLimit", ctypes.c_size_t),
                ("PeakProcessMemoryUsed", ctypes.c_size_t),
                ("PeakJobMemoryUsed", ctypes.c_size_t),
            ]

        handle: int = kernel32.CreateJobObjectW(None, None)  # type: ignore[attr-defined]
        limits = _ExtendedLimits()
        limits.BasicLimitInformation.LimitFlags = kill_on_job_close
        kernel32.SetInformationJobObject(  # type: ignore[attr-defined]
            handle,
            job_object_extended_limit_information,
            ctypes.byref(limits),
            ctypes.sizeof(limits),
        )
        return handle


_windows_job = _WindowsJob()
