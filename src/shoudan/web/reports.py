"""Read-only figures for the console's pages: a merchant's day (with its latest settlement),
the staff review queues.

These are aggregates over other domains' tables (payments, refunds, deposit refund requests,
onboarding applications), read in one read transaction and never written. They live here
rather than in each domain's service because no domain offers a count yet; when one does
(e.g. ``RefundService.count``), switch to it. Every merchant figure is filtered by the
signed-in merchant's id: tenant scoping is in the query itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shoudan.core.clock import SHANGHAI, Clock
from shoudan.core.db import Database
from shoudan.deposits.domain import RequestStatus
from shoudan.deposits.models import DepositRefundRequest
from shoudan.onboarding.domain import ApplicationStatus
from shoudan.onboarding.models import Application
from shoudan.payments.domain import PaymentStatus
from shoudan.payments.models import Payment
from shoudan.refunds.domain import RefundStatus
from shoudan.refunds.models import Refund
from shoudan.settlement.models import Payout, SettlementItem, SettlementRun

RECENT_PAYMENTS = 10
FINAL_REFUND_STATES = (
    RefundStatus.SUCCEEDED, RefundStatus.FAILED, RefundStatus.REJECTED, RefundStatus.CANCELED,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class RecentPayment:
    id: str
    at: datetime
    amount: int
    status: str
    method: str
    last4: str | None


@dataclass(frozen=True, slots=True)
class MerchantDay:
    business_date: str  # YYYY-MM-DD, Asia/Shanghai
    sales_count: int
    sales_amount: int  # captured today, in fen
    refunds_count: int
    refunds_amount: int  # refunds that succeeded today
    refunds_open: int  # refunds not final yet (any day)
    recent: list[RecentPayment]
    settlement: LastSettlement | None = None  # the merchant's latest settlement


@dataclass(frozen=True, slots=True)
class LastSettlement:
    run_date: str  # the settlement date (YYYY-MM-DD)
    moved: int  # fen moved from unsettled to settled by that run
    payout_amount: int  # fen sent to the bank (0 when blocked or nothing to pay)
    payout_status: str | None  # pending | sent | paid | rejected | blocked | cancelled


@dataclass(frozen=True, slots=True)
class QueueCounts:
    refunds_in_review: int
    deposit_refunds_in_review: int
    applications_in_review: int


def _day_bounds(now: datetime) -> tuple[str, datetime, datetime]:
    day = now.astimezone(SHANGHAI).date()
    start = datetime.combine(day, time.min, tzinfo=SHANGHAI)
    return day.isoformat(), start, start + timedelta(days=1)


def merchant_day(database: Database, clock: Clock, merchant_id: str) -> MerchantDay:
    business_date, start, end = _day_bounds(clock.now())
    with database.read() as session:
        sales_count, sales_amount = session.execute(
            select(func.count(), func.coalesce(func.sum(Payment.captured_amount), 0)).where(
                Payment.merchant_id == merchant_id,
                Payment.business_date == business_date,
                Payment.status == PaymentStatus.CAPTURED.value,
            )
        ).one()
        refunds_count, refunds_amount = session.execute(
            select(func.count(), func.coalesce(func.sum(Refund.amount), 0)).where(
                Refund.merchant_id == merchant_id,
                Refund.status == RefundStatus.SUCCEEDED.value,
                Refund.completed_at >= start,
                Refund.completed_at < end,
            )
        ).one()
        refunds_open = _count(session, select(func.count()).where(
            Refund.merchant_id == merchant_id,
            Refund.status.not_in([s.value for s in FINAL_REFUND_STATES]),
        ))  # fmt: skip
        recent = [
            RecentPayment(p.id, p.created_at, p.amount, p.status, p.method,
                          p.card_last4 or p.qr_code_last4)
            for p in session.scalars(
                select(Payment)
                .where(Payment.merchant_id == merchant_id, Payment.business_date == business_date)
                .order_by(Payment.created_at.desc(), Payment.id.desc())
                .limit(RECENT_PAYMENTS)
            )
        ]  # fmt: skip
        settlement = _last_settlement(session, merchant_id)
    return MerchantDay(
        business_date, int(sales_count), int(sales_amount), int(refunds_count),
        int(refunds_amount), refunds_open, recent, settlement,
    )  # fmt: skip


def _last_settlement(session: Session, merchant_id: str) -> LastSettlement | None:
    row = session.execute(
        select(SettlementRun.run_date, SettlementItem.moved, SettlementItem.payout_amount,
               Payout.status)
        .join(SettlementRun, SettlementRun.id == SettlementItem.run_id)
        .outerjoin(Payout, Payout.id == SettlementItem.payout_id)
        .where(SettlementItem.merchant_id == merchant_id)
        .order_by(SettlementItem.created_at.desc(), SettlementItem.id.desc())
        .limit(1)
    ).first()  # fmt: skip
    if row is None:
        return None
    return LastSettlement(str(row[0]), int(row[1]), int(row[2]), row[3])


def _count(session: Session, query: object) -> int:
    return int(session.execute(query).scalar_one())  # type: ignore[call-overload]


def queue_counts(database: Database) -> QueueCounts:
    with database.read() as session:
        return QueueCounts(
            refunds_in_review=_count(session, select(func.count()).where(
                Refund.status == RefundStatus.IN_REVIEW.value)),
            deposit_refunds_in_review=_count(session, select(func.count()).where(
                DepositRefundRequest.status == RequestStatus.IN_REVIEW.value)),
            applications_in_review=_count(session, select(func.count()).where(
                Application.status == ApplicationStatus.IN_REVIEW.value)),
        )  # fmt: skip
