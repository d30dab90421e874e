"""Concurrency on PostgreSQL: many writers, limits on, no violation, nothing lost, and no
deadlock ever reaches the caller (accounts are locked in id order; lost races are retried)."""

from __future__ import annotations

import random
import threading

import pytest
from sqlalchemy import text

from shoudan.core.db import Database
from shoudan.ledger.domain import AccountType, PostHold, ResultStatus, hold, transfer
from shoudan.ledger.service import AccountSpec, Ledger

THREADS = 8
TRANSFERS_PER_THREAD = 1_000
ACCOUNTS = 20
START_BALANCE = 50_000


def account(i: int) -> str:
    return f"liability:c:{i:02d}"


@pytest.mark.postgres
def test_eight_threads_of_random_transfers_keep_every_limit(pg_database: Database) -> None:
    ledger = Ledger(pg_database)
    ledger.create_accounts(
        [AccountSpec("asset:c:bank", AccountType.ASSET)]
        + [
            AccountSpec(account(i), AccountType.LIABILITY, max_debit_balance=0)
            for i in range(ACCOUNTS)
        ]
    )
    ledger.submit(
        [transfer(f"fund-{i}", "asset:c:bank", account(i), START_BALANCE) for i in range(ACCOUNTS)]
    )
    errors: list[BaseException] = []
    outcomes: dict[str, int] = {"created": 0, "failed": 0}
    lock = threading.Lock()

    def worker(worker_id: int) -> None:
        rng = random.Random(worker_id)
        try:
            for n in range(TRANSFERS_PER_THREAD):
                a, b = rng.sample(range(ACCOUNTS), 2)
                # amounts large enough that many transfers hit the limit
                entry = transfer(f"w{worker_id}-{n}", account(a), account(b),
                                 rng.randint(1, 20_000))  # fmt: skip
                if n % 50 == 0:  # a few multi-entry batches with holds, for lock variety
                    c = rng.choice([x for x in range(ACCOUNTS) if x not in (a, b)])
                    results = ledger.submit(
                        [
                            entry,
                            hold(f"w{worker_id}-{n}-h", account(c), account(a), 100),
                            PostHold(f"w{worker_id}-{n}-p", f"w{worker_id}-{n}-h", amount=40),
                        ]
                    )
                else:
                    results = ledger.submit([entry])
                with lock:
                    for result in results:
                        key = "failed" if result.status is ResultStatus.FAILED else "created"
                        outcomes[key] += 1
        except BaseException as exc:  # any exception reaching the caller fails the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not any(thread.is_alive() for thread in threads), "a writer hung"
    assert errors == [], errors[:3]
    assert outcomes["created"] > 0 and outcomes["failed"] > 0  # the limits were exercised

    report = ledger.verify()
    assert report.ok, report.violations[:5]
    views = [ledger.account(account(i)) for i in range(ACCOUNTS)]
    # zero limit violations: no merchant account is in debit, even counting reservations
    assert all(v.debits_posted + v.debits_pending <= v.credits_posted for v in views)
    # totals conserved: what the bank funded is exactly what the accounts hold
    total = sum(v.credit_balance for v in views)
    assert total == ACCOUNTS * START_BALANCE
    with pg_database.read() as session:
        stored = session.execute(text("SELECT COUNT(*) FROM ledger_entries")).scalar_one()
    assert stored == ACCOUNTS + outcomes["created"]
