"""Child processes of the local stack: started in their own process group, logged to a file,
stopped by PID only, and recognised again (by command line and start time) after a restart.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torghut_localstack.wait import WaitTimeout, wait_for

_PR_SET_PDEATHSIG = 1
_TAIL_BYTES = 64 * 1024


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file ('' if it doesn't exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - _TAIL_BYTES))
            data = handle.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def _signal_group(pid: int, sig: int) -> None:
    """Signal the process group led by `pid` (each child here leads its own)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back while a child is spawned and recorded, then deliver them.

    Without this a Ctrl-C between fork and bookkeeping could leave an unrecorded child behind.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def record(signum: int, _frame: object) -> None:
        received.append(signum)

    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not None:
            previous[sig] = signal.signal(sig, record)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])


def _die_with_parent(sig: int) -> Callable[[], None]:
    """A preexec hook asking the kernel to send `sig` to the child when this process dies."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork, not in the child
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


@dataclass
class ManagedProcess:
    """A child process this Python process started and will stop."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    stop_signal: int = signal.SIGTERM
    options: dict[str, Any] = field(default_factory=dict)
    """The keyword arguments it was started with, so `respawn` starts it the same way."""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def respawn(self) -> ManagedProcess:
        """Start the same command again (after `stop`), appending to the same log: a restart for fault tests."""
        return start_process(self.name, self.argv, log_path=self.log_path, **self.options)

    def running(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def describe_exit(self) -> str:
        return f"{self.name} (pid {self.pid}) exited with code {self.popen.returncode}"

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the process and its group: `stop_signal`, then SIGKILL after `timeout`."""
        if self.popen.poll() is None:
            _signal_group(self.pid, self.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self.popen.wait(10)
        # Anything left in the group (e.g. Postgres backends) goes too; the PID can't have been
        # reused while it still names a process group.
        _signal_group(self.pid, signal.SIGKILL)


def start_process(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
    stop_signal: int = signal.SIGTERM,
    die_with_parent: bool = True,
    death_signal: int = signal.SIGKILL,
) -> ManagedProcess:
    """Start `argv` in a new session with stdout+stderr appended to `log_path`.

    `user`: run as that system user (needs root). `die_with_parent`: the kernel sends
    `death_signal` to the child if this process dies (SIGKILL by default: a graceful stop of
    kube-apiserver can hang when etcd gets the same signal); turn it off for processes that
    must outlive this one (`torghut-localstack up`).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    credentials: dict[str, Any] = {}
    if user is not None:
        entry = pwd.getpwnam(user)
        credentials = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    preexec = _die_with_parent(death_signal) if die_with_parent else None
    with log_path.open("ab") as log, deferred_signals():
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=preexec,  # noqa: PLW1509 - only prctl, resolved before fork
            **credentials,
        )
        options = {
            "env": env,
            "cwd": cwd,
            "user": user,
            "stop_signal": stop_signal,
            "die_with_parent": die_with_parent,
            "death_signal": death_signal,
        }
        return ManagedProcess(name, list(argv), log_path, popen, stop_signal, options)


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from field 3 (state) on, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


@dataclass(frozen=True)
class ProcessRecord:
    """Enough to find a detached process again and to be sure it is still the same one."""

    name: str
    pid: int
    argv: list[str]
    start_time: int
    stop_signal: int = signal.SIGTERM

    @classmethod
    def of(cls, process: ManagedProcess) -> ProcessRecord:
        started = start_time(process.pid)
        if started is None:
            raise RuntimeError(f"{process.describe_exit()} before it could be recorded")
        return cls(process.name, process.pid, process.argv, started, process.stop_signal)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "argv": self.argv,
            "start_time": self.start_time,
            "stop_signal": self.stop_signal,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessRecord:
        return cls(
            str(data["name"]),
            int(data["pid"]),
            [str(arg) for arg in data["argv"]],
            int(data["start_time"]),
            int(data.get("stop_signal", signal.SIGTERM)),
        )

    def is_running(self) -> bool:
        """True if the PID is alive and is still the process recorded (not a reused PID)."""
        fields = _proc_stat(self.pid)
        if fields is None or fields[0] in ("Z", "X"):
            return False
        return int(fields[19]) == self.start_time and cmdline(self.pid) == self.argv

    def stop(self, timeout: float = 20.0) -> bool:
        """Stop the recorded process (and its group) if it is still the one recorded.

        Returns False if it was already gone or the PID now belongs to something else.
        """
        if not self.is_running():
            return False
        for sig in (self.stop_signal, signal.SIGKILL):
            if not self.is_running():
                return True
            try:
                if os.getpgid(self.pid) == self.pid:
                    _signal_group(self.pid, sig)
                else:
                    os.kill(self.pid, sig)
            except ProcessLookupError:
                return True
            try:
                wait_for(lambda: not self.is_running(), timeout=timeout, what=f"{self.name} to exit")
            except WaitTimeout:
                continue
            return True
        raise RuntimeError(f"{self.name} (pid {self.pid}) survived SIGKILL")


def run_streaming(
    argv: Sequence[str],
    *,
    timeout: float,
    on_line: Callable[[str], None],
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> list[str]:
    """Run a command in its own process group, passing each output line to `on_line`.

    Returns all lines. On timeout, failure or interruption (Ctrl-C) the whole group is stopped
    before the error propagates, so no grandchild (a `go build`) is left behind.
    """
    with deferred_signals():
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            text=True,
            start_new_session=True,
        )
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        _signal_group(popen.pid, signal.SIGKILL)

    watchdog = threading.Timer(timeout, expire)
    watchdog.start()
    lines: list[str] = []
    try:
        assert popen.stdout is not None
        for raw in popen.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            on_line(line)
        popen.wait(timeout)
    except BaseException:
        _signal_group(popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(10)
        _signal_group(popen.pid, signal.SIGKILL)
        raise
    finally:
        watchdog.cancel()
        if popen.stdout is not None:
            popen.stdout.close()
    if timed_out.is_set():
        raise subprocess.TimeoutExpired(list(argv), timeout, output="\n".join(lines[-40:]))
    if popen.returncode != 0:
        raise subprocess.CalledProcessError(popen.returncode, list(argv), output="\n".join(lines[-40:]))
    return lines
