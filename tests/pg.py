"""A throwaway PostgreSQL server for the test session, never a shared one.

PostgreSQL refuses to run as root, and sessions and CI run as root: then the server is
started with ``runuser -u postgres`` in a temporary directory owned by ``postgres``. As an
ordinary user, pytest-postgresql's process fixture does the same job (see conftest.py).
Each pytest-xdist worker is its own session, so each worker gets its own server on its own
port and its own socket directory: nothing is shared between workers.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from tests.ports import free_port

SERVER_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
MAX_CONNECTIONS = 200
START_ATTEMPTS = 3


class PostgresUnavailable(RuntimeError):
    """The server could not be started; the message carries the log tail."""


def find_bindir() -> Path | None:
    """Newest ``/usr/lib/postgresql/<major>/bin`` that has ``pg_ctl`` (or PG_BINDIR)."""
    override = os.environ.get("PG_BINDIR")
    if override:
        return Path(override) if (Path(override) / "pg_ctl").exists() else None
    candidates = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")]

    def major(path: Path) -> float:
        try:
            return float(path.parent.name)
        except ValueError:
            return -1.0

    candidates.sort(key=major)
    return candidates[-1] if candidates else None


def sqlalchemy_url(user: str, host: str, port: int, password: str | None = None) -> str:
    auth = f"{user}:{password}" if password else user
    return f"postgresql+psycopg://{auth}@{host}:{port}"


def _conninfo(base_url: str, dbname: str) -> str:
    """psycopg wants ``postgresql://``; the fixtures hand out SQLAlchemy URLs."""
    return base_url.replace("postgresql+psycopg://", "postgresql://", 1) + f"/{dbname}"


def create_database(base_url: str, name: str, template: str | None = None) -> str:
    """``CREATE DATABASE name [TEMPLATE template]``; returns the database's SQLAlchemy URL."""
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
    with psycopg.connect(_conninfo(base_url, "postgres"), autocommit=True) as conn:
        conn.execute(statement)
    return f"{base_url}/{name}"


def drop_database(base_url: str, name: str) -> None:
    """Drop even if a test leaked a connection (FORCE ends it)."""
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(_conninfo(base_url, "postgres"), autocommit=True) as conn:
        conn.execute(statement)


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


@dataclass
class RootPostgres:
    """A server run as the ``postgres`` system user (for when we are root)."""

    bindir: Path
    host: str = "127.0.0.1"
    port: int = 0
    workdir: Path | None = None
    started: bool = False

    @property
    def url(self) -> str:
        return sqlalchemy_url("postgres", self.host, self.port)

    @property
    def data_dir(self) -> Path:
        assert self.workdir is not None, "server not started"
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None, "server not started"
        return self.workdir / "log"

    def _as_postgres(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def start(self) -> None:
        # Not under pytest's basetemp: that is mode 0700 and owned by root, so the postgres
        # user could not reach it. A short path also keeps the socket name under 107 bytes.
        self.workdir = Path(tempfile.mkdtemp(prefix="shoudan-pg-"))
        shutil.chown(self.workdir, user="postgres", group="postgres")
        data = self.data_dir
        init = self._as_postgres(
            str(self.bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--locale=C.UTF-8",
        )  # fmt: skip
        if init.returncode != 0:
            output = init.stdout + init.stderr
            self.remove()
            raise PostgresUnavailable(f"initdb failed:\n{_tail(output)}")
        atexit.register(self.stop)
        last_error = ""
        for _ in range(START_ATTEMPTS):
            self.port = free_port()
            options = (
                f"-p {self.port} -k {self.workdir} -c listen_addresses={self.host} "
                f"-c max_connections={MAX_CONNECTIONS} {SERVER_OPTIONS}"
            )
            result = self._as_postgres(
                str(self.bindir / "pg_ctl"), "-D", str(data), "-o", options,
                "-l", str(self.log_path), "-w", "-t", "60", "start",
            )  # fmt: skip
            if result.returncode == 0:
                self.started = True
                return
            last_error = result.stdout + result.stderr + "\n" + self.log_tail()
        self.stop()
        raise PostgresUnavailable(f"pg_ctl start failed:\n{_tail(last_error)}")

    def log_tail(self) -> str:
        try:
            return _tail(self.log_path.read_text(errors="replace"))
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        """Idempotent: called by the fixture's finalizer and again at exit."""
        if self.started:
            self._as_postgres(
                str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w",
                "stop",
            )  # fmt: skip
            self.started = False
        self.remove()

    def remove(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
