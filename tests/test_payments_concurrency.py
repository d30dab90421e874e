"""Payments under concurrency on PostgreSQL: the day's limits hold and the first payments of
a day all get their RRN (nothing charged upstream without a record)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text

from shoudan.auth.domain import Principal, Role
from shoudan.payments.domain import EntryMode, Method
from shoudan.payments.service import CardInput, PaymentRequest
from tests.payments_world import DEBIT, PIN, build_world, check_day_totals


@pytest.mark.postgres
def test_card_daily_limit_holds_under_concurrency(pg_database, tmp_path) -> None:
    world = build_world(pg_database, tmp_path)
    principal = Principal("k", Role.MERCHANT, world.merchant_a)
    card = CardInput(DEBIT, "2912", EntryMode.CHIP, PIN)

    def pay(_: int):
        request = PaymentRequest(world.terminal_a, 5_000_000, Method.CARD, card=card)
        return world.container.payments.create(principal, request)

    # 8 concurrent ¥50,000 payments on a card allowed ¥200,000 a day; also the day's
    # first payments, so they race to create the RRN counter
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(pay, range(8)))
    captured = [p for p in results if p.status == "captured"]
    assert len(captured) == 4
    assert all(p.decline_code == "61" for p in results if p.status != "captured")
    with pg_database.read() as session:
        total = session.execute(
            text("SELECT SUM(captured_amount) FROM payments WHERE status = 'captured'")
        ).scalar_one()
        rrns = session.execute(text("SELECT COUNT(DISTINCT rrn) FROM payments")).scalar_one()
    assert total == 20_000_000
    assert rrns == 8
    assert world.container.ledger.verify().ok
    check_day_totals(world)
