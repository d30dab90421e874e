"""The gateway server's worker threads (``_Workers``): each request's outcome reaches the
connection that awaits it, a handler's error reaches its caller, and no more threads run
than the server was given; and its idle timer (``_watch``) at the edge of a frame."""

from __future__ import annotations

import asyncio
import threading

import pytest

from shoudan.gateway.framing import pack
from shoudan.gateway.server import GatewayServer, _Connection, _Workers
from shoudan.gateway.service import Outcome


def test_every_outcome_reaches_its_own_caller_on_no_more_threads_than_allowed() -> None:
    seen: set[str] = set()
    gate = threading.Barrier(4)  # the first four requests run at once, on four threads

    def handler(payload: bytes) -> Outcome:
        seen.add(threading.current_thread().name)
        if int(payload) < 4:
            gate.wait(timeout=10)
        return Outcome(payload * 2, code=payload.decode())

    async def main() -> list[Outcome]:
        workers = _Workers(handler, size=4)
        try:
            return await asyncio.gather(*(workers.run(str(n).encode()) for n in range(200)))
        finally:
            await asyncio.get_running_loop().run_in_executor(None, workers.stop)

    outcomes = asyncio.run(main())
    assert [o.code for o in outcomes] == [str(n) for n in range(200)]
    assert all(o.reply == str(n).encode() * 2 for n, o in enumerate(outcomes))
    assert len(seen) == 4


def test_a_handler_that_raises_fails_its_own_request_only() -> None:
    def handler(payload: bytes) -> Outcome:
        if payload == b"bad":
            raise RuntimeError("handler broke")
        return Outcome(payload)

    async def main() -> tuple[Outcome, Outcome]:
        workers = _Workers(handler, size=2)
        try:
            with pytest.raises(RuntimeError, match="handler broke"):
                await workers.run(b"bad")
            return await workers.run(b"one"), await workers.run(b"two")
        finally:
            await asyncio.get_running_loop().run_in_executor(None, workers.stop)

    one, two = asyncio.run(main())
    assert (one.reply, two.reply) == (b"one", b"two")


class _Transport:
    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.aborted = False

    def abort(self) -> None:  # as a socket transport's abort: the reader sees the end
        self.aborted = True
        asyncio.get_running_loop().call_soon(self.reader.feed_eof)


class _Writer:
    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.transport = _Transport(reader)
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    async def drain(self) -> None:
        return None


def test_a_frame_completed_as_the_idle_timer_closes_the_connection_is_not_handled() -> None:
    """The frame's last bytes and the idle timer in one turn of the loop, the timer first:
    the connection is closed for idling, and the frame — which nobody would get an answer
    to — is not handled (a sale would be charged, its answer thrown away)."""
    handled: list[bytes] = []

    def handler(payload: bytes) -> Outcome:
        handled.append(payload)
        return Outcome(b"answer")

    async def main() -> tuple[str, _Writer]:
        loop = asyncio.get_running_loop()
        server = GatewayServer(handler, idle_timeout=5, workers=1)
        reader = asyncio.StreamReader()
        writer = _Writer(reader)
        connection = _Connection()
        exchange = asyncio.create_task(server._exchange(reader, writer, connection))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)  # waiting for a frame
        connection.waiting_since = loop.time() - 5  # ... for the whole idle timeout
        reader.feed_data(pack(b"0200 sale"))  # the read resumes at the next turn
        server._watch(connection, writer)  # type: ignore[arg-type]
        try:
            return await exchange, writer
        finally:
            await loop.run_in_executor(None, server._workers.stop)

    reason, writer = asyncio.run(main())
    assert reason == "idle" and writer.transport.aborted
    assert handled == [] and writer.written == []
