"""settle_heap (core/heap.py): what a server loaded leaves the garbage collector's sight."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import gc, json
import shoudan.api.app  # everything an HTTP server loads
import shoudan.gateway.service
from shoudan.core.heap import settle_heap
before = len(gc.get_objects(generation=2))
frozen = settle_heap()
print(json.dumps({"before": before, "frozen": frozen, "after": len(gc.get_objects(generation=2))}))
"""


def test_settle_heap_freezes_what_the_server_loaded() -> None:
    # a process of its own: frozen objects are never collected, and this one is the suite's
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    counts = json.loads(out.splitlines()[-1])
    assert counts["before"] > 50_000  # the modules, the app's schemas: a full collection's walk
    assert counts["frozen"] >= counts["before"]
    assert counts["after"] < 1_000  # what the oldest generation still holds for it to walk
