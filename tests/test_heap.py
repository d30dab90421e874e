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


ARENAS = """
import ctypes, ctypes.util, sys, tempfile, threading
from shoudan.core.heap import limit_malloc_arenas
if sys.argv[1] == "limited":
    assert limit_malloc_arenas(2)
started, done = threading.Barrier(13), threading.Event()
def allocate():
    blobs = [bytearray(100_000) for _ in range(8)]  # from the thread's arena (below mmap's size)
    started.wait()
    done.wait()
threads = [threading.Thread(target=allocate) for _ in range(12)]
for thread in threads:
    thread.start()
started.wait()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile(suffix=".xml") as report:
    stream = ctypes.c_void_p(libc.fopen(report.name.encode(), b"w"))
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(open(report.name).read().count("<heap nr="))
done.set()
"""


def _arenas(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", ARENAS, mode], capture_output=True, text=True, check=True,
        timeout=60,
    ).stdout  # fmt: skip
    return int(out.split()[-1])


def test_server_threads_share_two_malloc_arenas() -> None:
    """Twelve threads allocating get arenas of their own (glibc), unless a server limited
    them (``limit_malloc_arenas``, called by ``settle_heap``): memory one thread frees into
    another's arena stays there, and the gateway grew without end."""
    assert _arenas("unlimited") > 4
    assert _arenas("limited") <= 2
