"""Merchant statements on SQLite and PostgreSQL: every figure equals the ledger, the XLSX
reopens with openpyxl (Chinese headers, money formats), the PDF's Chinese text can be
extracted, the API serves them to their merchant only."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime
from pathlib import Path

import pytest
from openpyxl import load_workbook
from pypdf import PdfReader
from sqlalchemy import func, select

from shoudan.core.clock import SHANGHAI
from shoudan.core.db import Database
from shoudan.core.errors import DomainError
from shoudan.ledger import chart
from shoudan.payments.models import Payment
from shoudan.settlement.domain import yuan_text
from shoudan.settlement.models import Payout
from shoudan.settlement.statements import build_statement, parse_period, render
from tests.settlement_world import SettlementWorld, build_settlement_world


@pytest.fixture
def sw(database: Database, tmp_path: Path) -> SettlementWorld:
    world = build_settlement_world(database, tmp_path)
    a = world.world.merchant_a
    world.charge_debt(a, 5_000, "dep:stmt:charge")
    for day, amount in ((2, 120_000), (3, 80_000), (20, 33_300)):
        world.pay(datetime(2026, 11, day, 11, 0, tzinfo=SHANGHAI), amount)
    world.settle(date(2026, 11, 3))
    world.settle(date(2026, 11, 4))
    world.pay(datetime(2026, 12, 1, 11, 0, tzinfo=SHANGHAI), 9_900)  # next month
    return world


def _ledger_balance(sw: SettlementWorld, merchant_id: str) -> int:
    b = sw.merchant_balances(merchant_id)
    return b["unsettled"] + b["settled"] - b["debt"]


def test_statement_figures_equal_the_ledger(sw: SettlementWorld) -> None:
    a = sw.world.merchant_a
    with sw.database.read() as session:
        november = build_statement(session, a, parse_period("2026-11"))
        december = build_statement(session, a, parse_period("2026-12"))
        captured, fees = session.execute(
            select(func.sum(Payment.captured_amount), func.sum(Payment.fee))
            .where(Payment.merchant_id == a, Payment.business_date < "2026-12-01")
        ).one()  # fmt: skip
        paid_out = session.scalar(select(func.sum(Payout.amount)).where(Payout.merchant_id == a))
    assert november.opening == 0
    assert november.total("sales") == captured and november.total("fees") == fees
    assert november.total("deposits") == -5_000
    assert november.total("payouts") == paid_out
    assert len(november.lines) == 30
    # the month's closing is the next month's opening; the last one is today's ledger balance
    assert december.opening == november.closing
    assert december.closing == _ledger_balance(sw, a)
    assert november.lines[1].day == date(2026, 11, 2) and november.lines[1].sales == 120_000
    with sw.database.read() as session:
        day = build_statement(session, a, parse_period("2026-11-20"))
    assert (day.total("sales"), len(day.lines)) == (33_300, 1)
    assert day.opening == november.lines[18].closing


def test_formats_reopen_with_chinese_headers_and_numbers(sw: SettlementWorld) -> None:
    a = sw.world.merchant_a
    with sw.database.read() as session:
        statement = build_statement(session, a, parse_period("2026-11"))
    book = load_workbook(io.BytesIO(render(statement, "xlsx")))
    sheet = book["对账单"]
    values = [[cell.value for cell in row] for row in sheet.iter_rows()]
    header = next(i for i, row in enumerate(values) if row[0] == "日期")
    expected = ["交易金额", "手续费", "退款", "押金", "结算付款", "其他调整", "期末余额"]
    assert values[header][1:] == expected
    second = sheet.cell(row=header + 3, column=2)  # 2 November: sales
    assert second.value == 1200 and second.number_format == "#,##0.00"
    closing_row = next(row for row in values if row[0] == "期末余额")
    assert round(closing_row[1] * 100) == statement.closing
    pdf = PdfReader(io.BytesIO(render(statement, "pdf")))
    text = "".join(page.extract_text() for page in pdf.pages)
    assert "商户对账单" in text and "期末余额" in text and "老王面馆" in text
    assert yuan_text(statement.closing) in text
    rows = list(csv.reader(io.StringIO(render(statement, "csv").decode("utf-8-sig"))))
    assert rows[0] == ["商户号", a]
    assert ["期末余额", yuan_text(statement.closing)] in rows


def test_statement_api_tenant_isolation(sw: SettlementWorld) -> None:
    a = sw.world.merchant_a
    url = f"/v1/merchants/{a}/statements?period=2026-11&format=pdf"
    response = sw.world.client.get(url, headers=sw.rw.headers("a"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    assert "statement-" in response.headers["content-disposition"]
    assert sw.world.client.get(url, headers=sw.rw.headers("b")).status_code == 404
    finance = sw.world.client.get(url.replace("pdf", "xlsx"), headers=sw.rw.headers("finance"))
    assert finance.status_code == 200 and finance.content[:2] == b"PK"
    bad = sw.world.client.get(f"/v1/merchants/{a}/statements?period=2026-13",
                              headers=sw.rw.headers("a"))  # fmt: skip
    assert bad.status_code == 422


def test_periods_are_checked() -> None:
    assert parse_period("2026-02").end == date(2026, 3, 1)
    assert parse_period("2026-12").end == date(2027, 1, 1)
    for text in ("2026", "2026-13", "2026-11-31", "11-2026"):
        with pytest.raises(DomainError):
            parse_period(text)
    assert chart.PAYOUTS_IN_FLIGHT.startswith("liability:")
