"""``shoudan gateway``: the ISO 8583 terminal gateway on its own (``shoudan serve --iso-port``
runs it beside the HTTP API, in one process). SIGINT/SIGTERM stop it gracefully: no new
connections, in-flight requests finish and are answered, then it exits."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import NoReturn

import typer
from prometheus_client import start_http_server

from shoudan.bootstrap import bootstrap
from shoudan.cli.common import (
    DATABASE_URL_OPTION,
    fail,
    open_database,
    schema_problem,
    settings,
)
from shoudan.container import Container, build_container
from shoudan.gateway.server import GatewayServer, serve_until_signalled

HOST_OPTION = typer.Option(None, "--host", help="Address to listen on [default: SHOUDAN_ISO_HOST].")
ISO_PORT_OPTION = typer.Option(
    None, "--iso-port", help="ISO 8583 port [default: SHOUDAN_ISO_PORT, 8583]."
)
METRICS_PORT_OPTION = typer.Option(
    None,
    "--metrics-port",
    help="Also export Prometheus metrics over HTTP on this port (with --processes N: this "
    "port and the next N-1, one per process).",
)
PROCESSES_OPTION = typer.Option(
    None,
    "--processes",
    min=1,
    max=64,
    help="Gateway processes sharing the port, about one per core [default: "
    "SHOUDAN_ISO_PROCESSES, 1].",
)
REUSE_PORT_OPTION = typer.Option(
    False, "--reuse-port", help="Share the port with other gateways (SO_REUSEPORT)."
)
# one of --processes N's gateways: shares the port, leaves bootstrapping to the supervisor
SUPERVISED_OPTION = typer.Option(False, "--supervised", hidden=True)


def build_server(
    container: Container, host: str, port: int, *, reuse_port: bool = False
) -> GatewayServer:
    """The gateway's TCP server on ``container``'s services, tuned by its settings."""
    config = container.settings
    return GatewayServer(
        container.gateway.handle, host, port,
        idle_timeout=config.iso_idle_timeout_seconds,
        max_connections=config.iso_max_connections,
        workers=config.iso_workers,
        grace=config.iso_shutdown_grace_seconds,
        reuse_port=reuse_port,
    )  # fmt: skip


def gateway(
    host: str | None = HOST_OPTION,
    iso_port: int | None = ISO_PORT_OPTION,
    database_url: str | None = DATABASE_URL_OPTION,
    metrics_port: int | None = METRICS_PORT_OPTION,
    processes: int | None = PROCESSES_OPTION,
    reuse_port: bool = REUSE_PORT_OPTION,
    supervised: bool = SUPERVISED_OPTION,
) -> None:
    """Serve ISO 8583 terminals. The database schema must be current (`shoudan db upgrade`)."""
    config = settings(database_url)
    problem = schema_problem(config.resolved_database_url())
    if problem:
        fail(problem)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    listen_host, port = host or config.iso_host, iso_port or config.iso_port
    count = 1 if supervised else processes or config.iso_processes
    if count > 1:
        _become_supervisor(database_url, listen_host, port, metrics_port, count)
    database = open_database(database_url)
    container = build_container(config, database)
    if not supervised:  # the supervisor did it once, before its processes could race to
        bootstrap(database)  # platform accounts and fee plans the payments need (idempotent)
    if metrics_port:
        start_http_server(metrics_port, addr=listen_host)
    typer.echo(f"shoudan ISO 8583 gateway on {listen_host}:{port}")
    try:
        server = build_server(container, listen_host, port, reuse_port=reuse_port or supervised)
        asyncio.run(serve_until_signalled(server))
    finally:
        container.dispose()


def _become_supervisor(
    database_url: str | None, host: str, port: int, metrics_port: int | None, count: int
) -> NoReturn:
    """Bootstrap once, then replace this process by the supervisor of ``count`` gateways
    (gateway/processes.py): it needs none of the modules the ``shoudan`` command loaded, and
    each gateway loads only its own (``python -m shoudan.cli.gateway``)."""
    database = open_database(database_url)
    try:
        bootstrap(database)
    finally:
        database.dispose()
    if database_url:  # by environment: a password on a command line is on show in ps
        os.environ["SHOUDAN_DATABASE_URL"] = database_url
    gateway_command = [
        sys.executable, "-m", "shoudan.cli.gateway", "--host", host, "--iso-port", str(port),
        "--supervised",
    ]  # fmt: skip
    supervisor = [sys.executable, "-m", "shoudan.gateway.processes", "--count", str(count)]
    if metrics_port:
        supervisor += ["--metrics-port", str(metrics_port)]
    typer.echo(f"shoudan ISO 8583 gateway on {host}:{port}, {count} processes")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [*supervisor, "--", *gateway_command])  # noqa: S606 - our own


if __name__ == "__main__":  # a supervised gateway process: only the modules it needs
    typer.run(gateway)
