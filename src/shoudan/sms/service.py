"""Sending text messages: the ``SmsProvider`` interface and the development inbox.

``DevInboxProvider`` is the **development** provider (and, for now, the only one): it sends
nothing. Each message is written to the ``sms_messages`` table instead — the phone number
encrypted with the vault, a keyed hash to find a number's messages, a masked copy to show —
and ``shoudan sms inbox`` prints them, so a developer or a demo can read the texts a consumer
would have received. A real gateway (Aliyun, Tencent Cloud…) is another class with the same
``send``, chosen by ``settings.sms_provider``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from shoudan.core.clock import SHANGHAI, Clock
from shoudan.core.config import Settings
from shoudan.core.crypto import Vault, mask_phone
from shoudan.core.db import Database, DriverSQL
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.ids import new_id
from shoudan.sms.domain import (
    check_address_budget,
    validate_mobile,
    validate_purpose,
    validate_text,
)
from shoudan.sms.models import SmsMessage

log = logging.getLogger(__name__)

PHONE_CONTEXT = "sms:phone"
ADDRESS_CONTEXT = "sms:address"
DEV_INBOX = "dev_inbox"
MAX_INBOX_LIMIT = 1000


def charge_address(session: Session, vault: Vault, address: str, now: datetime) -> None:
    """Count one verification code asked for from ``address`` (a client IP) today, in the
    caller's transaction; ``rate_limited`` past the day's budget — the caller's transaction
    then rolls back, so a refused request counts nothing. One atomic upsert: concurrent
    requests from one address cannot both take the last code."""
    day = now.astimezone(SHANGHAI).date().isoformat()
    [(codes,)] = DriverSQL(session).execute(
        "INSERT INTO sms_address_budgets (address_hash, day, codes) VALUES (?, ?, 1)"
        " ON CONFLICT (address_hash, day) DO UPDATE SET codes = sms_address_budgets.codes + 1"
        " RETURNING codes", (vault.lookup_hash(address, ADDRESS_CONTEXT), day),
    )  # fmt: skip
    check_address_budget(int(codes))


class SmsProvider(Protocol):
    def send(
        self, phone: str, text: str, purpose: str, dedupe_key: str | None = None
    ) -> str:
        """Send ``text`` to a mainland mobile ``phone``; returns the provider's message id.
        ``purpose`` (``refund.succeeded``, ``otp``…) is kept for the record. A ``dedupe_key``
        already sent is not sent again (the outbox delivers at least once): the first
        message's id is returned."""
        ...


@dataclass(frozen=True, slots=True)
class InboxMessage:
    id: str
    phone_masked: str
    text: str
    purpose: str
    created_at: datetime


class DevInboxProvider:
    """Development provider: stores each message in ``sms_messages`` instead of sending it."""

    def __init__(self, database: Database, vault: Vault, clock: Clock) -> None:
        self.database = database
        self.vault = vault
        self.clock = clock

    def send(
        self, phone: str, text: str, purpose: str, dedupe_key: str | None = None
    ) -> str:
        phone = validate_mobile(phone)
        message = SmsMessage(
            id=new_id("sms_"),
            phone_enc=self.vault.encrypt(phone, PHONE_CONTEXT),
            phone_hash=self.vault.lookup_hash(phone, PHONE_CONTEXT),
            phone_masked=mask_phone(phone),
            text=validate_text(text),
            purpose=validate_purpose(purpose),
            dedupe_key=dedupe_key,
            created_at=self.clock.now(),
        )
        with self.database.transaction() as session:
            if dedupe_key is not None:
                sent = session.scalar(
                    select(SmsMessage.id).where(SmsMessage.dedupe_key == dedupe_key)
                )
                if sent is not None:
                    return sent
            session.add(message)
        log.info(
            "sms %s (%s) to %s kept in the dev inbox", message.id, purpose, message.phone_masked
        )
        return message.id

    def list_inbox(self, phone: str | None = None, limit: int = 20) -> list[InboxMessage]:
        """Newest first; only the messages to ``phone`` when given."""
        if not 1 <= limit <= MAX_INBOX_LIMIT:
            raise DomainError(ErrorCode.INVALID_INPUT, f"limit must be 1-{MAX_INBOX_LIMIT}")
        query = select(SmsMessage)
        if phone is not None:
            wanted = self.vault.lookup_hash(validate_mobile(phone), PHONE_CONTEXT)
            query = query.where(SmsMessage.phone_hash == wanted)
        query = query.order_by(SmsMessage.created_at.desc(), SmsMessage.id.desc()).limit(limit)
        with self.database.read() as session:
            return [
                InboxMessage(row.id, row.phone_masked, row.text, row.purpose, row.created_at)
                for row in session.scalars(query)
            ]


def build_provider(
    settings: Settings, database: Database, vault: Vault, clock: Clock
) -> SmsProvider:
    """The provider ``settings.sms_provider`` names (only ``dev_inbox`` exists for now)."""
    if settings.sms_provider == DEV_INBOX:
        return DevInboxProvider(database, vault, clock)
    raise DomainError(
        ErrorCode.CONFIGURATION_ERROR, f"unknown SMS provider {settings.sms_provider!r}"
    )
