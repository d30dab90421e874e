"""``shoudan serve`` and ``shoudan demo``: run the HTTP API with uvicorn.

``serve`` never migrates: changing the schema of a production database is an operator's
decision (``shoudan db upgrade``), so it refuses to start on a schema that is not current.
``demo`` is for a first look on a laptop: it migrates, seeds demo data and serves.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from shoudan import migrations
from shoudan.api.app import create_app
from shoudan.cli.common import DATABASE_URL_OPTION, fail, open_database, settings
from shoudan.container import Container
from shoudan.core.config import Settings
from shoudan.core.db import Database, normalize_url

HOST_OPTION = typer.Option(None, "--host", help="Address to listen on [default: SHOUDAN_HOST].")
PORT_OPTION = typer.Option(None, "--port", help="Port to listen on [default: SHOUDAN_PORT].")
# Annotated, so that Python callers (``shoudan demo``) get a plain None by default
IsoPortOption = Annotated[
    int | None,
    typer.Option("--iso-port", help="Also run the ISO 8583 gateway on this port, in this process."),
]
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


def _run(
    config: Settings, database: Database, host: str, port: int, iso_port: int | None = None
) -> None:
    base = f"http://{host}:{port}"
    typer.echo(f"shoudan on {base}  (health: {base}/healthz, API docs: {base}/docs)")
    app = create_app(config, database=database)
    try:
        if iso_port is None:
            uvicorn.run(app, host=host, port=port, log_level="info")
        else:
            typer.echo(f"ISO 8583 gateway on {config.iso_host}:{iso_port}")
            # uvicorn configures only its own loggers: the gateway's lines go to the root's
            logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
            server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info"))
            asyncio.run(_serve_with_gateway(server, app.state.container, config.iso_host, iso_port))
    finally:
        database.dispose()


async def _serve_with_gateway(
    server: uvicorn.Server, container: Container, iso_host: str, iso_port: int
) -> None:
    """HTTP and ISO 8583 on one event loop: uvicorn owns the signals; when it stops, the
    gateway stops gracefully (in-flight terminal requests are answered first)."""
    from shoudan.cli.gateway import build_server

    gateway = build_server(container, iso_host, iso_port)
    await gateway.start()
    try:
        await server.serve()
    finally:
        await gateway.stop()


def serve(
    host: str | None = HOST_OPTION,
    port: int | None = PORT_OPTION,
    database_url: str | None = DATABASE_URL_OPTION,
    iso_port: IsoPortOption = None,
) -> None:
    """Serve the HTTP API (and, with --iso-port, the ISO 8583 gateway). The database schema
    must be current (see `shoudan db upgrade`)."""
    config = settings(database_url)
    problem = schema_problem(config.resolved_database_url())
    if problem:
        fail(problem)
    _run(config, open_database(database_url), host or config.host, port or config.port, iso_port)
