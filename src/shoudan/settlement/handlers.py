"""The settlement's outbox handler, run by ``shoudan worker``: text the merchant when the bank
returned one of its payouts (the webhook ``payout.rejected`` is published by the import)."""

from __future__ import annotations

from typing import Protocol

from shoudan.core.crypto import Vault
from shoudan.core.db import Database
from shoudan.merchants.service import contact_phone
from shoudan.notifications.service import DeliveredEvent, HandlerRegistry
from shoudan.settlement.domain import rejected_payout_message
from shoudan.settlement.models import Payout
from shoudan.settlement.payouts import NOTIFY_TOPIC


class TextSender(Protocol):
    def send(
        self, phone: str, text: str, purpose: str, dedupe_key: str | None = None
    ) -> str: ...


def register_handlers(
    registry: HandlerRegistry, database: Database, vault: Vault, sms: TextSender
) -> None:
    def notify_merchant(event: DeliveredEvent) -> None:
        with database.read() as session:
            payout = session.get(Payout, str(event.payload["payout_id"]))
            if payout is None:
                return
            phone = contact_phone(session, vault, payout.merchant_id)
            text = rejected_payout_message(payout.amount, payout.account_masked, payout.bank_reason)
        sms.send(phone, text, purpose="payout.rejected", dedupe_key=event.dedupe_key)

    registry.register(NOTIFY_TOPIC, notify_merchant)
