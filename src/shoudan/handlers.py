"""The outbox handlers the worker runs, wired once from a ``Container``.

Domains expose ``register(registry, container)``-style functions; this module is the one
place that decides which of them the worker runs (as ``container.py`` is for services).
"""

from __future__ import annotations

from shoudan.container import Container
from shoudan.deposits.handlers import register_handlers as register_deposit_handlers
from shoudan.notifications.service import HandlerRegistry, default_registry
from shoudan.refunds.handlers import register_handlers as register_refund_handlers
from shoudan.settlement.handlers import register_handlers as register_settlement_handlers
from shoudan.webhooks.service import register_handlers as register_webhook_handlers


def build_registry(container: Container) -> HandlerRegistry:
    registry = default_registry()
    register_webhook_handlers(
        registry, container.database, container.vault, container.clock, container.settings
    )
    register_refund_handlers(
        registry, container.refunds, container.database, container.vault, container.sms
    )
    register_deposit_handlers(
        registry, container.deposits, container.database, container.vault, container.sms
    )
    register_settlement_handlers(registry, container.database, container.vault, container.sms)
    return registry
