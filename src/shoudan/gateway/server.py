"""The gateway's TCP server (asyncio): frames in, ``GatewayService.handle`` on a worker thread,
frames out.

- many connections, many request/response pairs per connection, in order;
- a connection idle for ``idle_timeout`` seconds (no complete frame) is closed; so is one
  beyond ``max_connections`` (closed on arrival) and one whose frame cannot be read at all;
- the service calls block (SQLAlchemy, the network), so they run on worker threads
  (``_Workers``) and one slow request never stalls the event loop or other connections;
- ``stop()`` is graceful: stop accepting, close idle connections, let in-flight requests finish
  and their answers go out (up to ``grace`` seconds), then exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from shoudan.core.handoff import Receiver
from shoudan.gateway import metrics
from shoudan.gateway.framing import LENGTH_BYTES, pack, payload_length
from shoudan.gateway.service import Outcome

log = logging.getLogger(__name__)

Handler = Callable[[bytes], Outcome]


@dataclass(slots=True)
class _Connection:
    busy: bool = False  # a request is being handled: let it finish on shutdown
    waiting_since: float = 0.0  # loop time: since when it has been waiting for a whole frame
    idled: bool = False  # closed by ``_watch`` for idling
    watch: asyncio.TimerHandle | None = None


class _Workers:
    """Threads that run the handler for the event loop: ``run(payload)`` is awaited on the
    loop, the handler runs on a worker, and the loop is woken once for every answer ready.

    Not ``loop.run_in_executor``: its two futures chained across threads, and one wake-up of
    the loop for each answer, were a tenth of a gateway process's Python under load; a group
    commit makes a score of answers ready at once, and they cost the loop one wake-up here
    (docs/benchmarks.md). Threads are started as requests need them, up to ``size``.
    """

    def __init__(self, handler: Handler, size: int) -> None:
        self._handler = handler
        self._size = size
        self._jobs: queue.SimpleQueue[tuple[bytes, asyncio.Future[Outcome]] | None] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []
        self._idle = 0  # workers waiting for a job
        self._lock = threading.Lock()
        self._ready: list[tuple[asyncio.Future[Outcome], Outcome | BaseException]] = []
        self._wake_pending = False  # the loop was asked to hand out ``_ready``
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, payload: bytes) -> asyncio.Future[Outcome]:
        """The handler's outcome for ``payload``, from a worker (call on the event loop)."""
        loop = self._loop = asyncio.get_running_loop()
        answer: asyncio.Future[Outcome] = loop.create_future()
        with self._lock:
            start = self._idle <= 0 and len(self._threads) < self._size
            if not start:
                self._idle -= 1  # taken by this job (or queued behind busy workers)
        if start:
            thread = threading.Thread(target=self._work, name=f"iso8583_{len(self._threads)}",
                                      daemon=True)  # fmt: skip
            thread.start()
            self._threads.append(thread)  # once it runs (a thread that failed to start is none)
        self._jobs.put((payload, answer))
        return answer

    def stop(self) -> None:
        """Let queued jobs finish, then end every worker (blocks: run it off the loop)."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            payload, answer = job
            try:
                result: Outcome | BaseException = self._handler(payload)
            except BaseException as error:  # the handler never raises; if it did, say so
                result = error
            with self._lock:
                self._idle += 1
                self._ready.append((answer, result))
                wake, self._wake_pending = not self._wake_pending, True
            if wake:
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._hand_out)

    def _hand_out(self) -> None:
        """On the loop: every answer ready so far, to whoever awaits it."""
        with self._lock:
            ready, self._ready = self._ready, []
            self._wake_pending = False
        for answer, result in ready:
            if answer.done():  # its connection was cancelled meanwhile
                continue
            if isinstance(result, BaseException):
                try:
                    answer.set_exception(result)
                except TypeError:  # StopIteration cannot be set: its neighbours still get theirs
                    answer.set_exception(RuntimeError(f"handler raised {result!r}"))
            else:
                answer.set_result(result)


class GatewayServer:
    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 8583,
        *,
        idle_timeout: float = 60.0,
        max_connections: int = 1000,
        workers: int = 32,
        grace: float = 10.0,
        reuse_port: bool = False,
        handoff_fd: int | None = None,
    ) -> None:
        self.handler = handler
        self.host = host
        self.requested_port = port
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.grace = grace
        self.reuse_port = reuse_port  # share the port with other processes (SO_REUSEPORT)
        # one of a supervisor's servers: it listens, and hands connections over this
        # descriptor (core/handoff.py) instead of this server listening itself
        self.handoff_fd = handoff_fd
        self._receiver: Receiver | None = None
        self._workers = _Workers(handler, workers)
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], _Connection] = {}
        self._stopping = False

    @property
    def port(self) -> int:
        """The port listened on (the real one when started on port 0)."""
        if self.handoff_fd is not None:  # the supervisor's
            return self.requested_port
        assert self._server is not None and self._server.sockets
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        if self.handoff_fd is not None:
            self._receiver = Receiver(self.handoff_fd, self._handed)
            log.info("iso8583 gateway serving %s:%s (connections from the supervisor)",
                     self.host, self.port)  # fmt: skip
            return
        self._server = await asyncio.start_server(
            self._serve_connection, self.host, self.requested_port, reuse_address=True,
            reuse_port=self.reuse_port or None,
        )  # fmt: skip
        log.info("iso8583 gateway listening on %s:%s", self.host, self.port)

    async def stop(self) -> None:
        """Stop accepting, close idle connections, let in-flight requests finish."""
        if self._stopping:
            return
        self._stopping = True
        if self._server is not None:
            self._server.close()
        if self._receiver is not None:
            self._receiver.stop()
        for task, connection in list(self._connections.items()):
            if not connection.busy:
                task.cancel()
        pending = set(self._connections)
        if pending:
            _done, late = await asyncio.wait(pending, timeout=self.grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.get_running_loop().run_in_executor(None, self._workers.stop)
        log.info("iso8583 gateway stopped")

    async def _handed(self, sock: socket.socket) -> None:
        """A connection the supervisor accepted: served as one accepted here, and reported
        closed after (the supervisor counts each server's open connections)."""
        assert self._receiver is not None
        try:
            reader, writer = await asyncio.open_connection(sock=sock)
        except OSError:
            sock.close()
            self._receiver.closed()
            return
        try:
            await self._serve_connection(reader, writer)
        finally:
            self._receiver.closed()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._stopping or len(self._connections) >= self.max_connections:
            metrics.CLOSED.labels("max_connections" if not self._stopping else "stopping").inc()
            writer.close()
            return
        connection = self._connections[task] = _Connection()
        metrics.CONNECTIONS.inc()
        reason = "peer"
        try:
            reason = await self._exchange(reader, writer, connection)
        except asyncio.CancelledError:
            reason = "shutdown"
        except Exception:  # never let one connection take the server down
            log.exception("iso8583 connection error")
            reason = "error"
        finally:
            self._connections.pop(task, None)
            metrics.CONNECTIONS.dec()
            metrics.CLOSED.labels(reason).inc()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: _Connection,
    ) -> str:
        """Request/response pairs until the peer leaves, idles, or sends what cannot be read.
        Returns why the connection ends."""
        loop = asyncio.get_running_loop()
        connection.waiting_since = loop.time()
        connection.watch = loop.call_at(
            connection.waiting_since + self.idle_timeout, self._watch, connection, writer
        )
        try:
            while not self._stopping:
                try:
                    prefix = await reader.readexactly(LENGTH_BYTES)
                    length = payload_length(prefix)
                    payload = await reader.readexactly(length) if length else b""
                except (asyncio.IncompleteReadError, ConnectionError):
                    return "idle" if connection.idled else "peer"
                if connection.idled:  # its last bytes came as the timer closed it: unanswered
                    return "idle"
                if not payload:
                    return "unreadable"
                connection.busy = True
                started = time.perf_counter()
                outcome = await self._workers.run(payload)
                if outcome.reply is None:
                    metrics.observe(outcome, time.perf_counter() - started)
                    return "unreadable"
                writer.write(pack(outcome.reply))
                try:
                    await writer.drain()
                except ConnectionError:
                    return "peer"
                finally:
                    metrics.observe(outcome, time.perf_counter() - started)
                    connection.busy = False
                    connection.waiting_since = loop.time()
            return "shutdown"
        finally:
            connection.watch.cancel()

    def _watch(self, connection: _Connection, writer: asyncio.StreamWriter) -> None:
        """On the loop, when the connection may have waited ``idle_timeout`` for a whole
        frame: close it if it has, else look again when it might have. One timer per
        connection, moved on only when it fires: a timeout around every read (``asyncio.timeout``)
        cost a timer and its cancellation per frame, 3 % of the process (docs/benchmarks.md)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = connection.waiting_since + self.idle_timeout
        if connection.busy or now < due:  # a request in hand is never idling
            connection.watch = loop.call_at(
                now + self.idle_timeout if connection.busy else due, self._watch, connection, writer
            )
            return
        connection.idled = True
        # abort, not close: a close waits for unsent answers to drain, and a peer that stopped
        # reading would keep the read pending and the connection counted
        writer.transport.abort()  # the pending read ends (IncompleteReadError)


async def serve_until_signalled(server: GatewayServer) -> None:
    """Run until SIGINT or SIGTERM, then stop gracefully (``shoudan gateway``)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()


class BackgroundGateway:
    """A ``GatewayServer`` on its own event loop in a daemon thread: for tests and for
    embedding next to code that is not asyncio."""

    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> int:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result()
        return self.server.port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
