"""Staff console views: one search box, merchant and terminal pages with their history, the
audit log with its chain status, and the charts.

Every page is read-only except the chain verification (a POST, audit-logged). Reads that
span several domains live here, in one read transaction each (like ``web/reports.py``);
aggregates are grouped SQL, never Python loops over all rows. Days are Asia/Shanghai days,
bucketed portably: each day is a half-open range of UTC instants computed here, and the
database only compares timestamps (no time-zone function, which differs between SQLite and
PostgreSQL).

Roles: any staff role may search and open merchant/terminal pages and the charts; the audit
log is for admin and risk (``AUDIT_ROLES``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup
from sqlalchemy import ColumnElement, and_, case, func, or_, select
from sqlalchemy.orm import Session

from shoudan.audit import service as audit
from shoudan.audit.models import AuditRecord
from shoudan.auth.domain import Role
from shoudan.core.clock import SHANGHAI, Clock
from shoudan.core.crypto import Vault, mask_phone
from shoudan.core.db import Database
from shoudan.deposits.domain import FINAL as FINAL_DEPOSIT_STATES
from shoudan.deposits.models import Deposit
from shoudan.ledger.service import Ledger
from shoudan.merchants import service as merchants
from shoudan.merchants.domain import is_merchant_id
from shoudan.merchants.models import Merchant
from shoudan.onboarding.models import Application
from shoudan.onboarding.service import PHONE_CONTEXT as APPLICATION_PHONE
from shoudan.payments.domain import PaymentStatus
from shoudan.payments.models import Payment
from shoudan.refunds.domain import RefundStatus
from shoudan.refunds.models import Refund
from shoudan.settlement.models import Payout, SettlementItem
from shoudan.terminals import lifecycle
from shoudan.terminals import service as terminals
from shoudan.terminals.domain import is_serial_number, is_terminal_id
from shoudan.terminals.models import Device, Terminal
from shoudan.web.charts import Point, bar_chart
from shoudan.web.context import PageContext
from shoudan.web.i18n import N_, format_fen
from shoudan.web.merchant_account import DEPOSIT_STATUS, PAYOUT_STATUS, PRODUCT, TERMINAL_STATUS
from shoudan.web.merchant_payments import REASON_LABELS
from shoudan.web.models import MerchantUser
from shoudan.web.service import PHONE_CONTEXT as USER_PHONE

router = APIRouter(include_in_schema=False)

AUDIT_ROLES = (Role.RISK,)  # and admin, who passes every role check
VERIFY_ACTION = "audit.verify"
SEARCH_LIMIT = 50
RECENT = 20
HISTORY = 50
AUDIT_PAGE = 50
CHART_DAYS = 30
QUERY_MAX = 64
_PHONE = re.compile(r"1[3-9][0-9]{9}")
_RRN = re.compile(r"[0-9]{12}")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


# -- search ---------------------------------------------------------------------------------------
class QueryKind(StrEnum):
    MERCHANT_ID = "merchant_id"  # a well-formed merchant id (looked up exactly)
    TERMINAL_ID = "terminal_id"  # 8 digits or capitals (also tried as a serial number)
    RRN = "rrn"  # 12 digits
    PHONE = "phone"  # 11 digits, mainland mobile
    TEXT = "text"  # a merchant's name (contains) or a serial number


# Words shown for stored codes: the merchant platform's where they exist (one msgid, one home)
LABELS = {
    "merchant": {"active": N_("Active"), "suspended": N_("Suspended"), "closed": N_("Closed")},
    "merchant_type": {"individual": N_("Individual"), "small_business": N_("Small business"),
                      "enterprise": N_("Enterprise")},
    "terminal": TERMINAL_STATUS, "product": PRODUCT, "deposit": DEPOSIT_STATUS,
    "payout": PAYOUT_STATUS, "reason": REASON_LABELS,
    "device": {
        "in_stock": N_("In stock"), "allocated": N_("Allocated"), "shipped": N_("Shipped"),
        "delivered": N_("Delivered"), "activated": N_("Activated"), "suspended": N_("Suspended"),
        "returned": N_("Returned"), "terminated": N_("Terminated"),
    },
}  # fmt: skip

KIND_LABELS = {
    QueryKind.MERCHANT_ID: N_("merchant number"),
    QueryKind.TERMINAL_ID: N_("terminal ID or serial number"),
    QueryKind.RRN: N_("reference number (RRN)"),
    QueryKind.PHONE: N_("phone number (matched by its keyed hash, shown masked)"),
    QueryKind.TEXT: N_("merchant name or serial number"),
}


def query_kind(text: str) -> QueryKind:
    """What a typed query looks like (pure): the search then runs only the matching look-ups."""
    if is_merchant_id(text):  # the merchants domain's own rule (acquirer code, serial)
        return QueryKind.MERCHANT_ID
    if _PHONE.fullmatch(text):
        return QueryKind.PHONE
    if _RRN.fullmatch(text):
        return QueryKind.RRN
    if is_terminal_id(text):
        return QueryKind.TERMINAL_ID
    return QueryKind.TEXT


@dataclass(frozen=True, slots=True)
class MerchantHit:
    merchant_id: str
    legal_name: str
    status: str
    phone: str  # masked
    via: str = ""  # how a phone matched: contact | user


@dataclass(frozen=True, slots=True)
class TerminalHit:
    key: str  # the terminal id, or the serial of a device without a terminal yet
    terminal_id: str | None
    serial_number: str
    merchant_id: str | None
    status: str


@dataclass(frozen=True, slots=True)
class PaymentHit:
    id: str
    merchant_id: str
    terminal_id: str
    rrn: str
    amount: int
    status: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApplicationHit:
    id: str
    business_name: str
    phone: str  # masked
    status: str
    merchant_id: str | None


@dataclass
class SearchResults:
    kind: QueryKind
    merchants: list[MerchantHit] = field(default_factory=list)
    terminals: list[TerminalHit] = field(default_factory=list)
    payments: list[PaymentHit] = field(default_factory=list)
    applications: list[ApplicationHit] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.merchants or self.terminals or self.payments or self.applications)


def search(database: Database, vault: Vault, text: str) -> SearchResults:
    """Everything ``text`` may designate, by kind. Phones are found through the keyed lookup
    hashes (nothing is decrypted) and come back masked."""
    results = SearchResults(query_kind(text))
    with database.read() as session:
        if results.kind is QueryKind.MERCHANT_ID:
            results.merchants = _merchants_where(session, Merchant.merchant_id == text)
        elif results.kind is QueryKind.PHONE:
            _search_phone(session, vault, text, results)
        elif results.kind is QueryKind.RRN:
            results.payments = _payments_where(session, Payment.rrn == text, SEARCH_LIMIT)
        else:
            if results.kind is QueryKind.TEXT:
                results.merchants = _merchants_where(
                    session, Merchant.legal_name.contains(text, autoescape=True)
                )
            results.terminals = _terminals_matching(session, text)
    return results


def _merchant_hit(row: Merchant, via: str = "") -> MerchantHit:
    return MerchantHit(row.merchant_id, row.legal_name, row.status,
                       row.contact_phone_masked, via)  # fmt: skip


def _merchants_where(session: Session, condition: ColumnElement[bool]) -> list[MerchantHit]:
    query = select(Merchant).where(condition).order_by(Merchant.legal_name, Merchant.merchant_id)
    return [_merchant_hit(row) for row in session.scalars(query.limit(SEARCH_LIMIT))]


def _search_phone(session: Session, vault: Vault, phone: str, results: SearchResults) -> None:
    contact = vault.lookup_hash(phone, merchants.PHONE_CONTEXT)
    user = vault.lookup_hash(phone, USER_PHONE)
    for row in session.scalars(select(Merchant).where(Merchant.contact_phone_hash == contact)):
        results.merchants.append(_merchant_hit(row, "contact"))
    users = session.execute(
        select(Merchant, MerchantUser.phone_masked)
        .join(MerchantUser, MerchantUser.merchant_id == Merchant.merchant_id)
        .where(MerchantUser.phone_hash == user)
    )
    for row, masked in users:
        results.merchants.append(MerchantHit(row.merchant_id, row.legal_name, row.status,
                                             masked, "user"))  # fmt: skip
    applications = select(Application).where(
        Application.phone_hash == vault.lookup_hash(phone, APPLICATION_PHONE)
    )
    results.applications = [
        ApplicationHit(a.id, a.business_name, a.phone_masked, a.status, a.merchant_id)
        for a in session.scalars(applications.order_by(Application.created_at.desc())
                                 .limit(SEARCH_LIMIT))
    ]  # fmt: skip


def _payments_where(
    session: Session, condition: ColumnElement[bool], limit: int
) -> list[PaymentHit]:
    query = select(Payment).where(condition).order_by(Payment.created_at.desc(), Payment.id.desc())
    return [
        PaymentHit(p.id, p.merchant_id, p.terminal_id, p.rrn, p.amount, p.status, p.created_at)
        for p in session.scalars(query.limit(limit))
    ]


def _terminals_matching(session: Session, text: str) -> list[TerminalHit]:
    """Terminals whose id or serial number is ``text``, and stock devices of that serial."""
    hits = [
        TerminalHit(t.terminal_id, t.terminal_id, t.serial_number, t.merchant_id, t.status)
        for t in session.scalars(select(Terminal).where(
            or_(Terminal.terminal_id == text, Terminal.serial_number == text)))
    ]  # fmt: skip
    if not hits and is_serial_number(text):
        device = session.get(Device, text)
        if device is not None:
            hits.append(TerminalHit(device.serial_number, device.terminal_id,
                                    device.serial_number, device.merchant_id, device.status))
    return hits


# -- merchant and terminal pages ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RefundLine:
    id: str
    payment_id: str
    amount: int
    reason: str
    status: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DepositLine:
    id: str
    serial_number: str
    terminal_id: str | None
    amount: int
    outstanding: int
    status: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Tally:
    """A count and a sum of fen."""

    count: int
    amount: int


@dataclass(frozen=True, slots=True)
class HistoryLine:
    at: datetime
    actor: str
    what: str  # an audit action or "status: a → b"
    detail: str


@dataclass(frozen=True, slots=True)
class MerchantFile:
    merchant: merchants.MerchantView
    balance: merchants.MerchantBalance
    terminals: list[terminals.TerminalView]
    payments: list[PaymentHit]
    refunds: list[RefundLine]
    settled: Tally  # settlement items: how many runs, gross settled
    payouts: dict[str, Tally]  # per payout status
    deposits: list[DepositLine]
    history: list[HistoryLine]


@dataclass(frozen=True, slots=True)
class TerminalFile:
    terminal: terminals.TerminalView | None
    device: lifecycle.DeviceView | None
    lifecycle: list[lifecycle.HistoryEntry]
    deposits: list[DepositLine]
    payments: list[PaymentHit]
    history: list[HistoryLine]


def merchant_file(database: Database, ledger: Ledger, merchant_id: str) -> MerchantFile:
    """Everything about one merchant; ``merchant_not_found`` (→ 404) for an unknown id."""
    with database.read() as session:
        merchant = merchants.get_merchant(session, merchant_id)
        status_lines = [
            HistoryLine(c.occurred_at, c.actor,
                        f"status: {c.from_status or '-'} → {c.to_status}", c.reason)
            for c in merchants.status_history(session, merchant_id)
        ]  # fmt: skip
        audit_lines = _audit_lines(audit.for_subjects(
            session, [("merchant", merchant_id)], limit=HISTORY))  # fmt: skip
        return MerchantFile(
            merchant=merchant,
            balance=merchants.merchant_balance(session, ledger, merchant_id),
            terminals=terminals.list_terminals(session, merchant_id, limit=200).items,
            payments=_payments_where(session, Payment.merchant_id == merchant_id, RECENT),
            refunds=_refunds_of(session, merchant_id),
            settled=_tally(session, select(func.count(), func.sum(SettlementItem.gross))
                           .where(SettlementItem.merchant_id == merchant_id)),
            payouts=_payouts_by_status(session, merchant_id),
            deposits=_deposits_where(session, Deposit.merchant_id == merchant_id),
            history=sorted([*status_lines, *audit_lines], key=lambda h: h.at, reverse=True),
        )  # fmt: skip


def terminal_file(database: Database, key: str) -> TerminalFile:
    """A terminal by id or serial number (or a stock device by serial); 404 when none."""
    with database.read() as session:
        row = session.scalars(select(Terminal).where(
            or_(Terminal.terminal_id == key, Terminal.serial_number == key))).first()  # fmt: skip
        serial = row.serial_number if row is not None else key
        device = session.get(Device, serial) if is_serial_number(serial) else None
        if row is None and device is None:
            raise terminals.terminal_not_found(key)
        subjects = [("device", serial)] + ([("terminal", row.terminal_id)] if row else [])
        deposits = Deposit.serial_number == serial
        if row is not None:
            deposits = or_(deposits, Deposit.terminal_id == row.terminal_id)
        return TerminalFile(
            terminal=None if row is None else terminals.get_terminal(session, row.terminal_id),
            device=None if device is None else lifecycle.device_view(device),
            lifecycle=[] if device is None else lifecycle.device_history(session, serial),
            deposits=_deposits_where(session, deposits),
            payments=[] if row is None else _payments_where(
                session, Payment.terminal_id == row.terminal_id, RECENT),
            history=_audit_lines(audit.for_subjects(session, subjects, limit=HISTORY)),
        )  # fmt: skip


def _audit_lines(records: Sequence[AuditRecord]) -> list[HistoryLine]:
    return [HistoryLine(r.occurred_at, r.actor, r.action, r.after or "") for r in records]


def _refunds_of(session: Session, merchant_id: str) -> list[RefundLine]:
    query = (
        select(Refund).where(Refund.merchant_id == merchant_id)
        .order_by(Refund.created_at.desc(), Refund.id.desc()).limit(RECENT)
    )  # fmt: skip
    return [
        RefundLine(r.id, r.payment_id, r.amount, r.reason, r.status, r.created_at)
        for r in session.scalars(query)
    ]


def _deposits_where(session: Session, condition: ColumnElement[bool]) -> list[DepositLine]:
    query = select(Deposit).where(condition).order_by(Deposit.created_at.desc()).limit(RECENT)
    return [
        DepositLine(d.id, d.serial_number, d.terminal_id, d.amount, d.outstanding, d.status,
                    d.created_at)
        for d in session.scalars(query)
    ]  # fmt: skip


def _tally(session: Session, query: Any) -> Tally:
    count, amount = session.execute(query).one()
    return Tally(int(count or 0), int(amount or 0))


def _payouts_by_status(session: Session, merchant_id: str) -> dict[str, Tally]:
    rows = session.execute(
        select(Payout.status, func.count(), func.sum(Payout.amount))
        .where(Payout.merchant_id == merchant_id).group_by(Payout.status)
    )  # fmt: skip
    return {status: Tally(int(count), int(amount or 0)) for status, count, amount in rows}


# -- audit log ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ChainStatus:
    """The last verification of the hash chain (cached as its own audit record)."""

    record_seq: int  # the verification's own entry
    verified_at: datetime
    actor: str
    ok: bool
    head_seq: int  # the entries it covered: 1..head_seq
    problem_count: int
    first_problem_seq: int | None
    first_problem_kind: str | None


def verify_chain(database: Database, clock: Clock, actor: str) -> ChainStatus:
    """Verify the whole chain (a read), then write the result as an ``audit.verify`` record:
    the cache the audit page shows, shared by every process, and the staff action's trace.
    Two transactions, so a long verification never holds the write lock."""
    with database.read() as session:
        report = audit.verify(session)
    first = report.problems[0] if report.problems else None
    result = {
        "ok": report.ok, "head_seq": report.head_seq or 0, "rows_checked": report.rows_checked,
        "problem_count": report.problem_count,
        "first_problem_seq": first.seq if first else None,
        "first_problem_kind": first.kind.value if first else None,
    }  # fmt: skip
    with database.transaction() as session:
        row = audit.record(session, actor=actor, action=VERIFY_ACTION, subject_type="system",
                           subject_id="audit_log", after=result, clock=clock)  # fmt: skip
        return _chain_status(row)


def last_chain_status(session: Session) -> ChainStatus | None:
    row = audit.latest(session, VERIFY_ACTION)
    return None if row is None else _chain_status(row)


def _chain_status(row: AuditRecord) -> ChainStatus:
    data = json.loads(row.after or "{}")
    return ChainStatus(
        row.seq, row.occurred_at, row.actor, bool(data.get("ok")), int(data.get("head_seq") or 0),
        int(data.get("problem_count") or 0), data.get("first_problem_seq"),
        data.get("first_problem_kind"),
    )  # fmt: skip


FILTER_FIELDS = ("actor", "action", "subject_type", "subject_id", "from", "to")


def shanghai_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=SHANGHAI)


def parse_day(text: str) -> date | None:
    if not _DAY.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


# -- charts ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Day:
    """One Asia/Shanghai calendar day as the half-open range of instants [start, end)."""

    label: date
    start: datetime
    end: datetime


def shanghai_days(now: datetime, count: int) -> list[Day]:
    """The last ``count`` Shanghai days, oldest first, today included."""
    today = now.astimezone(SHANGHAI).date()
    days = [today - timedelta(days=back) for back in range(count - 1, -1, -1)]
    return [Day(d, shanghai_start(d), shanghai_start(d + timedelta(days=1))) for d in days]


def refund_rate_bp(refunds: int, sales: int) -> int:
    """Refunds ÷ sales in basis points, rounded half up; 0 on a day without sales."""
    if sales <= 0:
        return 0
    return (refunds * 20_000 + sales) // (2 * sales)


@dataclass(frozen=True, slots=True)
class DayFigures:
    day: date
    sales: int  # captured that day, fen
    sales_count: int
    refunds: int  # refunds that succeeded that day, fen
    refund_rate_bp: int
    deposits: int  # deposits outstanding at the end of the day, fen


@dataclass(frozen=True, slots=True)
class Dashboard:
    days: list[DayFigures]
    reasons: list[tuple[str, int]]  # refund reason → refunds requested in the period
    deposits_now: Tally  # deposits charged or held, not refunded or forfeited


def dashboard(database: Database, now: datetime) -> Dashboard:
    days = shanghai_days(now, CHART_DAYS)
    with database.read() as session:
        sales = _per_day(session, days, Payment.captured_at, Payment.captured_amount,
                         Payment.status == PaymentStatus.CAPTURED.value)  # fmt: skip
        refunds = _per_day(session, days, Refund.completed_at, Refund.amount,
                           Refund.status == RefundStatus.SUCCEEDED.value)  # fmt: skip
        deposits = _deposits_at_ends(session, days)
        reasons = session.execute(
            select(Refund.reason, func.count()).where(Refund.created_at >= days[0].start,
                                                      Refund.created_at < days[-1].end)
            .group_by(Refund.reason).order_by(func.count().desc(), Refund.reason)
        ).all()  # fmt: skip
        deposits_now = _tally(session, select(func.count(), func.sum(Deposit.amount)).where(
            Deposit.status.not_in([s.value for s in FINAL_DEPOSIT_STATES])))  # fmt: skip
    figures = [
        DayFigures(d.label, sales[i].amount, sales[i].count, refunds[i].amount,
                   refund_rate_bp(refunds[i].amount, sales[i].amount), deposits[i])
        for i, d in enumerate(days)
    ]  # fmt: skip
    return Dashboard(figures, [(str(r), int(n)) for r, n in reasons], deposits_now)


def _per_day(
    session: Session, days: list[Day], at: Any, amount: Any, condition: ColumnElement[bool]
) -> list[Tally]:
    """Count and sum of ``amount`` per day of ``at``: one grouped query. The bucket (a CASE
    over the days' instant ranges) is computed in a subquery and grouped outside, so the
    GROUP BY names a column rather than repeating an expression with bound parameters
    (which PostgreSQL would not recognise as the same)."""
    bucket = case(*[(and_(at >= d.start, at < d.end), i) for i, d in enumerate(days)])
    inner = (
        select(bucket.label("day"), amount.label("amount"))
        .where(condition, at >= days[0].start, at < days[-1].end).subquery()
    )  # fmt: skip
    rows = session.execute(
        select(inner.c.day, func.count(), func.sum(inner.c.amount)).group_by(inner.c.day)
    )
    tallies = [Tally(0, 0)] * len(days)
    for index, count, total in rows:
        tallies[int(index)] = Tally(int(count), int(total or 0))
    return tallies


def _deposits_at_ends(session: Session, days: list[Day]) -> list[int]:
    """Deposits outstanding at the end of each day (charged before it ended, not closed by
    then): one query, one SUM(CASE) column per day."""
    columns = [
        func.coalesce(func.sum(case((and_(
            Deposit.created_at < d.end,
            or_(Deposit.closed_at.is_(None), Deposit.closed_at >= d.end)), Deposit.amount),
            else_=0)), 0)
        for d in days
    ]  # fmt: skip
    return [int(v) for v in session.execute(select(*columns)).one()]


def format_bp(value: int) -> str:
    return f"{value} bp"


# -- pages ----------------------------------------------------------------------------------------
def _render(ctx: PageContext, template: str, status: int = 200, **values: Any) -> Response:
    return ctx.render(template, status=status, labels=LABELS, wide=True, **values)


@router.get("/staff/search", response_class=HTMLResponse)
def search_page(request: Request, q: str = "") -> Response:
    ctx = PageContext.of(request)
    ctx.require_staff()
    text = q.strip()
    if len(text) > QUERY_MAX:
        errors = {"q": ctx._("At most 64 characters.")}
        return _render(ctx, "staff_views/search.html", status=422, q=text, errors=errors,
                       results=None, kinds=KIND_LABELS)  # fmt: skip
    results = search(ctx.container.database, ctx.container.vault, text) if text else None
    if results is not None and results.kind is QueryKind.PHONE:
        # a full phone number is never sent back, not even in the search box
        return _render(ctx, "staff_views/search.html", q="", searched=mask_phone(text),
                       errors={}, results=results, kinds=KIND_LABELS)  # fmt: skip
    return _render(ctx, "staff_views/search.html", q=text, searched=text, errors={},
                   results=results, kinds=KIND_LABELS)  # fmt: skip


@router.get("/staff/merchants/{merchant_id}", response_class=HTMLResponse)
def merchant_page(request: Request, merchant_id: str) -> Response:
    ctx = PageContext.of(request)
    ctx.require_staff()
    c = ctx.container
    found = merchant_file(c.database, c.ledger, merchant_id)
    return _render(ctx, "staff_views/merchant.html", file=found)


@router.get("/staff/terminals/{key}", response_class=HTMLResponse)
def terminal_page(request: Request, key: str) -> Response:
    ctx = PageContext.of(request)
    ctx.require_staff()
    found = terminal_file(ctx.container.database, key)
    return _render(ctx, "staff_views/terminal.html", file=found, key=key)


@router.get("/staff/audit", response_class=HTMLResponse)
def audit_page(request: Request) -> Response:
    ctx = PageContext.of(request)
    ctx.require_staff(*AUDIT_ROLES)
    return _audit_page(ctx)


@router.post("/staff/audit/verify", response_class=HTMLResponse)
async def audit_verify(request: Request) -> Response:
    ctx = PageContext.of(request)
    identity = ctx.require_staff(*AUDIT_ROLES)
    await ctx.form()
    c = ctx.container
    verify_chain(c.database, c.clock, f"staff:{identity.user_id}")
    return ctx.redirect("/staff/audit")


def _audit_page(ctx: PageContext) -> Response:
    params = ctx.request.query_params
    values = {name: params.get(name, "").strip()[:128] for name in FILTER_FIELDS}
    errors: dict[str, str] = {}
    days = {name: parse_day(values[name]) for name in ("from", "to") if values[name]}
    for name, day in days.items():
        if day is None:
            errors[name] = ctx._("Enter a date as YYYY-MM-DD.")
    before = params.get("before", "")
    if before and not before.isdigit():
        raise HTTPException(status_code=404)
    day_from, day_to = days.get("from"), days.get("to")
    filters = audit.AuditFilters(
        actor=values["actor"] or None, action=values["action"] or None,
        subject_type=values["subject_type"] or None, subject_id=values["subject_id"] or None,
        occurred_from=shanghai_start(day_from) if day_from else None,
        occurred_to=shanghai_start(day_to + timedelta(days=1)) if day_to else None,
    )  # fmt: skip
    with ctx.container.database.read() as session:
        status = last_chain_status(session)
        newest = audit.head_seq(session)
        rows = [] if errors else audit.search(
            session, filters, limit=AUDIT_PAGE + 1, before_seq=int(before) if before else None)
    more = len(rows) > AUDIT_PAGE
    rows = rows[:AUDIT_PAGE]
    kept = {k: v for k, v in values.items() if v}
    next_page = f"?{urlencode({**kept, 'before': rows[-1].seq})}" if more and rows else None
    return _render(
        ctx, "staff_views/audit.html", status=422 if errors else 200, values=values,
        errors=errors,
        rows=rows, chain=status, newest=newest, next_page=next_page,
    )  # fmt: skip


@router.get("/staff/dashboard", response_class=HTMLResponse)
def dashboard_page(request: Request) -> Response:
    ctx = PageContext.of(request)
    ctx.require_staff()
    figures = dashboard(ctx.container.database, ctx.container.clock.now())
    return _render(ctx, "staff_views/dashboard.html", figures=figures,
                   charts=_charts(ctx, figures))  # fmt: skip


def _charts(ctx: PageContext, figures: Dashboard) -> dict[str, Markup]:
    def points(pick: Any) -> list[Point]:
        return [Point(f.day.strftime("%m-%d"), pick(f)) for f in figures.days]

    return {
        "volume": bar_chart(ctx._("Daily payment volume (captured, last 30 days)"),
                            points(lambda f: f.sales), show=format_fen),
        "rate": bar_chart(ctx._("Refund rate per day, in basis points (refunds ÷ sales)"),
                          points(lambda f: f.refund_rate_bp), show=format_bp),
        "reasons": bar_chart(ctx._("Refund reasons (refunds requested, last 30 days)"),
                             [Point(ctx._(REASON_LABELS.get(r, r)), n)
                              for r, n in figures.reasons]),
        "deposits": bar_chart(ctx._("Deposits outstanding at the end of each day"),
                              points(lambda f: f.deposits), show=format_fen),
    }  # fmt: skip
