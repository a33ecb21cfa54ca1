"""A throwaway PostgreSQL 15 cluster on 127.0.0.1 for tests and the demo.

    with PostgresServer() as pg:
        pg.create_role("torghut", password="secret")
        pg.create_database("torghut", owner="torghut")
        engine = sqlalchemy.create_engine(pg.url("torghut", user="torghut", password="secret"))

The cluster lives in a temp dir on a free port with fsync off; PostgreSQL refuses to run as
root, so under root initdb and postgres run as the `postgres` system user.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from torghut_localstack.ports import HOST, free_port
from torghut_localstack.procs import ManagedProcess, start_process
from torghut_localstack.server import LocalServer
from torghut_localstack.wait import WaitTimeout, wait_for

DEFAULT_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
_CONNECT_TIMEOUT_S = 3


class PostgresError(RuntimeError):
    """The server could not be set up or did not become ready; the message has its log."""


class PostgresServer(LocalServer):
    """PostgreSQL on 127.0.0.1:`port` with superuser `superuser`.

    `password`: None means trust auth on loopback; otherwise TCP connections need a password
    (scram-sha-256) and the superuser gets this one.
    """

    error = PostgresError

    def __init__(
        self,
        *,
        bin_dir: Path = DEFAULT_BIN_DIR,
        superuser: str = "postgres",
        password: str | None = None,
        start_timeout: float = 60.0,
        die_with_parent: bool = True,
        extra_listen: Sequence[str] = (),
        client_networks: Sequence[str] = (),
        host: str = HOST,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """`extra_listen`: addresses to listen on besides `host` (e.g. the real node's IP, for pods);
        `client_networks`: CIDRs allowed to connect there, with a password (scram-sha-256); `host`: the address
        :meth:`dsn` names (127.0.0.1 unless pods must reach the same DSNs: then an address of this host they
        reach, with `client_networks` covering both it and them); `settings`: more server settings (`-c name=value`),
        e.g. a benchmark's `shared_buffers`."""
        super().__init__()
        self.extra_listen = tuple(extra_listen)
        self.client_networks = tuple(client_networks)
        self.bin_dir = bin_dir
        self.superuser = superuser
        self.password = password
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        self.host = host
        self.settings = dict(settings or {})
        self.port = 0
        self._os_user = "postgres" if os.geteuid() == 0 else None

    # -- addresses ---------------------------------------------------------------------------
    def dsn(self, database: str = "postgres", *, user: str | None = None, password: str | None = None) -> str:
        """libpq URI, e.g. `postgresql://postgres@127.0.0.1:5433/postgres`."""
        return f"postgresql://{self._userinfo(user, password)}@{self.host}:{self.port}/{quote(database)}"

    def url(self, database: str = "postgres", *, user: str | None = None, password: str | None = None) -> str:
        """SQLAlchemy URL with the psycopg 3 driver (`postgresql+psycopg://...`)."""
        return self.dsn(database, user=user, password=password).replace("postgresql://", "postgresql+psycopg://", 1)

    def _userinfo(self, user: str | None, password: str | None) -> str:
        if user is None:
            user, password = self.superuser, password or self.password
        info = quote(user, safe="")
        return f"{info}:{quote(password, safe='')}" if password else info

    @property
    def log_path(self) -> Path:
        return self._require_workdir() / "postgres.log"

    # -- admin helpers -----------------------------------------------------------------------
    def execute(self, statement: str | sql.SQL | sql.Composed, database: str = "postgres") -> None:
        """Run one statement as the superuser in autocommit mode."""
        with psycopg.connect(self.dsn(database), autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S) as conn:
            conn.execute(statement)

    def create_role(
        self, name: str, *, password: str | None = None, login: bool = True, superuser: bool = False
    ) -> None:
        options: list[sql.Composable] = [
            sql.SQL("LOGIN" if login else "NOLOGIN"),
            sql.SQL("SUPERUSER" if superuser else "NOSUPERUSER"),
        ]
        if password is not None:
            options.append(sql.SQL("PASSWORD {}").format(sql.Literal(password)))
        self.execute(sql.SQL("CREATE ROLE {} ").format(sql.Identifier(name)) + sql.SQL(" ").join(options))

    def create_database(self, name: str, *, owner: str | None = None) -> None:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if owner is not None:
            statement += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
        self.execute(statement)

    # -- lifecycle ---------------------------------------------------------------------------
    def _start(self) -> None:
        workdir = self.workdir = Path(tempfile.mkdtemp(prefix="torghut-pg-"))
        if self._os_user is not None:
            entry = pwd.getpwnam(self._os_user)
            os.chown(workdir, entry.pw_uid, entry.pw_gid)
        data_dir = workdir / "data"
        self._initdb(data_dir)
        self.port = free_port()
        argv = [
            str(self.bin_dir / "postgres"),
            "-D", str(data_dir),
            "-c", f"listen_addresses={','.join((self.host, *self.extra_listen))}",
            "-c", f"port={self.port}",
            "-c", f"unix_socket_directories={workdir}",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            "-c", "max_connections=200",
            "-c", "TimeZone=UTC",
        ]  # fmt: skip
        for name, value in self.settings.items():
            argv += ["-c", f"{name}={value}"]
        self._process = start_process(
            "postgres",
            argv,
            log_path=self.log_path,
            user=self._os_user,
            stop_signal=signal.SIGINT,  # "fast" shutdown; SIGTERM would wait for clients
            die_with_parent=self.die_with_parent,
            death_signal=signal.SIGINT,
        )
        self._await_ready(self._process)

    def _await_ready(self, process: ManagedProcess) -> None:
        def ready() -> bool:
            if not process.running():
                raise PostgresError(process.describe_exit())
            with psycopg.connect(self.dsn(), connect_timeout=_CONNECT_TIMEOUT_S) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)

        try:
            wait_for(
                ready,
                timeout=self.start_timeout,
                what=f"postgres on {self.host}:{self.port} to accept connections",
                retry_on=(psycopg.OperationalError,),
            )
        except (WaitTimeout, PostgresError) as error:
            raise PostgresError(f"{error}\n--- last lines of {self.log_path} ---\n{process.tail()}") from error

    def _initdb(self, data_dir: Path) -> None:
        workdir = self._require_workdir()
        argv = [
            str(self.bin_dir / "initdb"),
            "-D", str(data_dir),
            "-U", self.superuser,
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]  # fmt: skip
        if self.password is None:
            argv.append("--auth=trust")
        else:
            pwfile = workdir / "superuser.pw"
            pwfile.write_text(self.password + "\n")
            if self._os_user is not None:
                entry = pwd.getpwnam(self._os_user)
                os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            pwfile.chmod(0o600)
            argv += ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        try:
            subprocess.run(
                argv, check=True, capture_output=True, text=True, timeout=120, user=self._os_user, cwd=workdir
            )
        except subprocess.CalledProcessError as error:
            raise PostgresError(f"initdb failed ({error.returncode}):\n{error.stdout}\n{error.stderr}") from error
        if self.client_networks:
            with (data_dir / "pg_hba.conf").open("a") as hba:
                hba.writelines(f"host all all {network} scram-sha-256\n" for network in self.client_networks)
