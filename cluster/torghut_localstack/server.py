"""The lifecycle shared by the throwaway servers (PostgreSQL, Prometheus): one child process and
a temp work dir, started once, stopped (and the dir deleted) on `stop()` or leaving a `with`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from torghut_localstack.procs import ManagedProcess


class LocalServer:
    """Base of a local server; a subclass sets `error` and implements `_start()`.

    `_start()` creates `workdir` and starts `_process`; if it fails, whatever it left is stopped.
    """

    error: ClassVar[type[Exception]] = RuntimeError

    def __init__(self) -> None:
        self.workdir: Path | None = None
        self._process: ManagedProcess | None = None

    def start(self) -> Self:
        if self._process is not None:
            raise self.error("already started")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server and delete its files. Safe to call twice."""
        if self._process is not None:
            self._process.stop()
            self._process = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    @contextmanager
    def down(self) -> Iterator[None]:
        """An outage: the server's process is stopped (its files, port and data kept) for the body of the
        ``with``, then started again the same way and waited for. For fault tests."""
        if self._process is None:
            raise self.error("server not started")
        process = self._process
        process.stop()
        try:
            yield
        finally:
            self._process = process.respawn()
            self._await_ready(self._process)

    def _await_ready(self, process: ManagedProcess) -> None:
        raise NotImplementedError

    def _require_workdir(self) -> Path:
        if self.workdir is None:
            raise self.error("server not started")
        return self.workdir

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
