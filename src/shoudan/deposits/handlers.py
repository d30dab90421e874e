"""The deposits' outbox handlers, run by ``shoudan worker``: the terminal lifecycle's events
(activation charges, a return or termination closes), captured card payments (the activation
target), and the merchant's SMS about its deposit.

The outbox keeps no order per device: a return or termination handled before its activation
raises ``ActivationPending``, and the relay retries the event with backoff."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Protocol

from shoudan.core.crypto import Vault
from shoudan.core.db import Database
from shoudan.deposits.domain import merchant_message
from shoudan.deposits.models import Deposit
from shoudan.deposits.service import NOTIFY_TOPIC, DepositService
from shoudan.merchants.service import contact_phone
from shoudan.notifications.service import DeliveredEvent, HandlerRegistry

log = logging.getLogger(__name__)


class TextSender(Protocol):
    def send(
        self, phone: str, text: str, purpose: str, dedupe_key: str | None = None
    ) -> str: ...


def _moment(value: Any) -> datetime | None:
    return datetime.fromisoformat(str(value)) if value else None


def _text(value: Any) -> str | None:
    return str(value) if value else None


def _required_moment(payload: dict[str, Any], key: str) -> datetime:
    moment = _moment(payload.get(key))
    if moment is None:
        raise ValueError(f"event without {key}")
    return moment


def register_handlers(
    registry: HandlerRegistry,
    deposits: DepositService,
    database: Database,
    vault: Vault,
    sms: TextSender,
) -> None:
    def activated(event: DeliveredEvent) -> None:
        data = event.payload
        if not data.get("contract_id"):
            log.info("terminal %s: activated without a contract, no deposit", data["terminal_id"])
            return
        deposits.activated_under_contract(
            merchant_id=str(data["merchant_id"]), serial_number=str(data["serial_number"]),
            terminal_id=str(data["terminal_id"]), contract_id=str(data["contract_id"]),
            activated_at=_required_moment(data, "activated_at"),
        )  # fmt: skip

    def returned(event: DeliveredEvent) -> None:
        data = event.payload
        if data.get("contract_id"):
            deposits.returned(
                serial_number=str(data["serial_number"]), contract_id=str(data["contract_id"]),
                condition=str(data["condition"]), delivered_at=_moment(data.get("delivered_at")),
                returned_at=_required_moment(data, "returned_at"),
                merchant_id=_text(data.get("merchant_id")),
                activated_at=_moment(data.get("activated_at")),
            )  # fmt: skip

    def terminated(event: DeliveredEvent) -> None:
        data = event.payload
        if data.get("contract_id"):
            deposits.terminated(
                serial_number=str(data["serial_number"]), contract_id=str(data["contract_id"]),
                terminated_at=_required_moment(data, "terminated_at"),
                merchant_id=_text(data.get("merchant_id")),
                activated_at=_moment(data.get("activated_at")),
            )  # fmt: skip

    def payment_captured(event: DeliveredEvent) -> None:
        data = event.payload
        if data.get("method") == "card" and data.get("terminal_id"):
            deposits.payment_captured(str(data["terminal_id"]))

    def notify_merchant(event: DeliveredEvent) -> None:
        with database.read() as session:
            deposit = session.get(Deposit, str(event.payload["deposit_id"]))
            if deposit is None:
                return
            text = merchant_message(
                str(event.payload["event"]), deposit.serial_number, deposit.amount,
                deposit.refund_amount,
            )  # fmt: skip
            phone = contact_phone(session, vault, deposit.merchant_id) if text else None
        if text is not None and phone is not None:
            sms.send(phone, text, purpose="deposit", dedupe_key=event.dedupe_key)

    registry.register("terminal.activated", activated)
    registry.register("terminal.returned", returned)
    registry.register("terminal.terminated", terminated)
    registry.register("payment.captured", payment_captured)
    registry.register(NOTIFY_TOPIC, notify_merchant)
