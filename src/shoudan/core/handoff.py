"""Connections handed by the supervisor to the least busy of its servers.

Why: with ``SO_REUSEPORT`` each server listened on the port itself and the kernel chose the
server of each new connection by a hash of its addresses. Clients that keep their connections
(an integrator's HTTP pool, terminals that stay connected) were split unevenly: 9 and 23 of 32
benchmark connections in one run, so one process had two and a half times the other's work
and its answers took 87 ms where the other's took 36 (docs/benchmarks.md, eighth session).
Node's cluster module hands connections out from its primary process for the same reason.

How: the supervisor (core/processes.py) binds the port, and listens once every server it
started has said it is ready (so "the port accepts" still means "the servers serve"). Each
server has one end of a Unix socket pair; the supervisor accepts, and sends each connection's
descriptor (``SCM_RIGHTS``) to the ready server with the fewest open connections, taking
turns among equals. A server says when a connection it was handed has closed. A connection
no server can take at once (a burst they have not read yet) waits in the supervisor, and
while too many wait the supervisor leaves new ones in the kernel's queue. Only the accept goes
through the supervisor: a connection's bytes go straight between the client and its server.

Nothing here but the standard library: the supervisor imports no more than it needs.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("shoudan.core.handoff")

HANDED = b"c"  # supervisor → server: a connection (its descriptor rides along)
READY = b"r"  # server → supervisor: serving
STOPPING = b"s"  # server → supervisor: shutting down, hand it nothing more
CLOSED = b"x"  # server → supervisor: one of the connections it was handed has closed
HANDOFF_FD_FLAG = "--handoff-fd"  # how a server is told which descriptor is its end
BACKLOG = 2048  # the kernel's queue of connections not accepted yet
MAX_WAITING = 1024  # accepted connections held for a server, at most
READY_TIMEOUT_SECONDS = 60.0  # then the port opens with the servers that are ready
RETRY_SECONDS = 0.005  # how soon to offer waiting connections again
# a server that cannot take a descriptor now: its queue is full, or too many are in flight
BUSY = frozenset({errno.EAGAIN, errno.ETOOMANYREFS, errno.ENOBUFS})
Serving = Coroutine[Any, Any, None]  # what serves one handed connection, on the server's loop


@dataclass
class _Server:
    channel: socket.socket  # the supervisor's end of the pair
    ready: bool = False
    open: int = 0  # connections handed and not yet reported closed


class CannotListen(OSError):
    """The bound port could not be listened on (another socket took it meanwhile)."""


class Dispatcher:
    """The supervisor's side: accepts on ``listener`` (bound, not yet listening) once
    ``expected`` servers are ready, and hands each connection out. Runs on the supervisor's
    one thread, from ``poll``."""

    def __init__(self, listener: socket.socket, expected: int) -> None:
        listener.setblocking(False)
        self.listener = listener
        self.expected = expected
        self.listening = False
        self.paused = False  # set from a signal handler: accept nothing more
        self._accepting = False  # the listener is in the selector
        self._since = time.monotonic()  # waiting for the servers to be ready
        self._servers: dict[int, _Server] = {}
        self._waiting: deque[socket.socket] = deque()  # accepted, not yet taken
        self._last = -1  # the server handed the last connection (turns among equals)
        self._selector = selectors.DefaultSelector()

    def attach(self, index: int) -> socket.socket:
        """A channel for server ``index`` (started or started again): returns the server's
        end, to pass to its process and then close here."""
        self.detach(index)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        self._servers[index] = _Server(ours)
        self._selector.register(ours, selectors.EVENT_READ, index)
        return theirs

    def detach(self, index: int) -> None:
        """Server ``index`` has gone: hand it nothing more."""
        server = self._servers.pop(index, None)
        if server is not None:
            self._selector.unregister(server.channel)
            server.channel.close()

    def open_connections(self) -> dict[int, int]:
        """Connections each ready server was handed and has not closed yet."""
        return {index: server.open for index, server in self._servers.items() if server.ready}

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for connections and servers' news, and act on them."""
        if self._waiting:
            timeout = min(timeout, RETRY_SECONDS)
        for key, _events in self._selector.select(timeout):
            if key.data is None:
                self._accept_waiting()
                continue
            server = self._servers.get(key.data)
            # detached by an earlier event of this batch (a failed hand-over to it)
            if server is not None and server.channel is key.fileobj:
                self._hear(key.data)
        self._hand_waiting()
        self._pace()

    def close(self) -> None:
        """Stop accepting (the servers keep the connections they have)."""
        while self._waiting:
            self._waiting.popleft().close()
        if self._accepting:
            self._selector.unregister(self.listener)
        self.listener.close()
        for index in list(self._servers):
            self.detach(index)
        self._selector.close()

    def _accept_waiting(self) -> None:
        while len(self._waiting) < MAX_WAITING and not self.paused:
            try:
                connection, _address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # out of descriptors, say: the client will try again
                log.error("accept failed: %s", error)
                return
            self._waiting.append(connection)
            self._hand_waiting()

    def _hand_waiting(self) -> None:
        while self._waiting and self._hand(self._waiting[0]):
            self._waiting.popleft().close()  # the server has its own copy now

    def _hand(self, connection: socket.socket) -> bool:
        """Send ``connection`` to the least busy ready server that can take it now."""
        skipped: set[int] = set()
        while True:
            index = self._least_busy(skipped)
            if index is None:
                return False
            server = self._servers[index]
            try:
                socket.send_fds(server.channel, [HANDED], [connection.fileno()])
            except OSError as error:
                if error.errno in BUSY:  # a burst it has not read yet
                    skipped.add(index)
                else:  # its end is closed: it has exited
                    self.detach(index)
                continue
            server.open += 1
            self._last = index
            return True

    def _least_busy(self, skipped: set[int]) -> int | None:
        order = sorted(i for i, s in self._servers.items() if s.ready and i not in skipped)
        after = [i for i in order if i > self._last] + [i for i in order if i <= self._last]
        if not after:
            return None
        return min(after, key=lambda i: self._servers[i].open)  # first of the least busy

    def _pace(self) -> None:
        """Listen once every server expected is ready (or, after a while, those that are);
        leave new connections in the kernel's queue while too many wait here."""
        if not self.listening:
            ready = sum(server.ready for server in self._servers.values())
            late = time.monotonic() - self._since > READY_TIMEOUT_SECONDS
            if ready < self.expected and not (late and ready):
                return
            if ready < self.expected:
                log.error("%d of %d servers ready: listening with those", ready, self.expected)
            try:
                self.listener.listen(BACKLOG)
            except OSError as error:
                raise CannotListen(error.errno, error.strerror) from error
            self.listening = True
        wanted = len(self._waiting) < MAX_WAITING and not self.paused
        if wanted and not self._accepting:
            self._selector.register(self.listener, selectors.EVENT_READ, None)
        elif self._accepting and not wanted:
            self._selector.unregister(self.listener)
        self._accepting = wanted

    def _hear(self, index: int) -> None:
        server = self._servers[index]
        while True:
            try:
                news = server.channel.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                news = b""
            if not news:  # the server's end closed: it exited
                self.detach(index)
                return
            server.ready = (server.ready or READY in news) and STOPPING not in news
            server.open = max(0, server.open - news.count(CLOSED))


class Receiver:
    """A server's side, on its event loop: says the server is ready; each connection the
    supervisor hands over (a connected socket) is then served by a task running
    ``serve(sock)``; ``closed()`` reports one of them closed. After ``stop()`` a connection
    still arriving is closed at once (and reported)."""

    def __init__(self, fd: int, serve: Callable[[socket.socket], Serving]) -> None:
        self._channel = socket.socket(fileno=fd)
        self._channel.setblocking(False)
        self._channel.set_inheritable(False)
        self._serve = serve
        self._tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._channel.fileno(), self._take)
        self._serving = True
        self._unsent = b""  # news the supervisor has not read yet (its buffer was full)
        self._say(READY)

    def closed(self) -> None:
        self._say(CLOSED)

    def stop(self) -> None:
        """Take no more connections (on shutdown): the supervisor is told, and whatever it
        sent meanwhile is closed and reported; ``closed()`` still reports."""
        if self._serving:
            self._serving = False
            self._say(STOPPING)

    async def started(self) -> None:
        """Wait until every connection taken so far has started being served."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    def _say(self, news: bytes) -> None:
        """Send ``news``, after any not sent yet; what the supervisor's buffer cannot take
        now is sent when it can (a close report lost would count a connection open for
        ever)."""
        first = not self._unsent
        self._unsent += news
        if first:
            self._flush()

    def _flush(self) -> None:
        try:
            sent = self._channel.send(self._unsent)
        except BlockingIOError:
            sent = 0
        except OSError:  # the supervisor is gone (and this server is stopping with it)
            self._unsent = b""
            return
        self._unsent = self._unsent[sent:]
        if self._unsent:
            self._loop.call_later(0.01, self._flush)

    def _take(self) -> None:
        while True:
            try:
                message, fds, _flags, _address = socket.recv_fds(self._channel, 64, 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                message, fds = b"", []
            if not message:  # the supervisor has gone: nothing more will come
                self._loop.remove_reader(self._channel.fileno())
                return
            # a descriptor the kernel could not give us (this process at its limit): the
            # client's connection is gone with it; reported, so that it is not counted open
            for _missing in range(message.count(HANDED) - len(fds)):
                log.error("a handed connection arrived without its descriptor: dropped")
                self.closed()
            for fd in fds:
                sock = socket.socket(fileno=fd)
                sock.set_inheritable(False)
                if not self._serving:
                    sock.close()
                    self.closed()
                    continue
                task = self._loop.create_task(self._serve(sock))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
