"""The demo seed: balanced, idempotent, audited once, and exportable to a valid beancount file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from shoudan import demo
from shoudan.audit import service as audit
from shoudan.core.db import Database
from shoudan.ledger.service import Ledger

TABLES = ("ledger_accounts", "ledger_entries", "ledger_postings", "audit_log")


def bean_check() -> str:
    found = shutil.which("bean-check") or str(Path(sys.executable).parent / "bean-check")
    if not Path(found).exists():
        pytest.fail("bean-check not found (install the dev extras: beancount)")
    return found


def counts(database: Database) -> dict[str, int]:
    with database.read() as session:
        return {t: session.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one() for t in TABLES}


def balances(database: Database) -> dict[str, tuple[int, int, int, int]]:
    with database.read() as session:
        return {
            a.id: (a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending)
            for a in Ledger(database).accounts(session)
        }


def test_seed_is_balanced_and_idempotent(database: Database) -> None:
    demo.seed(database)
    report = Ledger(database).verify()
    assert report.ok, report.violations
    first, first_balances = counts(database), balances(database)
    assert first["ledger_accounts"] == len(demo.chart())
    assert first["ledger_entries"] >= 15
    assert first["audit_log"] == 1

    demo.seed(database)
    assert Ledger(database).verify().ok
    assert counts(database) == first
    assert balances(database) == first_balances

    with database.read() as session:
        assert audit.verify(session).ok
        actions = session.execute(
            text("SELECT actor, action, subject_type, subject_id FROM audit_log")
        ).all()
    assert [tuple(row) for row in actions] == [("system:demo", "demo.seeded", "system", "demo")]


def test_seed_books_tell_the_story(database: Database) -> None:
    demo.seed(database)
    ledger = Ledger(database)
    noodles, grocer = demo.NOODLES, demo.GROCER
    # every sale was settled and paid out; only the open pre-authorisation is still pending
    for mid in (noodles, grocer):
        assert ledger.account(demo.unsettled(mid)).balance == 0
        assert ledger.account(demo.payable(mid)).balance == 0
    open_hold = ledger.account(demo.unsettled(grocer))
    assert (open_hold.credits_pending, open_hold.debits_pending) == (20_000, 0)
    assert ledger.account(demo.RECEIVABLE).debits_pending == 20_000
    assert ledger.account(demo.RECEIVABLE).balance == 0  # UnionPay paid everything captured
    assert ledger.account(demo.CHANNEL_PAYABLE).balance == 0  # refunds netted
    # the noodle house's deposit is still held; the grocer's was forfeited in part and paid
    assert ledger.account(demo.deposit_held(noodles)).credit_balance == demo.DEPOSIT
    assert ledger.account(demo.deposit_held(grocer)).balance == 0
    assert ledger.account(demo.PENALTIES).credit_balance == 3_000
    # what stays in the bank is exactly what the acquirer earned plus the deposit it holds
    fees = ledger.account(demo.FEES).credit_balance
    assert fees > 0
    assert ledger.account(demo.BANK).balance == fees + 3_000 + demo.DEPOSIT
    with database.read() as session:
        # the void is the exact opposite of the sale it cancels
        sale, void = (
            sorted(
                session.execute(
                    text("SELECT account_id, amount FROM ledger_postings WHERE entry_id = :id"),
                    {"id": entry_id},
                ).all()
            )
            for entry_id in ("demo:003:sale:898310058120001", "demo:008:void:898310058120001")
        )
        assert [(a, -x) for a, x in sale] == [tuple(r) for r in void]
        kinds = dict(
            session.execute(text("SELECT kind, COUNT(*) FROM ledger_entries GROUP BY kind")).all()
        )
    assert kinds == {"transfer": kinds["transfer"], "pending": 2, "post": 1}


def test_seed_exports_to_a_valid_beancount_file(database: Database, tmp_path: Path) -> None:
    demo.seed(database)
    out = tmp_path / "demo.beancount"
    with out.open("w", encoding="utf-8") as handle:
        written = Ledger(database).export_beancount(handle)
    assert written > 0
    checked = subprocess.run(
        [bean_check(), "--no-cache", str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == ""
    assert checked.stderr.strip() == ""
