"""Merchant statements (对账单), daily or monthly, as CSV, XLSX or PDF — every figure from the
ledger.

A merchant's **balance** is what we owe it: its unsettled and settled balances less its debt.
Each posted ledger entry that touches those three accounts changes it by its postings there, and
is classified by its id (the ids are stable, docs/ledger.md): ``pay:`` sales (gross, with the
fee taken from them shown as fees; voids and reversals count negative), ``refund:`` refunds,
``dep:``/``debt:`` deposits (charges negative, refunds positive; collecting debt moves nothing),
``stl:`` D0 fees (moving unsettled to settled moves nothing), ``payout:`` payouts (a returned
or cancelled payout counts negative), anything else "other". So ``closing = opening + sales −
fees − refunds + deposits − payouts + other``, and opening and closing are the ledger's balances
at the period's bounds (Asia/Shanghai days).

The ledger's rows are read here directly (read-only, streamed): statements are a report over the
journal, and the journal is the source of truth.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Final

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from shoudan.core.clock import SHANGHAI
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.ledger import chart
from shoudan.ledger.models import LedgerEntry, LedgerPosting
from shoudan.merchants.service import get_merchant
from shoudan.settlement.bankfile import yuan
from shoudan.settlement.domain import FIRST_DATE, LAST_DATE, yuan_text

FORMATS: Final = ("csv", "xlsx", "pdf")
MEDIA_TYPES: Final = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pdf": "application/pdf",
}
POSTED_KINDS: Final = ("transfer", "post")
COLUMNS: Final = ("sales", "fees", "refunds", "deposits", "payouts", "other")
HEADERS: Final = {
    "day": "日期", "sales": "交易金额", "fees": "手续费", "refunds": "退款", "deposits": "押金",
    "payouts": "结算付款", "other": "其他调整", "closing": "期末余额",
}  # fmt: skip
FONT: Final = "STSong-Light"  # reportlab's built-in CID font: no font file, extractable text


@dataclass(frozen=True, slots=True)
class Period:
    text: str
    start: date  # first day
    end: date  # the day after the last

    @property
    def monthly(self) -> bool:
        return len(self.text) == 7


def parse_period(text: str) -> Period:
    """``YYYY-MM`` (a month) or ``YYYY-MM-DD`` (a day)."""
    try:
        if not FIRST_DATE.isoformat() <= text[:10] <= LAST_DATE.isoformat():
            raise ValueError(text)
        if len(text) == 7:
            start = date.fromisoformat(text + "-01")
            end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
            return Period(text, start, end)
        day = date.fromisoformat(text)
        if len(text) == 10:
            return Period(text, day, day + timedelta(days=1))
    except (TypeError, ValueError):
        pass
    raise DomainError(
        ErrorCode.INVALID_INPUT, f"period is YYYY-MM or YYYY-MM-DD, got {text!r}", field="period"
    )


def _instant(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=SHANGHAI).astimezone(UTC)


@dataclass(slots=True)
class Line:
    day: date
    sales: int = 0
    fees: int = 0
    refunds: int = 0
    deposits: int = 0
    payouts: int = 0
    other: int = 0
    closing: int = 0

    def change(self) -> int:
        return (self.sales - self.fees - self.refunds + self.deposits - self.payouts
                + self.other)  # fmt: skip


@dataclass(slots=True)
class Statement:
    merchant_id: str
    legal_name: str
    period: Period
    opening: int
    lines: list[Line] = field(default_factory=list)

    def total(self, column: str) -> int:
        return sum(getattr(line, column) for line in self.lines)

    @property
    def closing(self) -> int:
        return self.opening + sum(line.change() for line in self.lines)


def merchant_accounts(merchant_id: str) -> tuple[str, str, str]:
    return (chart.merchant_unsettled(merchant_id), chart.merchant_settled(merchant_id),
            chart.merchant_debt(merchant_id))  # fmt: skip


def balance_before(session: Session, merchant_id: str, moment: datetime) -> int:
    """What we owed the merchant just before ``moment``, from the posted journal."""
    total = session.scalar(
        select(func.coalesce(func.sum(LedgerPosting.amount), 0))
        .join(LedgerEntry, LedgerEntry.id == LedgerPosting.entry_id)
        .where(LedgerPosting.account_id.in_(merchant_accounts(merchant_id)),
               LedgerEntry.kind.in_(POSTED_KINDS), LedgerEntry.created_at < moment)
    )  # fmt: skip
    return -int(total or 0)


def _entries(
    session: Session, merchant_id: str, start: datetime, end: datetime
) -> Iterator[tuple[str, datetime, int, int, int]]:
    """(entry id, time, change of the merchant's balance, fee revenue, D0 fee revenue) of each
    posted entry of the period touching the merchant, oldest first, streamed."""
    own = merchant_accounts(merchant_id)
    touching = select(LedgerPosting.entry_id).where(LedgerPosting.account_id.in_(own))
    rows = session.execute(
        select(LedgerPosting.entry_id, LedgerEntry.created_at, LedgerPosting.account_id,
               LedgerPosting.amount)
        .join(LedgerEntry, LedgerEntry.id == LedgerPosting.entry_id)
        .where(LedgerEntry.kind.in_(POSTED_KINDS), LedgerEntry.created_at >= start,
               LedgerEntry.created_at < end, LedgerPosting.entry_id.in_(touching),
               or_(LedgerPosting.account_id.in_(own),
                   LedgerPosting.account_id.like("revenue:fees:%")))
        .order_by(LedgerEntry.created_at, LedgerPosting.entry_id)
        .execution_options(yield_per=2_000)
    )  # fmt: skip
    current: str | None = None
    when = start
    change = fee = d0 = 0
    for entry_id, created_at, account_id, amount in rows:
        if entry_id != current:
            if current is not None:
                yield current, when, change, fee, d0
            current, when, change, fee, d0 = entry_id, created_at, 0, 0, 0
        if account_id in own:
            change -= amount
        elif account_id == chart.D0_FEE_REVENUE:
            d0 -= amount
        else:
            fee -= amount
    if current is not None:
        yield current, when, change, fee, d0


def _classify(line: Line, entry_id: str, change: int, fee: int, d0: int) -> None:
    kind = entry_id.split(":", 1)[0]
    if kind == "pay":
        line.sales += change + fee
        line.fees += fee
    elif kind == "refund":
        line.refunds -= change
    elif kind in ("dep", "debt"):
        line.deposits += change
    elif kind == "stl":
        line.fees += d0
        line.other += change + d0  # zero unless something else rode on a settlement entry
    elif kind == "payout":
        line.payouts -= change
    else:
        line.other += change


def build_statement(session: Session, merchant_id: str, period: Period) -> Statement:
    merchant = get_merchant(session, merchant_id)
    start, end = _instant(period.start), _instant(period.end)
    statement = Statement(merchant_id, merchant.legal_name, period,
                          balance_before(session, merchant_id, start))  # fmt: skip
    days = (period.end - period.start).days
    lines = [Line(period.start + timedelta(days=i)) for i in range(days)]
    for entry_id, when, change, fee, d0 in _entries(session, merchant_id, start, end):
        index = (when.astimezone(SHANGHAI).date() - period.start).days
        _classify(lines[index], entry_id, change, fee, d0)
    running = statement.opening
    for line in lines:
        running += line.change()
        line.closing = running
    statement.lines = lines
    return statement


# -- renderers ------------------------------------------------------------------------------------
def _summary(statement: Statement) -> list[tuple[str, str]]:
    s = statement
    return [
        ("商户号", s.merchant_id), ("商户名称", s.legal_name), ("对账期间", s.period.text),
        ("期初余额", yuan_text(s.opening)),
        *((HEADERS[c], yuan_text(s.total(c))) for c in COLUMNS),
        ("期末余额", yuan_text(s.closing)),
    ]  # fmt: skip


def _table_headers() -> list[str]:
    return [HEADERS["day"], *(HEADERS[c] for c in COLUMNS), HEADERS["closing"]]


def _row(line: Line) -> list[int]:
    return [*(getattr(line, c) for c in COLUMNS), line.closing]


def render_csv(statement: Statement) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for label, value in _summary(statement):
        writer.writerow((label, value))
    writer.writerow(())
    writer.writerow(_table_headers())
    for line in statement.lines:
        writer.writerow((line.day.isoformat(), *(yuan(v) for v in _row(line))))
    return ("\ufeff" + out.getvalue()).encode("utf-8")  # BOM: Excel opens Chinese CSV right


def render_xlsx(statement: Statement) -> bytes:
    from openpyxl import Workbook  # type: ignore[import-untyped]
    from openpyxl.styles import Font  # type: ignore[import-untyped]

    money = "#,##0.00"
    book = Workbook()
    sheet = book.active
    sheet.title = "对账单"
    sheet.append(["商户对账单"])
    sheet["A1"].font = Font(bold=True, size=14)
    s = statement
    for label, value in [("商户号", s.merchant_id), ("商户名称", s.legal_name),
                         ("对账期间", s.period.text)]:  # fmt: skip
        sheet.append([label, value])
    for label, fen in [("期初余额", s.opening), *((HEADERS[c], s.total(c)) for c in COLUMNS),
                       ("期末余额", s.closing)]:  # fmt: skip
        sheet.append([label, Decimal(fen) / 100])
        sheet.cell(row=sheet.max_row, column=2).number_format = money
    sheet.append([])
    sheet.append(_table_headers())
    for cell in sheet[sheet.max_row]:
        cell.font = Font(bold=True)
    for line in s.lines:
        sheet.append([line.day, *(Decimal(v) / 100 for v in _row(line))])
        row = sheet[sheet.max_row]
        row[0].number_format = "yyyy-mm-dd"
        for cell in row[1:]:
            cell.number_format = money
    for letter in "ABCDEFGH":
        sheet.column_dimensions[letter].width = 14
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def render_pdf(statement: Statement) -> bytes:
    from reportlab.lib.pagesizes import A4, landscape  # type: ignore[import-untyped]
    from reportlab.pdfbase import pdfmetrics  # type: ignore[import-untyped]
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont  # type: ignore[import-untyped]
    from reportlab.pdfgen import canvas  # type: ignore[import-untyped]

    if FONT not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(UnicodeCIDFont(FONT))
    out = io.BytesIO()
    width, height = landscape(A4)
    pdf = canvas.Canvas(out, pagesize=(width, height))
    pdf.setTitle(f"对账单 {statement.merchant_id} {statement.period.text}")
    y = height - 50

    def text(x: float, value: str, size: int = 10) -> None:
        pdf.setFont(FONT, size)
        pdf.drawString(x, y, value)

    text(40, "商户对账单", 16)
    y -= 28
    for label, value in _summary(statement):
        text(40, f"{label}：{value}")
        y -= 16
    y -= 10
    columns = [40 + i * 95 for i in range(8)]
    for x, header in zip(columns, _table_headers(), strict=True):
        text(x, header)
    y -= 16
    for line in statement.lines:
        if y < 40:
            pdf.showPage()
            y = height - 50
        values = [line.day.isoformat(), *(yuan_text(v) for v in _row(line))]
        for x, value in zip(columns, values, strict=True):
            text(x, value)
        y -= 14
    pdf.showPage()
    pdf.save()
    return out.getvalue()


RENDERERS: Final = {"csv": render_csv, "xlsx": render_xlsx, "pdf": render_pdf}


def render(statement: Statement, fmt: str) -> bytes:
    if fmt not in RENDERERS:
        raise DomainError(
            ErrorCode.INVALID_INPUT, f"format is one of {', '.join(FORMATS)}", field="format"
        )
    return RENDERERS[fmt](statement)


def filename(statement: Statement, fmt: str) -> str:
    return f"statement-{statement.merchant_id}-{statement.period.text}.{fmt}"
