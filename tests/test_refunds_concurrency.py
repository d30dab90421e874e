"""Concurrent refund requests against one payment, on SQLite and PostgreSQL: the refundable
amount is never exceeded, and one out_refund_no makes one refund however many race for it."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shoudan.auth.domain import Principal, Role
from shoudan.core.db import Database
from shoudan.core.errors import DomainError
from shoudan.ledger import chart
from shoudan.refunds.service import RefundRequest
from tests.refunds_world import build_refund_world


def test_fifty_parallel_refunds_never_exceed_the_payment(
    database: Database, tmp_path: Path
) -> None:
    rw = build_refund_world(database, tmp_path)
    rw.earlier_payment(amount=200_000)  # balance enough: only the payment's amount limits
    payment = rw.earlier_payment(amount=100_000)
    merchant = Principal("merchant-user", Role.MERCHANT, rw.world.merchant_a)
    service = rw.world.container.refunds

    def ask(_: int) -> str:
        try:
            service.request(merchant, RefundRequest(payment["id"], 3_000, "customer_request"))
        except DomainError as error:
            return error.code.value
        return "accepted"

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = Counter(pool.map(ask, range(50)))
    assert outcomes == {"accepted": 33, "refund_exceeds_refundable": 17}
    capacity = rw.world.container.ledger.account(chart.refund_capacity(payment["id"]))
    assert capacity.debits_pending == 33 * 3_000
    assert rw.world.container.ledger.verify().violations == []


def test_one_out_refund_no_one_refund(database: Database, tmp_path: Path) -> None:
    rw = build_refund_world(database, tmp_path)
    payment = rw.earlier_payment(amount=100_000)
    merchant = Principal("merchant-user", Role.MERCHANT, rw.world.merchant_a)
    service = rw.world.container.refunds
    request = RefundRequest(payment["id"], 5_000, "duplicate", out_refund_no="ONE")
    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = set(pool.map(lambda _: service.request(merchant, request).id, range(12)))
    assert len(ids) == 1
    capacity = rw.world.container.ledger.account(chart.refund_capacity(payment["id"]))
    assert capacity.debits_pending == 5_000
