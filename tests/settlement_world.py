"""Settlement tests' world: the refunds world (merchants, terminals, keys, staff, relay) plus
the settlement and payout services, verified settlement accounts in the merchants' own names,
and helpers to pay at a given Shanghai time and to run a date's settlement after its cut-off."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

from shoudan.core.clock import SHANGHAI
from shoudan.core.db import Database
from shoudan.ledger import chart
from shoudan.ledger.domain import transfer
from shoudan.merchants.service import (
    SettlementAccountInput,
    add_settlement_account,
    get_merchant,
    verify_settlement_account,
)
from shoudan.settlement.domain import cutoff_instant
from shoudan.settlement.models import SettlementRun
from shoudan.settlement.payouts import PayoutService
from shoudan.settlement.service import SettlementService
from tests.refunds_world import RefundWorld, build_refund_world

GOOD_ACCOUNT = "6217000010012345677"  # the sandbox bank pays it
CLOSED_ACCOUNT = "6217000010034520000"  # the sandbox bank rejects it: account_closed


@dataclass
class SettlementWorld:
    rw: RefundWorld
    settlement: SettlementService
    payouts: PayoutService

    @property
    def world(self):  # type: ignore[no-untyped-def]
        return self.rw.world

    @property
    def database(self) -> Database:
        return self.rw.world.container.database

    def at(self, year: int, month: int, day: int, hour: int = 10, minute: int = 0,
           second: int = 0) -> None:  # fmt: skip
        self.world.clock.set(datetime(year, month, day, hour, minute, second, tzinfo=SHANGHAI))

    def pay(self, when: datetime, amount: int = 10_000, key: str | None = None, **body: object):
        self.world.clock.set(when)
        return self.world.pay(key, amount=amount, **body)

    def settle(self, day: date) -> SettlementRun:
        """Run ``day``'s T+1 settlement just after its cut-off."""
        self.world.clock.set(cutoff_instant(day) + timedelta(minutes=5))
        return self.settlement.run_t1(day, actor="test")

    def balance(self, account_id: str) -> int:
        """Credit balance of a liability (what we owe), debit balance of an asset."""
        view = self.world.container.ledger.account(account_id)
        return view.balance if view.type.value == "asset" else view.credit_balance

    def merchant_balances(self, merchant_id: str) -> dict[str, int]:
        return {
            "unsettled": self.balance(chart.merchant_unsettled(merchant_id)),
            "settled": self.balance(chart.merchant_settled(merchant_id)),
            "debt": self.balance(chart.merchant_debt(merchant_id)),
        }

    def give_account(self, merchant_id: str, holder: str | None = None,
                     number: str = GOOD_ACCOUNT, verify: bool = True) -> None:  # fmt: skip
        container = self.world.container
        with self.database.transaction() as session:
            name = holder or get_merchant(session, merchant_id).legal_name
            add_settlement_account(
                session, container.vault, merchant_id,
                SettlementAccountInput(name, "中国银行上海分行", number), actor="test",
                clock=self.world.clock,
            )  # fmt: skip
            if verify:
                verify_settlement_account(session, merchant_id, actor="test",
                                          clock=self.world.clock)  # fmt: skip

    def charge_debt(self, merchant_id: str, amount: int, entry_id: str) -> None:
        """What the deposits domain books when a deposit is charged at activation."""
        debt, held = chart.merchant_debt(merchant_id), chart.merchant_deposit(merchant_id)
        entry = transfer(entry_id, debt, held, amount, code="deposit.charge")
        self.world.container.ledger.submit([entry])[0].raise_for_error()


def build_settlement_world(database: Database, tmp_path: Path) -> SettlementWorld:
    rw = build_refund_world(database, tmp_path)
    container = rw.world.container
    settlement = SettlementService(
        container.database, container.ledger, container.vault, container.clock
    )
    payouts = PayoutService(container.database, container.ledger, container.vault, container.clock)
    sw = SettlementWorld(rw, settlement, payouts)
    sw.give_account(rw.world.merchant_a)
    sw.give_account(rw.world.merchant_b)
    return sw
