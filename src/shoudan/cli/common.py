"""Helpers every command shares: settings, the database handle, error reporting."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import typer
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from shoudan import migrations
from shoudan.core.config import Settings, get_settings
from shoudan.core.db import Database, normalize_url
from shoudan.core.errors import DomainError


def settings(database_url: str | None = None) -> Settings:
    base = get_settings()
    if database_url:
        return base.model_copy(update={"database_url": database_url})
    return base


def open_database(database_url: str | None = None) -> Database:
    config = settings(database_url)
    return Database(config.resolved_database_url(), group_commit=config.sqlite_group_commit)


def fail(error: DomainError | str, exit_code: int = 1) -> NoReturn:
    message = str(error)
    typer.echo(f"error: {message}", err=True)
    sys.exit(exit_code)


DATABASE_URL_OPTION = typer.Option(
    None, "--database-url", envvar="SHOUDAN_DATABASE_URL", help="Database URL."
)

UPGRADE_HINT = "run `shoudan db upgrade` first"


def schema_problem(url: str) -> str | None:
    """Why the database at ``url`` cannot be served as it is, or None when it is current."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if path and path != ":memory:" and not Path(path).exists():
            # Checked first: connecting would create an empty file as a side effect.
            return f"no database at {path}: {UPGRADE_HINT}"
    script = ScriptDirectory.from_config(migrations.alembic_config(url))
    head = script.get_current_head()
    try:
        current = migrations.current(url)
    except Exception as exc:
        return f"cannot reach the database ({type(exc).__name__}: {exc})"
    if current is None:
        return f"the database has no schema: {UPGRADE_HINT}"
    if current == head:
        return None
    if current not in {rev.revision for rev in script.walk_revisions()}:
        return f"the database schema ({current}) is newer than this code ({head}): upgrade shoudan"
    return f"the database schema is at {current}, this code needs {head}: {UPGRADE_HINT}"


def become_supervisor(
    database_url: str | None,
    count: int,
    server: list[str],
    listen: tuple[str, int],
    metrics_port: int | None = None,
) -> NoReturn:
    """Bootstrap the database once (before the processes could race to), then replace this
    process by the supervisor of ``count`` copies of ``server`` (core/processes.py), which
    needs none of the modules the ``shoudan`` command loaded. The supervisor listens on
    ``listen`` (host, port) and hands each connection to the least busy copy."""
    from shoudan.bootstrap import bootstrap

    database = open_database(database_url)
    try:
        bootstrap(database)
    finally:
        database.dispose()
    if database_url:  # by environment: a password on a command line is on show in ps
        os.environ["SHOUDAN_DATABASE_URL"] = database_url
    # -P: the working directory is not put on the module path (no look-alike module there
    # may be imported in its place)
    supervisor = [
        sys.executable, "-P", "-m", "shoudan.core.processes", "--count", str(count),
        "--host", listen[0], "--port", str(listen[1]),
    ]  # fmt: skip
    if metrics_port:
        supervisor += ["--metrics-port", str(metrics_port)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [*supervisor, "--", *server])  # noqa: S606 - our own modules
