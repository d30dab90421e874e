"""Refund tests' world: the payments world plus staff keys for every review role, a worker
(the outbox relay with the real handler registry), and helpers to make a payment of an
earlier day (refunds start after the void window)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from shoudan.auth.domain import Role
from shoudan.auth.service import create_api_key
from shoudan.core.db import Database
from shoudan.handlers import build_registry
from shoudan.notifications.service import Relay
from tests.payments_world import NOW, World, build_world

STAFF_ROLES = {
    "reviewer": Role.REVIEWER,
    "approver1": Role.APPROVER,
    "approver2": Role.APPROVER,
    "cs": Role.CS_AGENT,
    "finance": Role.FINANCE,
}


@dataclass
class RefundWorld:
    world: World
    staff: dict[str, str]  # name -> API key
    staff_ids: dict[str, str]  # name -> principal id
    relay: Relay

    @property
    def client(self):  # type: ignore[no-untyped-def]
        return self.world.client

    def headers(self, who: str) -> dict[str, str]:
        key = {"a": self.world.key_a, "b": self.world.key_b, "admin": self.world.admin_key}.get(
            who, self.staff.get(who)
        )
        assert key is not None, who
        return {"Authorization": f"Bearer {key}"}

    def earlier_payment(self, days: int = 1, **body: object) -> dict:
        """A payment made ``days`` business days ago (so no longer voidable), clock restored."""
        self.world.clock.set(NOW - timedelta(days=days))
        try:
            return self.world.pay(**body)
        finally:
            self.world.clock.set(NOW)

    def refund(self, who: str = "a", expect: int = 201, **body: object) -> dict:
        payload = {"reason": "customer_request", **body}
        response = self.client.post("/v1/refunds", json=payload, headers=self.headers(who))
        assert response.status_code == expect, response.text
        return response.json()

    def act(self, refund_id: str, action: str, who: str, expect: int = 200, **body: object):
        response = self.client.post(
            f"/v1/refunds/{refund_id}/{action}", json=body or None, headers=self.headers(who)
        )
        assert response.status_code == expect, response.text
        return response.json()

    def get(self, refund_id: str, who: str = "a") -> dict:
        response = self.client.get(f"/v1/refunds/{refund_id}", headers=self.headers(who))
        assert response.status_code == 200, response.text
        return response.json()

    def run_worker(self, rounds: int = 10) -> int:
        """Deliver every due outbox event (handlers may emit more); returns how many."""
        total = 0
        for _ in range(rounds):
            stats = self.relay.run_once()
            total += stats.claimed
            if stats.claimed == 0:
                break
        return total

    def later(self, delta: timedelta) -> None:
        self.world.clock.advance(delta)


def build_refund_world(database: Database, tmp_path: Path) -> RefundWorld:
    world = build_world(database, tmp_path)
    staff: dict[str, str] = {}
    staff_ids: dict[str, str] = {}
    with database.transaction() as session:
        for name, role in STAFF_ROLES.items():
            view, token = create_api_key(session, role=role, name=name)
            staff[name], staff_ids[name] = token, view.id
    relay = Relay(database, build_registry(world.container), clock=world.clock)
    return RefundWorld(world, staff, staff_ids, relay)


def check_refund_day_totals(world: World) -> None:
    """The running totals of live refunds equal what the refunds themselves say (an
    invariant: the risk rule "refunds today over 30 % of sales" reads them)."""
    from collections import Counter

    from sqlalchemy import select

    from shoudan.refunds.domain import LIVE, RefundStatus
    from shoudan.refunds.models import Refund, RefundDayTotal

    expected: Counter[tuple[str, str]] = Counter()
    with world.container.database.read() as session:
        for refund in session.scalars(select(Refund)):
            if RefundStatus(refund.status) in LIVE:
                expected[(refund.business_date, refund.merchant_id)] += refund.amount
        stored = {
            (row.business_date, row.merchant_id): row.amount
            for row in session.scalars(select(RefundDayTotal))
        }
    assert {k: v for k, v in stored.items() if v} == {k: v for k, v in expected.items() if v}
