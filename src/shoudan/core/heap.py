"""The garbage collector of a long-running server.

CPython's cycle collector stops every thread while it runs. Its oldest generation holds
everything a server loaded at start (modules, the app, its schemas: over 200,000 objects
here), and a full collection walks all of it: 90–130 ms on this project's machine, several
times a minute under load, each one added to every request in flight. Freezing the objects
that exist once the server is built moves them out of the collector's sight for good, so a
full collection walks only what was made since (a few milliseconds).

See docs/benchmarks.md, "Pauses of the garbage collector".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Final

# glibc's mallopt parameter (malloc.h) and the arenas a server's threads share
M_ARENA_MAX: Final = -8
SERVER_MALLOC_ARENAS: Final = 2


def settle_heap() -> int:
    """Collect once, then freeze every object that survives: call it in a server process
    when everything it serves with is loaded, before the first request (and before its
    request threads start: see ``limit_malloc_arenas``). Returns how many objects were
    frozen.

    Only for server processes: frozen objects are never collected, so a process that builds
    and drops apps (a test session) must not call it."""
    limit_malloc_arenas()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def limit_malloc_arenas(count: int = SERVER_MALLOC_ARENAS) -> bool:
    """Let the threads started from now on share ``count`` malloc arenas (glibc; elsewhere
    a no-op returning False).

    Why: glibc gives each new thread an arena of its own, up to eight per core. SQLite's page
    caches and statement buffers are allocated by one request thread and freed by another
    (connections move between threads through the pool, a group's writes run in whichever
    thread commits it), and memory freed into an arena its thread no longer uses is not
    given back: the gateway's resident size grew by 70 MB in 20 s of sales and kept growing.
    With two arenas it levels off, and throughput is the same (docs/benchmarks.md)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, count))
