"""The HTTP app on a real server, as `shoudan serve` opens its database (on SQLite: group
commit and the baton): 20 concurrent requests with one Idempotency-Key make one payment;
concurrent payments and refunds keep the books."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import text

from shoudan.core.config import Settings
from shoudan.core.db import Database
from tests.payments_world import DEBIT, PIN, build_world, check_day_totals
from tests.web_world import serve


@pytest.fixture
def served(db_url, tmp_path):
    database = Database(db_url, group_commit=Settings().sqlite_group_commit)
    world = build_world(database, tmp_path)
    with serve(world.client.app, lifespan="auto") as base:
        yield world, base
    assert world.container.ledger.verify().ok
    check_day_totals(world)
    database.dispose()


def test_twenty_concurrent_requests_with_one_key_make_one_payment(served) -> None:
    world, base = served
    body = {
        "terminal_id": world.terminal_a, "amount": 12_345, "method": "card",
        "card": {"pan": DEBIT, "expiry": "2912", "pin": PIN, "entry_mode": "chip"},
    }  # fmt: skip
    headers = world.headers(world.key_a, **{"Idempotency-Key": "order-42"})

    def send(_: int) -> httpx.Response:
        with httpx.Client(base_url=base, timeout=30) as client:
            return client.post("/v1/payments", json=body, headers=headers)

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(send, range(20)))
    assert {r.status_code for r in responses} == {201}, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    with world.container.database.read() as session:
        count = session.execute(text("SELECT COUNT(*) FROM payments")).scalar_one()
    assert count == 1
    assert world.container.ledger.account(
        f"liability:merchant:{world.merchant_a}:unsettled"
    ).credit_balance == 12_345 - 62  # 0.50 % of 123.45 = 0.61725 → 0.62

    other = dict(body, amount=1)
    with httpx.Client(base_url=base, timeout=30) as client:
        reused = client.post("/v1/payments", json=other, headers=headers)
    assert (reused.status_code, reused.json()["code"]) == (409, "idempotency_key_reused")


def test_concurrent_payments_and_refunds_keep_the_books(served) -> None:
    world, base = served
    card = {"pan": DEBIT, "expiry": "2912", "pin": PIN, "entry_mode": "chip"}

    def pay(n: int) -> httpx.Response:
        body = {"terminal_id": world.terminal_a, "amount": 1_000 + n, "method": "card",
                "card": card}  # fmt: skip
        headers = world.headers(world.key_a, **{"Idempotency-Key": f"order-{n}"})
        with httpx.Client(base_url=base, timeout=30) as client:
            return client.post("/v1/payments", json=body, headers=headers)

    with ThreadPoolExecutor(max_workers=16) as pool:
        paid = list(pool.map(pay, range(40)))
    assert {r.status_code for r in paid} == {201}, [r.text for r in paid][:3]
    payments = [r.json() for r in paid]
    assert len({p["id"] for p in payments}) == 40

    def refund(payment: dict) -> httpx.Response:
        body = {"payment_id": payment["id"], "amount": 1, "reason": "customer_request"}
        with httpx.Client(base_url=base, timeout=30) as client:
            return client.post("/v1/refunds", json=body, headers=world.headers(world.key_a))

    with ThreadPoolExecutor(max_workers=16) as pool:
        refunded = list(pool.map(refund, payments))
    assert {r.status_code for r in refunded} == {201}, [r.text for r in refunded][:3]
    assert len({r.json()["id"] for r in refunded}) == 40
    with world.container.database.read() as session:
        counts = session.execute(
            text("SELECT (SELECT COUNT(*) FROM payments), (SELECT COUNT(*) FROM refunds)")
        ).one()
    assert tuple(counts) == (40, 40)
