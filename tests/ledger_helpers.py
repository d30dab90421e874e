"""Shared set-up for ledger tests: a small chart of accounts with limits."""

from __future__ import annotations

from shoudan.core.db import Database
from shoudan.ledger.domain import AccountType
from shoudan.ledger.service import AccountSpec, Ledger

BANK = "asset:bank"
FEES = "revenue:fees"


def merchant(i: int) -> str:
    return f"liability:merchant:{i}"


def make_ledger(database: Database, merchants: int = 3, clock=None) -> Ledger:
    ledger = Ledger(database, clock)
    ledger.create_accounts(
        [AccountSpec(BANK, AccountType.ASSET), AccountSpec(FEES, AccountType.REVENUE)]
        + [
            AccountSpec(merchant(i), AccountType.LIABILITY, max_debit_balance=0)
            for i in range(merchants)
        ]
    )
    return ledger


def counts(database: Database) -> tuple[int, int]:
    from sqlalchemy import text

    with database.read() as session:
        entries = session.execute(text("SELECT COUNT(*) FROM ledger_entries")).scalar_one()
        postings = session.execute(text("SELECT COUNT(*) FROM ledger_postings")).scalar_one()
    return entries, postings
