"""The gateway server's worker threads (``_Workers``): each request's outcome reaches the
connection that awaits it, a handler's error reaches its caller, and no more threads run
than the server was given."""

from __future__ import annotations

import asyncio
import threading

import pytest

from shoudan.gateway.server import _Workers
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
