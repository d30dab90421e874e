"""Loopback ports for the servers the tests start.

A port picked by binding to port 0 comes from the kernel's ephemeral range, the same
range every outgoing connection on the machine draws its local port from. Between the
pick and the server's own bind, a client in another test worker can take it, and the
server fails with "address already in use" (it happened in CI). So the tests draw their
ports from below the ephemeral range, a separate block for each pytest-xdist worker, and
hand out each port once per process, skipping any that something else holds.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
from pathlib import Path

_LOWEST = 10_000
_BLOCK = 1_500
_DEFAULT_EPHEMERAL_LOW = 32_768  # Linux's default when /proc cannot be read


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return _DEFAULT_EPHEMERAL_LOW


def _worker_index() -> int:
    """0 for ``gw0`` (or no xdist at all), 1 for ``gw1``, …"""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0


def _block() -> range:
    blocks = max(1, (_ephemeral_low() - _LOWEST) // _BLOCK)
    start = _LOWEST + (_worker_index() % blocks) * _BLOCK
    return range(start, start + _BLOCK)


_lock = threading.Lock()
_next = itertools.count()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive loopback ports that no other test worker is
    handed and nothing holds now (a server and its neighbour's metrics, for one)."""
    block = _block()
    with _lock:
        for _ in range(len(block)):
            first = block[next(_next) % len(block)]
            ports = range(first, first + count)
            if ports[-1] in block and all(_bindable(port) for port in ports):
                for _ in range(count - 1):  # not handed out again
                    next(_next)
                return first
    raise RuntimeError(f"no {count} free loopback ports in a row in {block}")


def free_port() -> int:
    """A loopback port no other test worker is handed and nothing holds now."""
    return free_ports(1)
