"""The outbox handlers the worker runs, wired once from a ``Container``.

Domains expose ``register(registry, container)``-style functions; this module is the one
place that decides which of them the worker runs (as ``container.py`` is for services).
"""

from __future__ import annotations

from shoudan.container import Container
from shoudan.notifications.service import HandlerRegistry, default_registry


def build_registry(container: Container) -> HandlerRegistry:
    registry = default_registry()
    return registry
