"""The supervisor's hand-over of connections (core/handoff.py), over real sockets: the port
accepts only once every server is ready, every connection goes to the server with the fewest
open ones, a server that has gone gets none and one that falls behind keeps its place, and a
handed connection is a normal TCP connection (TCP_NODELAY on, as asyncio sets it)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from shoudan.core import handoff
from shoudan.core.handoff import CLOSED, READY, STOPPING, CannotListen, Dispatcher, Receiver
from shoudan.core.processes import bound_socket

DEADLINE = 10.0  # seconds for anything that should take milliseconds


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    """A dispatcher on a free port, polled by a thread as the supervisor's loop polls it."""
    handing = Dispatcher(bound_socket("127.0.0.1", 0), expected=2)
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            handing.poll(0.02)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    yield handing
    stop.set()
    thread.join(DEADLINE)
    handing.close()


async def until(condition: object) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.01)  # polling; nothing asserted about time


class Server:
    """One server process's side, on this test's event loop: answers each connection with
    its own number, then holds it until the client leaves."""

    def __init__(self, index: int, end: socket.socket) -> None:
        self.index = index
        self.nodelay: list[int] = []
        self.receiver = Receiver(end.detach(), self.serve)

    async def serve(self, sock: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=sock)
        self.nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.write(bytes([self.index]))
        await reader.read()  # until the client closes
        writer.close()
        self.receiver.closed()


async def connect(port: int, count: int) -> list[tuple[int, asyncio.StreamWriter]]:
    """``count`` clients; each with the number of the server it reached."""
    clients = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        clients.append(((await reader.readexactly(1))[0], writer))
    return clients


def spread(clients: list[tuple[int, asyncio.StreamWriter]]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for server, _ in clients:
        counts[server] = counts.get(server, 0) + 1
    return counts


def test_connections_go_to_the_least_busy_server(dispatcher: Dispatcher) -> None:
    port = dispatcher.listener.getsockname()[1]

    async def scenario() -> None:
        servers = [Server(i, dispatcher.attach(i)) for i in range(2)]
        await until(lambda: dispatcher.listening)  # both said they are ready
        clients = await connect(port, 32)
        assert spread(clients) == {0: 16, 1: 16}  # kept-alive clients, evenly
        assert all(servers[0].nodelay + servers[1].nodelay)  # no 40 ms delayed ACKs

        leaving = [writer for server, writer in clients if server == 0][:10]
        for writer in leaving:
            writer.close()
        await until(lambda: dispatcher.open_connections() == {0: 6, 1: 16})
        more = await connect(port, 10)
        assert spread(more) == {0: 10}  # all to the server that had fewer
        assert dispatcher.open_connections() == {0: 16, 1: 16}

        # server 1 goes away (its process exited): nothing more is handed to it
        channel = servers[1].receiver._channel
        asyncio.get_running_loop().remove_reader(channel.fileno())
        channel.close()
        await until(lambda: 1 not in dispatcher.open_connections())
        assert spread(await connect(port, 4)) == {0: 4}
        for _, writer in clients + more:
            writer.close()

    asyncio.run(scenario())


def test_the_port_accepts_once_every_server_is_ready() -> None:
    """Until then a client is refused (and tries again), as when nothing listens: so "the
    port accepts" means "the servers serve", for whoever waits for it."""
    handing = Dispatcher(bound_socket("127.0.0.1", 0), expected=2)
    port = handing.listener.getsockname()[1]
    ends = [handing.attach(0), handing.attach(1)]
    try:
        ends[0].send(READY)
        handing.poll(0.1)
        assert not handing.listening
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        ends[1].send(READY)
        handing.poll(0.1)
        assert handing.listening
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE):
            handing.poll(0.5)
            assert sum(handing.open_connections().values()) == 1
    finally:
        for end in ends:
            end.close()
        handing.close()


def drain(end: socket.socket) -> int:
    """Take what was handed over ``end`` (the connections closed at once, not reported)."""
    taken = 0
    end.setblocking(False)  # (recv_fds ignores its flags argument before Python 3.12)
    while True:
        try:
            _, fds, _, _ = socket.recv_fds(end, 16, 4)
        except BlockingIOError:
            return taken
        for fd in fds:
            socket.socket(fileno=fd).close()
            taken += 1


def test_a_server_that_falls_behind_is_skipped_not_dropped() -> None:
    """A burst a server has not read yet fills its queue: the next connections go to the
    others, and the server keeps its place once it reads again."""
    handing = Dispatcher(bound_socket("127.0.0.1", 0), expected=2)
    port = handing.listener.getsockname()[1]
    slow, quick = handing.attach(0), handing.attach(1)  # nobody reads slow's end yet
    clients: list[socket.socket] = []
    try:
        for end in (slow, quick):
            end.send(READY)
        handing.poll(0.1)
        while True:  # until the slow server's queue is full
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=DEADLINE))
            handing.poll(0.5)
            drain(quick)
            counts = handing.open_connections()
            if counts[1] > counts[0] + 1:  # the slow one was skipped
                break
            assert len(clients) < 5_000, "the queue never filled"
        assert set(handing.open_connections()) == {0, 1}  # skipped, still attached
        assert drain(slow) == handing.open_connections()[0]  # it reads its backlog
        before = handing.open_connections()[0]
        clients.append(socket.create_connection(("127.0.0.1", port), timeout=DEADLINE))
        handing.poll(0.5)
        assert handing.open_connections()[0] == before + 1  # its turn again (fewer open)
    finally:
        for client in clients:
            client.close()
        slow.close()
        quick.close()
        handing.close()


def ready_dispatcher(count: int = 2) -> tuple[Dispatcher, list[socket.socket]]:
    """A dispatcher whose ``count`` servers (their raw ends, returned) have said READY."""
    handing = Dispatcher(bound_socket("127.0.0.1", 0), expected=count)
    ends = [handing.attach(i) for i in range(count)]
    for end in ends:
        end.send(READY)
    handing.poll(0.1)
    assert handing.listening
    return handing, ends


def test_a_server_gone_while_a_connection_waits_is_skipped_without_a_crash() -> None:
    """The listener's event comes first in the batch, the hand-over to the dead server
    fails and detaches it, then its channel's own event comes: it must be passed over (found
    by review: a KeyError that stopped the supervisor and every server)."""
    handing, ends = ready_dispatcher()
    port = handing.listener.getsockname()[1]
    select = handing._selector.select

    def listener_first(timeout: float | None = None):  # type: ignore[no-untyped-def]
        return sorted(select(timeout), key=lambda event: event[0].data is not None)

    handing._selector.select = listener_first  # type: ignore[method-assign]
    try:
        ends[0].close()  # server 0 exits, and a client comes, before the next look
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as client:
            time.sleep(0.05)
            handing.poll(0.5)
            assert handing.open_connections() == {1: 1}
            client.sendall(b"still served")
    finally:
        ends[1].close()
        handing.close()


def test_a_stopping_server_is_handed_nothing_more() -> None:
    handing, ends = ready_dispatcher()
    port = handing.listener.getsockname()[1]
    clients = []
    try:
        ends[0].send(STOPPING)
        handing.poll(0.1)
        for _ in range(3):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=DEADLINE))
            handing.poll(0.5)
        assert handing.open_connections() == {1: 3}
    finally:
        for client in clients:
            client.close()
        for end in ends:
            end.close()
        handing.close()


def test_close_reports_wait_for_a_busy_supervisor_and_none_is_lost() -> None:
    """The supervisor reads nothing for a while (descheduled, starting a process): the
    server's reports queue up instead of being dropped (found by review: counts drifted
    upwards for good, and the server was starved of connections)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    async def scenario() -> bytes:
        async def never(_sock: socket.socket) -> None:
            return None

        receiver = Receiver(theirs.detach(), never)
        for _ in range(2_000):  # far more than the socket pair's buffer holds
            receiver.closed()
        heard = b""
        ours.setblocking(False)
        deadline = time.monotonic() + DEADLINE
        while heard.count(CLOSED) < 2_000:
            assert time.monotonic() < deadline, f"{heard.count(CLOSED)} reports arrived"
            await asyncio.sleep(0.005)  # the supervisor reads again, slowly
            with contextlib.suppress(BlockingIOError):
                heard += ours.recv(1_000)
        return heard

    heard = asyncio.run(scenario())
    ours.close()
    assert heard == READY + CLOSED * 2_000


def test_the_port_opens_with_the_ready_servers_after_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that never says READY (stuck at start) must not keep the port shut."""
    monkeypatch.setattr(handoff, "READY_TIMEOUT_SECONDS", 0.0)
    handing = Dispatcher(bound_socket("127.0.0.1", 0), expected=2)
    ends = [handing.attach(0), handing.attach(1)]
    try:
        handing.poll(0.05)
        assert not handing.listening  # nobody ready: nothing to listen for
        ends[0].send(READY)
        handing.poll(0.1)
        assert handing.listening
    finally:
        for end in ends:
            end.close()
        handing.close()


def test_a_port_taken_between_bind_and_listen_is_reported() -> None:
    handing = Dispatcher(bound_socket("127.0.0.1", 0), expected=1)
    port = handing.listener.getsockname()[1]
    end = handing.attach(0)
    with socket.socket() as intruder:  # binds the same port (both only bound), listens first
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        intruder.bind(("127.0.0.1", port))
        intruder.listen()
        end.send(READY)
        try:
            with pytest.raises(CannotListen):
                handing.poll(0.1)
        finally:
            end.close()
            handing.close()


SERVER_AT_ITS_LIMIT = """
import asyncio, resource, sys, time
from shoudan.core.handoff import Receiver

fd, limit = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


async def main() -> None:
    held, last = [], [time.monotonic()]

    async def serve(sock):  # holds every connection: the process reaches its limit
        held.append(sock)
        last[0] = time.monotonic()

    receiver = Receiver(fd, serve)
    while time.monotonic() - last[0] < 1.0 or not held:
        await asyncio.sleep(0.05)
    for sock in held:  # then lets them all go, and says so
        sock.close()
        receiver.closed()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


asyncio.run(main())
"""


def test_a_connection_whose_descriptor_cannot_arrive_is_not_counted_open() -> None:
    """A server at its descriptor limit: the kernel drops what it cannot give, and the
    server reports those as closed, so the count comes back to zero (found by review: they
    stayed counted open for ever)."""
    import subprocess
    import sys

    handing = Dispatcher(bound_socket("127.0.0.1", 0), expected=1)
    port = handing.listener.getsockname()[1]
    theirs = handing.attach(0)
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER_AT_ITS_LIMIT, str(theirs.fileno()), "40"],
        pass_fds=[theirs.fileno()], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    theirs.close()
    clients: list[socket.socket] = []
    try:
        deadline = time.monotonic() + DEADLINE
        while not handing.listening:
            assert time.monotonic() < deadline, "the server never said it was ready"
            handing.poll(0.05)
        for _ in range(60):  # more than the server can hold
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=DEADLINE))
            handing.poll(0.01)
        while handing.open_connections() != {0: 0}:
            assert time.monotonic() < deadline, handing.open_connections()
            handing.poll(0.05)
    finally:
        for client in clients:
            client.close()
        assert server.stdin is not None and server.stderr is not None
        server.stdin.close()
        said = server.stderr.read().decode()
        server.wait(DEADLINE)
        handing.close()
    assert "arrived without its descriptor" in said  # the limit was reached: the case at hand
