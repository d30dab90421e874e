"""Several gateway processes on one port: ``shoudan gateway --processes N``.

One Python process runs one request's Python at a time (the GIL), so one gateway uses one
core. With ``--processes N`` the command bootstraps the database once and then becomes the
supervisor in this module (``python -m shoudan.gateway.processes``: nothing but the standard
library, so it costs little memory). The supervisor starts N gateways
(``python -m shoudan.cli.gateway --supervised``) that each listen on the same address with
``SO_REUSEPORT`` (the kernel spreads new connections over them), forwards SIGINT/SIGTERM to
them (each stops gracefully: in-flight requests are answered), and waits for them. A gateway
that dies is started again after a second; one that exits with an error within
``EARLY_EXIT_SECONDS`` of its start (the port taken, the schema behind) stops the whole command
with its exit code, instead of restarting forever.

They share everything else through the database: a terminal signed on through one process is
served by any other (its session keys are in the database), and on SQLite the processes take
turns to write through the lock file beside the database (core/filelock.py).
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

log = logging.getLogger("shoudan.gateway.processes")  # also when run as __main__

EARLY_EXIT_SECONDS = 5.0
RESTART_DELAY_SECONDS = 1.0
POLL_SECONDS = 0.2
STOP_TIMEOUT_SECONDS = 60.0


@dataclass
class _Child:
    index: int
    process: subprocess.Popen[bytes]
    started: float


class Supervisor:
    """``command(i)`` is the argument list of gateway ``i`` (0 … count-1)."""

    def __init__(self, command: Callable[[int], list[str]], count: int) -> None:
        self.command = command
        self.count = count
        self._stopping = False
        self._children: dict[int, _Child] = {}

    def run(self) -> int:
        """Start the gateways and wait for them; returns the command's exit code."""
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            for index in range(self.count):
                self._start(index)
            return self._watch()
        finally:
            self._stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def pids(self) -> list[int]:
        return [child.process.pid for child in self._children.values()]

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self._stopping = True

    def _start(self, index: int) -> None:
        process = subprocess.Popen(self.command(index))  # noqa: S603 - our own interpreter and CLI
        self._children[index] = _Child(index, process, time.monotonic())
        log.info("gateway process %d started (pid %d)", index, process.pid)

    def _watch(self) -> int:
        while not self._stopping:
            time.sleep(POLL_SECONDS)
            for index, child in list(self._children.items()):
                code = child.process.poll()
                if code is None or self._stopping:
                    continue
                # it gave up by itself right away (the port taken, the schema behind): starting
                # it again would fail the same way; killed by a signal, it is started again
                failed_at_start = code > 0 and time.monotonic() - child.started < EARLY_EXIT_SECONDS
                if failed_at_start:
                    log.error("gateway process %d exited with %d at start: stopping", index, code)
                    return code or 1
                log.error("gateway process %d exited with %d: starting it again", index, code)
                time.sleep(RESTART_DELAY_SECONDS)
                self._start(index)
        return 0

    def _stop_all(self) -> None:
        """SIGTERM to every gateway (a graceful stop each), then wait for them."""
        for child in self._children.values():
            if child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for child in self._children.values():
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("gateway process %d did not stop in time: killed", child.index)
                child.process.kill()
                child.process.wait()


def main(argv: list[str] | None = None) -> int:
    """``python -m shoudan.gateway.processes --count N [--metrics-port P] -- GATEWAY...``:
    N copies of the gateway command, the i-th with ``--metrics-port P+i`` when P is given."""
    parser = argparse.ArgumentParser(prog="shoudan.gateway.processes")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    arguments = parser.parse_args(argv)
    command: list[str] = arguments.command
    if command[:1] == ["--"]:
        command = command[1:]
    if arguments.count < 1 or not command:
        parser.error("a --count of at least 1 and a gateway command after --")

    def gateway(index: int) -> list[str]:
        if arguments.metrics_port is None:
            return command
        return [*command, "--metrics-port", str(arguments.metrics_port + index)]

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return Supervisor(gateway, arguments.count).run()


if __name__ == "__main__":
    raise SystemExit(main())
