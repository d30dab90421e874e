"""``shoudan serve`` and ``shoudan demo``: run the HTTP API with uvicorn.

``serve`` never migrates: changing the schema of a production database is an operator's
decision (``shoudan db upgrade``), so it refuses to start on a schema that is not current.
``demo`` is for a first look on a laptop: it migrates, seeds demo data and serves.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from typing import Annotated

import typer
import uvicorn

from shoudan.api.app import create_app
from shoudan.cli.common import (
    DATABASE_URL_OPTION,
    become_supervisor,
    fail,
    open_database,
    schema_problem,
    settings,
)
from shoudan.container import Container
from shoudan.core.config import Settings
from shoudan.core.db import Database
from shoudan.core.handoff import HANDOFF_FD_FLAG, Receiver
from shoudan.core.heap import settle_heap

HOST_OPTION = typer.Option(None, "--host", help="Address to listen on [default: SHOUDAN_HOST].")
PORT_OPTION = typer.Option(None, "--port", help="Port to listen on [default: SHOUDAN_PORT].")
# Annotated, so that Python callers (``shoudan demo``) get a plain None by default
IsoPortOption = Annotated[
    int | None,
    typer.Option("--iso-port", help="Also run the ISO 8583 gateway on this port, in this process."),
]


def _run(
    config: Settings,
    database: Database,
    host: str,
    port: int,
    iso_port: int | None = None,
    *,
    handoff_fd: int | None = None,
) -> None:
    base = f"http://{host}:{port}"
    typer.echo(f"shoudan on {base}  (health: {base}/healthz, API docs: {base}/docs)")
    app = create_app(config, database=database)
    settle_heap()  # the app is built: out of the garbage collector's sight from now on
    try:
        if handoff_fd is not None:  # one of --workers N: the supervisor hands connections
            uvicorn_config = uvicorn.Config(
                # no WebSockets: an upgrade swaps the protocol whose close HandedServer reports
                app, log_level="info", access_log=config.access_log, ws="none",
            )  # fmt: skip
            asyncio.run(HandedServer(uvicorn_config, handoff_fd).serve())
        elif iso_port is None:
            uvicorn.run(
                app, host=host, port=port, log_level="info", access_log=config.access_log
            )
        else:
            typer.echo(f"ISO 8583 gateway on {config.iso_host}:{iso_port}")
            # uvicorn configures only its own loggers: the gateway's lines go to the root's
            logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
            server = uvicorn.Server(uvicorn.Config(
                app, host=host, port=port, log_level="info", access_log=config.access_log
            ))  # fmt: skip
            asyncio.run(_serve_with_gateway(server, app.state.container, config.iso_host, iso_port))
    finally:
        database.dispose()


class HandedServer(uvicorn.Server):
    """uvicorn serving the connections its supervisor hands over (core/handoff.py) instead
    of listening itself: each is given uvicorn's own HTTP protocol, as an accepted one would
    be, and reported to the supervisor when it closes. Shutdown is uvicorn's: no new
    connections, in-flight requests answered."""

    def __init__(self, config: uvicorn.Config, handoff_fd: int) -> None:
        super().__init__(config)
        self.handoff_fd = handoff_fd
        self._receiver: Receiver | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # no listener of its own
        if self.should_exit or not self.started:
            return
        loop = asyncio.get_running_loop()
        config = self.config

        def protocol() -> asyncio.Protocol:
            made: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )
            lost = made.connection_lost

            def connection_lost(error: Exception | None) -> None:
                try:
                    lost(error)
                finally:
                    assert self._receiver is not None
                    self._receiver.closed()

            made.connection_lost = connection_lost  # type: ignore[method-assign, assignment]
            return made

        async def serve(sock: socket.socket) -> None:
            try:
                await loop.connect_accepted_socket(protocol, sock)
            except OSError:  # the client left before we could begin
                sock.close()
                assert self._receiver is not None
                self._receiver.closed()

        self._receiver = Receiver(self.handoff_fd, serve)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._receiver is not None:
            self._receiver.stop()
            # connections taken just now are in uvicorn's books before it shuts them down
            await self._receiver.started()
        await super().shutdown(sockets)


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
        help="HTTP processes behind the port (the supervisor hands them the connections), "
        "about one per core.",
    ),
]  # fmt: skip
# one of --workers N's processes: the supervisor bootstrapped, listens, and hands the
# connections over the --handoff-fd descriptor (core/handoff.py)
SupervisedOption = Annotated[bool, typer.Option("--supervised", hidden=True)]
HandoffOption = Annotated[int | None, typer.Option(HANDOFF_FD_FLAG, hidden=True)]


def serve(
    host: str | None = HOST_OPTION,
    port: int | None = PORT_OPTION,
    database_url: str | None = DATABASE_URL_OPTION,
    iso_port: IsoPortOption = None,
    workers: WorkersOption = 1,
    supervised: SupervisedOption = False,
    handoff_fd: HandoffOption = None,
) -> None:
    """Serve the HTTP API (and, with --iso-port, the ISO 8583 gateway). The database schema
    must be current (see `shoudan db upgrade`)."""
    config = settings(database_url)
    problem = schema_problem(config.resolved_database_url())
    if problem:
        fail(problem)
    listen_host, listen_port = host or config.host, port or config.port
    if workers > 1 and not supervised:
        if iso_port is not None:
            fail(
                "--iso-port runs the gateway inside one HTTP process: with --workers, run "
                "`shoudan gateway --processes N` beside it"
            )
        typer.echo(f"shoudan on http://{listen_host}:{listen_port}, {workers} processes")
        one = [
            sys.executable, "-P", "-m", "shoudan.cli.serve", "--host", listen_host,
            "--port", str(listen_port), "--supervised",
        ]  # fmt: skip
        become_supervisor(database_url, workers, one, (listen_host, listen_port))
    database = open_database(database_url)
    _run(config, database, listen_host, listen_port, iso_port, handoff_fd=handoff_fd)


if __name__ == "__main__":  # one of ``--workers N``'s processes
    typer.run(serve)
