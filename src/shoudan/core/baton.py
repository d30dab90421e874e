"""One request's Python at a time: the baton that a process's request threads pass around.

Why: with SQLite every statement is a few microseconds in C, and ``sqlite3`` lets go of the GIL
around each one. With 32 request threads runnable at once, each statement hands the GIL to
another thread and waits to get it back: a sale's ~30 statements became ~30 GIL hand-offs,
and a sale cost 4.2 ms of CPU on 32 threads against 2.3 ms on one (docs/benchmarks.md, sixth
session). A thread holding the baton is the only request thread that wants the GIL, so its
statements get it straight back.

Whoever would wait puts the baton down first (``released()``): for the network (a channel
call, ``releasing``), for its group's commit (the member committing it sets it aside for the
fsync), for a lock another thread holds. A thread never waits holding
it for something only a baton holder could give, so the baton cannot deadlock. Whenever the
baton is put down, ``on_give`` runs with the number of threads waiting for it: group commit
uses that to commit the transactions it was keeping open for the next request, when there is
none or when the group has waited its window (a steady stream of readers must not hold a
writer's commit back).

An in-process simulator of the network (the sandbox; ``in_process`` set) is called holding
the baton: its own work is tens of microseconds of CPU, and putting the baton down and taking
it back around it cost more than that (docs/benchmarks.md, eleventh session). Its simulated
waits (latency, the no-answer card) call ``sleep``, which puts down the baton the thread
holds; so does a wait for its store (channels/store.py).

After its last write — a new payment's, left for its group (``GroupCommit.leave``) — a request
does not take the baton back (``put_down_for_good``): the rest of it, its answer, runs beside
the holder. The baton only orders who runs; it guards no data (each structure has its own
lock), so a thread without it is merely slower.

Disabled (the default on PostgreSQL, whose connections are truly concurrent), every method
is a no-op.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

log = logging.getLogger(__name__)

_holder = threading.local()  # .baton: the baton this thread holds, for ``sleep``


class Baton:
    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.on_give: Callable[[int], None] | None = None  # called with waiting()
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._waiting = 0
        self._local = threading.local()

    def holding(self) -> bool:
        """Does this thread hold the baton now?"""
        return bool(getattr(self._local, "held", False))

    def pin(self) -> None:
        """Keep the baton until ``unpin``, whatever waits meanwhile: inside a write
        transaction, whose writer lock the next holder would wait for."""
        self._local.pinned = self._pinned() + 1

    def unpin(self) -> None:
        self._local.pinned -= 1

    def _pinned(self) -> int:
        pinned: int = getattr(self._local, "pinned", 0)
        return pinned

    def waiting(self) -> int:
        """Threads waiting to take the baton."""
        return self._waiting

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the baton for the block (a request); re-entrant."""
        if not self.enabled or self.holding():
            yield
            return
        self._take()
        try:
            yield
        finally:
            if self.holding():
                self._give()

    @contextmanager
    def released(self) -> Iterator[None]:
        """Put the baton down for a block that waits, and take it again after it."""
        if not self.enabled or not self.holding() or self._pinned():
            yield
            return
        self._give()
        try:
            yield
        finally:
            self._take()

    @contextmanager
    def set_aside(self) -> Iterator[None]:
        """Put the baton down even inside a pinned block, for a wait that no thread of this
        process can shorten (another process's turn to write), and take it back after. The
        caller keeps what the pin protected (the writer lock) and still holds it then."""
        if not self.enabled or not self.holding():
            yield
            return
        pinned, self._local.pinned = self._pinned(), 0
        self._give()
        try:
            yield
        finally:
            self._take()
            self._local.pinned = pinned

    def put_down_for_good(self) -> None:
        """Put the baton down for the rest of the ``held`` block, which then ends without
        giving it again (unless pinned: then it stays). For a request whose group has
        committed: what is left of it is its answer, tens of microseconds of Python, and
        waiting to take the baton back for that cost more than running beside the next
        holder (docs/benchmarks.md, thirteenth session)."""
        if self.enabled and self.holding() and not self._pinned():
            self._give()

    def acquire(self, lock: threading.Lock | threading.RLock) -> None:
        """Acquire ``lock``; if another thread holds it, wait with the baton down."""
        if lock.acquire(blocking=False):
            return
        got = False
        try:
            with self.released():
                got = lock.acquire()
        except BaseException:
            if got:  # the baton could not be taken back: leave nothing locked
                lock.release()
            raise

    def _take(self) -> None:
        if not self._lock.acquire(blocking=False):
            with self._count_lock:
                self._waiting += 1
            try:
                self._lock.acquire()
            finally:
                with self._count_lock:
                    self._waiting -= 1
        self._local.held = True
        _holder.baton = self

    def _give(self) -> None:
        self._local.held = False
        _holder.baton = None
        self._lock.release()
        if self.on_give is not None:
            try:
                self.on_give(self._waiting)
            except Exception:  # the hook's own failure (its waiters get the error)
                log.exception("baton: on_give failed")


@contextmanager
def put_down() -> Iterator[None]:
    """The baton this thread holds, if any, put down for the block (unless pinned, as for
    ``Baton.released``): for a wait in code that runs holding the baton without being handed
    it, such as the sandbox network's."""
    baton: Baton | None = getattr(_holder, "baton", None)
    if baton is None:
        yield
        return
    with baton.released():
        yield


def sleep(seconds: float) -> None:
    """``time.sleep`` with the baton down (``put_down``): a simulated wait."""
    with put_down():
        time.sleep(seconds)


T = TypeVar("T")


class _Releasing:
    def __init__(self, inner: object, baton: Baton) -> None:
        self._inner = inner
        self._baton = baton

    def __repr__(self) -> str:
        return repr(self._inner)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if not callable(value) or name.startswith("_"):
            return value

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            with self._baton.released():
                return value(*args, **kwargs)

        return call


def releasing(inner: T, baton: Baton) -> T:
    """``inner`` with every public method called with the baton down: for a client of
    something remote (the card network), whose calls wait on the network. An in-process
    simulator (``in_process`` true, waits through ``sleep``) is returned as it is."""
    if not baton.enabled or getattr(inner, "in_process", False):
        return inner
    return cast(T, _Releasing(inner, baton))
