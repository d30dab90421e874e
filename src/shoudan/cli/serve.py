"""``shoudan serve`` and ``shoudan demo``: run the HTTP API with uvicorn.

``serve`` never migrates: changing the schema of a production database is an operator's
decision (``shoudan db upgrade``), so it refuses to start on a schema that is not current.
``demo`` is for a first look on a laptop: it migrates, seeds demo data and serves.
"""

from __future__ import annotations

from pathlib import Path

import typer
import uvicorn
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from shoudan import migrations
from shoudan.api.app import create_app
from shoudan.cli.common import DATABASE_URL_OPTION, fail, open_database, settings
from shoudan.core.config import Settings
from shoudan.core.db import Database, normalize_url

HOST_OPTION = typer.Option(None, "--host", help="Address to listen on [default: SHOUDAN_HOST].")
PORT_OPTION = typer.Option(None, "--port", help="Port to listen on [default: SHOUDAN_PORT].")
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


def _run(config: Settings, database: Database, host: str, port: int) -> None:
    base = f"http://{host}:{port}"
    typer.echo(f"shoudan on {base}  (health: {base}/healthz, API docs: {base}/docs)")
    app = create_app(config, database=database)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        database.dispose()


def serve(
    host: str | None = HOST_OPTION,
    port: int | None = PORT_OPTION,
    database_url: str | None = DATABASE_URL_OPTION,
) -> None:
    """Serve the HTTP API. The database schema must be current (see `shoudan db upgrade`)."""
    config = settings(database_url)
    problem = schema_problem(config.resolved_database_url())
    if problem:
        fail(problem)
    _run(config, open_database(database_url), host or config.host, port or config.port)
