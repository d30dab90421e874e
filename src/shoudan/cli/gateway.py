"""``shoudan gateway``: the ISO 8583 terminal gateway on its own (``shoudan serve --iso-port``
runs it beside the HTTP API, in one process). SIGINT/SIGTERM stop it gracefully: no new
connections, in-flight requests finish and are answered, then it exits."""

from __future__ import annotations

import asyncio
import logging

import typer
from prometheus_client import start_http_server

from shoudan.bootstrap import bootstrap
from shoudan.cli.common import DATABASE_URL_OPTION, fail, open_database, settings
from shoudan.cli.serve import schema_problem
from shoudan.container import Container, build_container
from shoudan.gateway.server import GatewayServer, serve_until_signalled

HOST_OPTION = typer.Option(None, "--host", help="Address to listen on [default: SHOUDAN_ISO_HOST].")
ISO_PORT_OPTION = typer.Option(
    None, "--iso-port", help="ISO 8583 port [default: SHOUDAN_ISO_PORT, 8583]."
)
METRICS_PORT_OPTION = typer.Option(
    None, "--metrics-port", help="Also export Prometheus metrics over HTTP on this port."
)


def build_server(container: Container, host: str, port: int) -> GatewayServer:
    """The gateway's TCP server on ``container``'s services, tuned by its settings."""
    config = container.settings
    return GatewayServer(
        container.gateway.handle, host, port,
        idle_timeout=config.iso_idle_timeout_seconds,
        max_connections=config.iso_max_connections,
        workers=config.iso_workers,
        grace=config.iso_shutdown_grace_seconds,
    )  # fmt: skip


def gateway(
    host: str | None = HOST_OPTION,
    iso_port: int | None = ISO_PORT_OPTION,
    database_url: str | None = DATABASE_URL_OPTION,
    metrics_port: int | None = METRICS_PORT_OPTION,
) -> None:
    """Serve ISO 8583 terminals. The database schema must be current (`shoudan db upgrade`)."""
    config = settings(database_url)
    problem = schema_problem(config.resolved_database_url())
    if problem:
        fail(problem)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    database = open_database(database_url)
    container = build_container(config, database)
    bootstrap(database)  # platform accounts and fee plans the payments need (idempotent)
    listen_host, port = host or config.iso_host, iso_port or config.iso_port
    if metrics_port:
        start_http_server(metrics_port, addr=listen_host)
    typer.echo(f"shoudan ISO 8583 gateway on {listen_host}:{port}")
    try:
        asyncio.run(serve_until_signalled(build_server(container, listen_host, port)))
    finally:
        container.dispose()
