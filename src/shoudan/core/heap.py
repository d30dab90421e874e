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

import gc


def settle_heap() -> int:
    """Collect once, then freeze every object that survives: call it in a server process
    when everything it serves with is loaded, before the first request. Returns how many
    objects were frozen.

    Only for server processes: frozen objects are never collected, so a process that builds
    and drops apps (a test session) must not call it."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
