"""The gateway's queries: terminal sessions, the request journal, batch totals, cases.

Batch totals join the journal with ``payments`` and ``refunds`` (read only): payments and
refunds know nothing of batches and STANs, the journal knows which payment each terminal
request made or touched, and a terminal's refund carries the advice's identity as its
out_refund_no.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shoudan.core.db import DriverSQL
from shoudan.core.ids import new_id
from shoudan.gateway.codec import BatchTotals
from shoudan.gateway.domain import REVERSAL_MTI, SALE_KINDS, Identity, Kind
from shoudan.gateway.models import GatewayCase, GatewayRequest, TerminalSession
from shoudan.gateway.response_codes import APPROVED
from shoudan.payments.domain import PaymentStatus
from shoudan.payments.models import Payment
from shoudan.refunds.domain import LIVE
from shoudan.refunds.models import Refund

LIVE_REFUNDS = tuple(status.value for status in LIVE)


def load_session(
    session: Session, terminal_id: str, *, for_update: bool = False
) -> TerminalSession | None:
    query = select(TerminalSession).where(TerminalSession.terminal_id == terminal_id)
    if for_update:
        query = query.with_for_update().execution_options(populate_existing=True)
    return session.scalars(query).one_or_none()


def find_request(session: Session, identity: Identity) -> GatewayRequest | None:
    return session.scalars(
        select(GatewayRequest).where(
            GatewayRequest.terminal_id == identity.terminal_id,
            GatewayRequest.merchant_id == identity.merchant_id,
            GatewayRequest.batch == identity.batch,
            GatewayRequest.stan == identity.stan,
            GatewayRequest.mti == identity.mti,
        )
    ).one_or_none()


def find_with_reversal(
    driver: DriverSQL, identity: Identity
) -> tuple[GatewayRequest | None, GatewayRequest | None]:
    """The journal rows of this identity and of its reversal (same terminal, merchant, batch
    and STAN, MTI 0400), in one driver statement: every request asks, and almost every time
    the answer is "none" (the ORM's per-query cost was a tenth of a sale, docs/benchmarks.md).
    The rows come back as detached objects, read only."""
    rows = driver.load(
        GatewayRequest,
        "terminal_id = ? AND merchant_id = ? AND batch = ? AND stan = ? AND mti IN (?, ?)",
        (identity.terminal_id, identity.merchant_id, identity.batch, identity.stan,
         identity.mti, REVERSAL_MTI),
    )  # fmt: skip
    by_mti = {row.mti: row for row in rows}
    reversal = by_mti.get(REVERSAL_MTI) if identity.mti != REVERSAL_MTI else None
    return by_mti.get(identity.mti), reversal


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """A signed-on terminal's working keys (encrypted) and open batch."""

    terminal_id: str
    pik_enc: bytes
    mak_enc: bytes
    batch: str


def load_keys(driver: DriverSQL, terminal_id: str) -> SessionKeys | None:
    """The terminal's session as every request after sign-on needs it, in one driver
    statement; None before its first sign-on."""
    rows = driver.execute(
        "SELECT pik_enc, mak_enc, batch FROM terminal_sessions WHERE terminal_id = ?",
        (terminal_id,),
    )
    if not rows:
        return None
    pik, mak, batch = rows[0]
    return SessionKeys(terminal_id, bytes(pik), bytes(mak), batch)


def find_payment(session: Session, merchant_id: str, idempotency_key: str) -> Payment | None:
    """The payment a terminal request made, by the Idempotency-Key it carries."""
    return session.scalars(
        select(Payment).where(
            Payment.merchant_id == merchant_id, Payment.idempotency_key == idempotency_key
        )
    ).one_or_none()


def batch_totals(session: Session, terminal_id: str, batch: str) -> BatchTotals:
    """The host's totals of a terminal's batch: sales and completions approved in it and still
    captured (voided and reversed ones excluded); refund advices approved in it whose refund
    is still live (a refund rejected, canceled or failed since is excluded)."""
    sales_amount, sales_count = _sales_totals(session, terminal_id, batch)
    refunds_amount, refunds_count = _refund_totals(session, terminal_id, batch)
    return BatchTotals(sales_amount, sales_count, refunds_amount, refunds_count)


def counted_in_a_closed_batch(
    session: Session, terminal_id: str, payment_id: str, open_batch: str | None
) -> bool:
    """Did a batch of this terminal that is closed now count this payment — an approved sale
    or completion of it journaled in a batch other than the open one?"""
    found = session.execute(
        select(GatewayRequest.id).where(
            GatewayRequest.payment_id == payment_id,
            GatewayRequest.terminal_id == terminal_id,
            GatewayRequest.kind.in_(SALE_KINDS),
            GatewayRequest.response_code == APPROVED,
            GatewayRequest.batch != open_batch,
        ).limit(1)
    ).first()
    return found is not None


def _sales_totals(session: Session, terminal_id: str, batch: str) -> tuple[int, int]:
    # each payment once, at what it has captured: a pre-auth completed, its completion
    # reversed and completed again has two approved completions in the journal
    sold = select(GatewayRequest.payment_id).where(
        GatewayRequest.terminal_id == terminal_id,
        GatewayRequest.batch == batch,
        GatewayRequest.kind.in_(SALE_KINDS),
        GatewayRequest.response_code == APPROVED,
    )
    amount, count = session.execute(
        select(func.coalesce(func.sum(Payment.captured_amount), 0), func.count(Payment.id)).where(
            Payment.id.in_(sold), Payment.status == PaymentStatus.CAPTURED.value
        )
    ).one()
    return int(amount), int(count)


def _refund_totals(session: Session, terminal_id: str, batch: str) -> tuple[int, int]:
    advices = session.execute(
        select(GatewayRequest.mti, GatewayRequest.merchant_id, GatewayRequest.stan).where(
            GatewayRequest.terminal_id == terminal_id,
            GatewayRequest.batch == batch,
            GatewayRequest.kind == Kind.REFUND.value,
            GatewayRequest.response_code == APPROVED,
        )
    ).all()
    if not advices:
        return 0, 0
    keys = {
        Identity(mti, terminal_id, merchant_id, batch, stan).idempotency_key
        for mti, merchant_id, stan in advices
    }
    merchants = {merchant_id for _mti, merchant_id, _stan in advices}
    amount, count = session.execute(
        select(func.coalesce(func.sum(Refund.amount), 0), func.count(Refund.id)).where(
            Refund.merchant_id.in_(merchants),
            Refund.out_refund_no.in_(keys),
            Refund.status.in_(LIVE_REFUNDS),
        )
    ).one()
    return int(amount), int(count)


def open_case(
    session: Session,
    kind: str,
    identity: Identity,
    detail: str,
    now: datetime,
    payment_id: str | None = None,
) -> GatewayCase:
    case = GatewayCase(
        id=new_id("gwc_"), kind=kind, terminal_id=identity.terminal_id,
        merchant_id=identity.merchant_id, batch=identity.batch, stan=identity.stan,
        payment_id=payment_id, detail=detail[:255], created_at=now,
    )  # fmt: skip
    session.add(case)
    return case


def cases(session: Session, kinds: Iterable[str] | None = None) -> list[GatewayCase]:
    query = select(GatewayCase).order_by(GatewayCase.created_at, GatewayCase.id)
    if kinds is not None:
        query = query.where(GatewayCase.kind.in_(list(kinds)))
    return list(session.scalars(query))
