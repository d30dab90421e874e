"""``shoudan serve`` and ``shoudan demo``: run the HTTP API with uvicorn.

``serve`` never migrates: changing the schema of a production database is an operator's
decision (``shoudan db upgrade``), so it refuses to start on a schema that is not current.
``demo`` is for a first look on a laptop: it migrates, seeds demo data and serves.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Annotated

import typer
import uvicorn

from shoudan.api.app import create_app
from shoudan.cli.common import (
    DATABASE_URL_OPTION,
    fail,
    open_database,
    schema_problem,
    settings,
)
from shoudan.container import Container
from shoudan.core.config import Settings
from shoudan.core.db import Database

HOST_OPTION = typer.Option(None, "--host", help="Address to listen on [default: SHOUDAN_HOST].")
PORT_OPTION = typer.Option(None, "--port", help="Port to listen on [default: SHOUDAN_PORT].")
# Annotated, so that Python callers (``shoudan demo``) get a plain None by default
IsoPortOption = Annotated[
    int | None,
    typer.Option("--iso-port", help="Also run the ISO 8583 gateway on this port, in this process."),
]


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


WorkersOption = Annotated[
    int,
    typer.Option(
        "--workers", min=1, max=64,
        help="HTTP processes (uvicorn workers) sharing the port, about one per core.",
    ),
]  # fmt: skip


def serve(
    host: str | None = HOST_OPTION,
    port: int | None = PORT_OPTION,
    database_url: str | None = DATABASE_URL_OPTION,
    iso_port: IsoPortOption = None,
    workers: WorkersOption = 1,
) -> None:
    """Serve the HTTP API (and, with --iso-port, the ISO 8583 gateway). The database schema
    must be current (see `shoudan db upgrade`)."""
    config = settings(database_url)
    problem = schema_problem(config.resolved_database_url())
    if problem:
        fail(problem)
    listen_host, listen_port = host or config.host, port or config.port
    if workers > 1:
        if iso_port is not None:
            fail(
                "--iso-port runs the gateway inside one HTTP process: with --workers, run "
                "`shoudan gateway --processes N` beside it"
            )
        _run_workers(database_url, listen_host, listen_port, workers)
        return
    _run(config, open_database(database_url), listen_host, listen_port, iso_port)


def _run_workers(database_url: str | None, host: str, port: int, workers: int) -> None:
    """uvicorn's own process manager: ``workers`` processes accept on one socket, each
    building the app from the environment (``create_app``'s settings). On SQLite they take
    turns to write through the lock file beside the database (docs/architecture.md)."""
    if database_url:  # by environment: a password on a command line is on show in ps
        os.environ["SHOUDAN_DATABASE_URL"] = database_url
    base = f"http://{host}:{port}"
    typer.echo(f"shoudan on {base}, {workers} processes  (health: {base}/healthz)")
    uvicorn.run(
        "shoudan.api.app:create_app", factory=True, host=host, port=port, workers=workers,
        log_level="info",
    )  # fmt: skip
