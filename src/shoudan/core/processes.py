"""Several processes of one server on one port: ``shoudan gateway --processes N`` and
``shoudan serve --workers N``.

One Python process runs one request's Python at a time (the GIL), so one server process uses
one core. With N > 1 the command does what must happen once (bootstrapping the database) and
then becomes the supervisor in this module (``python -m shoudan.core.processes``: nothing but
the standard library, so it costs little memory). The supervisor listens on the port itself
and starts N copies of the server (each told ``--supervised``); it hands each connection it
accepts to the server with the fewest open connections (core/handoff.py: the kernel's
``SO_REUSEPORT`` hash split kept-alive clients unevenly, and one shared listening socket, as
uvicorn's own ``--workers`` has, may hand every connection of a burst to one process). It
forwards SIGINT/SIGTERM to them (each stops gracefully: in-flight requests are answered),
and waits for them. A process that dies is started again after a second (doubled
for each quick failure in a row, up to 30 s). One of the first N that exits with an error
within ``EARLY_EXIT_SECONDS`` (its metrics port taken, say) stops the whole command with
its exit code instead: starting it again would fail the same way. The kernel stops the
servers if the supervisor itself dies (``PR_SET_PDEATHSIG``), so none is left on the port.

The processes share everything else through the database; on SQLite they take turns to write
through the lock file beside it (core/filelock.py).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from shoudan.core.handoff import HANDOFF_FD_FLAG, CannotListen, Dispatcher

log = logging.getLogger("shoudan.core.processes")  # also when run as __main__

EARLY_EXIT_SECONDS = 5.0
RESTART_DELAY_SECONDS = 1.0  # doubled for each quick failure in a row, up to the maximum
MAX_RESTART_DELAY_SECONDS = 30.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_SECONDS = 0.2
STOP_TIMEOUT_SECONDS = 60.0


@dataclass
class _Child:
    index: int
    process: subprocess.Popen[bytes]
    started: float
    restarts: int = 0  # in a row, each soon after the one before (for the back-off)


def _die_with_supervisor(supervisor: int) -> Callable[[], None]:
    """Run in each child before it starts: the kernel sends it SIGTERM (a graceful stop) when
    the supervisor dies, even by SIGKILL, so that no server is left on the port behind a
    supervisor started again (Linux ``PR_SET_PDEATHSIG``)."""

    def arrange() -> None:
        if sys.platform != "linux":
            return
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != supervisor:  # it died before the line above
            os.kill(os.getpid(), signal.SIGTERM)

    return arrange


def bound_socket(host: str, port: int) -> socket.socket:
    """The command's port, bound by the supervisor (it listens once its servers are ready)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP said outright: a socket made with protocol 0 reports 0, and asyncio then
    # leaves TCP_NODELAY off the connections (a response's head and body wait on delayed
    # ACKs, 40 ms); set on the listener too, which accepted sockets inherit
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class Supervisor:
    """``command(i)`` is the argument list of process ``i`` (0 … count-1). With a
    ``listener`` (bound), the supervisor listens once the processes are ready, accepts, and
    hands the connections out (each process is told its end with ``--handoff-fd``)."""

    def __init__(
        self,
        command: Callable[[int], list[str]],
        count: int,
        listener: socket.socket | None = None,
    ) -> None:
        self.command = command
        self.count = count
        self.dispatcher = Dispatcher(listener, count) if listener is not None else None
        self._stopping = False
        self._children: dict[int, _Child] = {}
        self._restart_at: dict[int, tuple[float, int]] = {}  # index → (when, restarts)
        self._began = float("inf")  # when the first processes had all been started

    def run(self) -> int:
        """Start the processes and wait for them; returns the command's exit code."""
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            for index in range(self.count):
                self._start(index)
            self._began = time.monotonic()
            return self._watch()
        finally:
            self._stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self._stopping = True
        if self.dispatcher is not None:
            self.dispatcher.paused = True  # a flag only: safe in a signal handler

    def _start(self, index: int, restarts: int = 0) -> None:
        command, inherited = list(self.command(index)), []  # a copy: extended below
        theirs = self.dispatcher.attach(index) if self.dispatcher is not None else None
        if theirs is not None:  # its end of the hand-over, by descriptor number
            command += [HANDOFF_FD_FLAG, str(theirs.fileno())]
            inherited.append(theirs.fileno())
        try:
            # preexec_fn is safe here: the supervisor runs no threads
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and CLI
                command,
                pass_fds=inherited,
                preexec_fn=_die_with_supervisor(os.getpid()),  # noqa: PLW1509
            )
        finally:
            if theirs is not None:
                theirs.close()  # the process has its copy
        self._children[index] = _Child(index, process, time.monotonic(), restarts)
        log.info("process %d started (pid %d)", index, process.pid)

    def _watch(self) -> int:
        while not self._stopping:
            if self.dispatcher is not None:
                try:
                    self.dispatcher.poll(POLL_SECONDS)  # connections handed out meanwhile
                except CannotListen as error:
                    log.error("cannot listen on the port: %s", error)
                    return 1
            else:
                time.sleep(POLL_SECONDS)
            now = time.monotonic()
            for index, (when, restarts) in list(self._restart_at.items()):
                if now >= when and not self._stopping:
                    del self._restart_at[index]
                    self._start(index, restarts)
            for index, child in list(self._children.items()):
                code = child.process.poll()
                if code is None or self._stopping or index in self._restart_at:
                    continue
                if self.dispatcher is not None:
                    self.dispatcher.detach(index)
                soon = now - child.started < EARLY_EXIT_SECONDS
                if code > 0 and soon and child.started <= self._began:
                    # the first start failed by itself (its metrics port taken, say):
                    # starting it again would fail the same way
                    log.error("process %d exited with %d at start: stopping", index, code)
                    return code
                restarts = child.restarts + 1 if soon else 0
                delay = min(RESTART_DELAY_SECONDS * 2**restarts, MAX_RESTART_DELAY_SECONDS)
                log.error("process %d exited with %d: starting it again in %.0f s",
                          index, code, delay)  # fmt: skip
                self._restart_at[index] = (now + delay, restarts)
        return 0

    def _stop_all(self) -> None:
        """Stop accepting, SIGTERM to every process (a graceful stop each), then wait
        for them."""
        if self.dispatcher is not None:
            self.dispatcher.close()
            self.dispatcher = None
        for child in self._children.values():
            if child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for child in self._children.values():
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("process %d did not stop in time: killed", child.index)
                child.process.kill()
                child.process.wait()


def main(argv: list[str] | None = None) -> int:
    """``python -m shoudan.core.processes --count N [--metrics-port P] [--host H --port Q]
    -- COMMAND...``: N copies of the server command, the i-th with ``--metrics-port P+i``
    when P is given; with ``--port`` the supervisor listens on H:Q and hands the
    connections out."""
    parser = argparse.ArgumentParser(prog="shoudan.core.processes")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    arguments = parser.parse_args(argv)
    command: list[str] = arguments.command
    if command[:1] == ["--"]:
        command = command[1:]
    if arguments.count < 1 or not command:
        parser.error("a --count of at least 1 and a command after --")

    def copy(index: int) -> list[str]:
        if arguments.metrics_port is None:
            return command
        return [*command, "--metrics-port", str(arguments.metrics_port + index)]

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    listener = None
    if arguments.port is not None:
        try:
            listener = bound_socket(arguments.host, arguments.port)
        except OSError as error:
            log.error("cannot listen on %s:%d: %s", arguments.host, arguments.port, error)
            return 1
    return Supervisor(copy, arguments.count, listener).run()


if __name__ == "__main__":
    raise SystemExit(main())
