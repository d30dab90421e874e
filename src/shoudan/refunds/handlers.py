"""The refunds' outbox handlers, run by ``shoudan worker``: execute a refund (first attempt and
every scheduled retry), and text the consumer about a step of their refund."""

from __future__ import annotations

import logging
from typing import Protocol

from shoudan.core.crypto import Vault
from shoudan.core.db import Database
from shoudan.notifications.service import DeliveredEvent, HandlerRegistry
from shoudan.refunds.domain import consumer_message
from shoudan.refunds.models import Refund
from shoudan.refunds.service import EXECUTE_TOPIC, NOTIFY_TOPIC, PHONE_CONTEXT, RefundService

log = logging.getLogger(__name__)


class TextSender(Protocol):
    def send(
        self, phone: str, text: str, purpose: str, dedupe_key: str | None = None
    ) -> str: ...


def register_handlers(
    registry: HandlerRegistry,
    refunds: RefundService,
    database: Database,
    vault: Vault,
    sms: TextSender,
) -> None:
    def execute(event: DeliveredEvent) -> None:
        refunds.execute(str(event.payload["refund_id"]))

    def notify_consumer(event: DeliveredEvent) -> None:
        with database.read() as session:
            refund = session.get(Refund, str(event.payload["refund_id"]))
        if refund is None or refund.consumer_phone_enc is None:
            return
        text = consumer_message(
            str(event.payload["event"]), refund.amount, refund.expected_latest, refund.id
        )
        if text is None:
            return
        phone = vault.decrypt(refund.consumer_phone_enc, PHONE_CONTEXT)
        sms.send(phone, text, purpose="refund", dedupe_key=event.dedupe_key)

    registry.register(EXECUTE_TOPIC, execute)
    registry.register(NOTIFY_TOPIC, notify_consumer)
