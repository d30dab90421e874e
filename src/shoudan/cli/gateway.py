"""``shoudan gateway``: the ISO 8583 terminal gateway on its own (``shoudan serve --iso-port``
runs it beside the HTTP API, in one process). SIGINT/SIGTERM stop it gracefully: no new
connections, in-flight requests finish and are answered, then it exits."""

from __future__ import annotations

import asyncio
import logging
import sys

import typer
from prometheus_client import start_http_server

from shoudan.bootstrap import bootstrap
from shoudan.cli.common import (
    DATABASE_URL_OPTION,
    become_supervisor,
    fail,
    open_database,
    schema_problem,
    settings,
)
from shoudan.container import Container, build_container
from shoudan.core.handoff import HANDOFF_FD_FLAG
from shoudan.core.heap import settle_heap
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
    help="Gateway processes behind the port, about one per core [default: "
    "SHOUDAN_ISO_PROCESSES, 1].",
)
REUSE_PORT_OPTION = typer.Option(
    False, "--reuse-port", help="Share the port with other gateways (SO_REUSEPORT)."
)
# one of --processes N's gateways: the supervisor bootstrapped and listens (core/handoff.py)
SUPERVISED_OPTION = typer.Option(False, "--supervised", hidden=True)
# one of --processes N's gateways: its end of the supervisor's hand-over (core/handoff.py)
HANDOFF_FD_OPTION = typer.Option(None, HANDOFF_FD_FLAG, hidden=True)


def build_server(
    container: Container,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    handoff_fd: int | None = None,
) -> GatewayServer:
    """The gateway's TCP server on ``container``'s services, tuned by its settings."""
    config = container.settings
    return GatewayServer(
        container.gateway.handle, host, port,
        idle_timeout=config.iso_idle_timeout_seconds,
        max_connections=config.iso_max_connections,
        workers=config.iso_workers,
        grace=config.iso_shutdown_grace_seconds,
        reuse_port=reuse_port, handoff_fd=handoff_fd,
    )  # fmt: skip


def gateway(
    host: str | None = HOST_OPTION,
    iso_port: int | None = ISO_PORT_OPTION,
    database_url: str | None = DATABASE_URL_OPTION,
    metrics_port: int | None = METRICS_PORT_OPTION,
    processes: int | None = PROCESSES_OPTION,
    reuse_port: bool = REUSE_PORT_OPTION,
    supervised: bool = SUPERVISED_OPTION,
    handoff_fd: int | None = HANDOFF_FD_OPTION,
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
        typer.echo(f"shoudan ISO 8583 gateway on {listen_host}:{port}, {count} processes")
        one = [
            sys.executable, "-P", "-m", "shoudan.cli.gateway", "--host", listen_host,
            "--iso-port", str(port), "--supervised",
        ]  # fmt: skip
        become_supervisor(database_url, count, one, (listen_host, port), metrics_port)
    database = open_database(database_url)
    container = build_container(config, database)
    if not supervised:  # the supervisor did it once, before its processes could race to
        bootstrap(database)  # platform accounts and fee plans the payments need (idempotent)
    if metrics_port:
        start_http_server(metrics_port, addr=listen_host)
    typer.echo(f"shoudan ISO 8583 gateway on {listen_host}:{port}")
    try:
        server = build_server(
            container, listen_host, port, reuse_port=reuse_port, handoff_fd=handoff_fd
        )
        settle_heap()  # everything is loaded: out of the garbage collector's sight from now on
        asyncio.run(serve_until_signalled(server))
    finally:
        container.dispose()


if __name__ == "__main__":  # a supervised gateway process: only the modules it needs
    typer.run(gateway)
