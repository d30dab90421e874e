"""What keeps a test's app alive after the test, and letting go of it.

FastAPI remembers, per endpoint and dependency callable, whether it is a coroutine or a
generator, in module-level ``lru_cache``s of 4,096 entries (``fastapi.dependencies.models``).
A callable that closes over its app (the offline docs page's handler does) keeps that app,
its routes, schemas and ``Database`` alive for as long as it is in the cache. A server builds
one app, so this costs it nothing; a test worker builds one per test, and without letting go
each worker held every app it had built: 4.6 million objects and 1.1 GB at the end of a run,
a full garbage collection of ≈ 3 s, and pytest's two collections at shutdown then outlasted
the 5 s that xdist gives a worker to finish before interrupting it.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType


def _caches(module: ModuleType) -> list[Callable[[], None]]:
    return [
        value.cache_clear
        for value in vars(module).values()
        if callable(getattr(value, "cache_clear", None))
    ]


def forget_endpoints() -> int:
    """Empty FastAPI's callable caches; return how many caches were emptied (a test checks
    that it is not zero, so a FastAPI that moves them shows up as a failure, not a leak)."""
    from fastapi.dependencies import models

    caches = _caches(models)
    for clear in caches:
        clear()
    return len(caches)
