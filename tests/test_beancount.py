"""Beancount export: the file ``shoudan ledger export`` writes passes ``bean-check`` and its
replay gives, account by account, exactly the posted balances the ledger stores."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from beancount import loader
from beancount.core import account as bc_account
from beancount.core import data
from sqlalchemy import text
from typer.testing import CliRunner

from shoudan.cli.main import app
from shoudan.core.clock import FixedClock
from shoudan.core.db import Database
from shoudan.core.errors import ErrorCode
from shoudan.ledger.domain import (
    MAX_AMOUNT,
    AccountType,
    BatchItem,
    Linked,
    PostHold,
    Posting,
    ResultStatus,
    Transfer,
    VoidHold,
    hold,
    transfer,
)
from shoudan.ledger.export import beancount_name, unique_names
from shoudan.ledger.service import AccountSpec, Ledger

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai

RECEIVABLE = "asset:channel:unionpay:receivable"
BANK = "asset:bank:settlement"
BRANCH = "asset:bank/branch.01"  # separators and a dot
UNSETTLED = "liability:merchant:898310058120001:unsettled"
IDLE = "liability:merchant:898310058120002:unsettled"  # never touched
ODD = "liability:merchant:商户:x y"  # non-ASCII and a space
ONLY_HELD = "liability:merchant:898310058120003:unsettled"  # only an open hold
CAPITAL = "equity:owner:capital"
FEES = "revenue:fees:card"
INTERCHANGE = "expense:channel:interchange"

SPECS = [
    AccountSpec(RECEIVABLE, AccountType.ASSET, name="UnionPay receivable"),
    AccountSpec(BANK, AccountType.ASSET, name="Settlement bank account"),
    AccountSpec(BRANCH, AccountType.ASSET, name='A "branch" account; with punctuation'),
    AccountSpec(UNSETTLED, AccountType.LIABILITY, max_debit_balance=0),
    AccountSpec(IDLE, AccountType.LIABILITY, max_debit_balance=0),
    AccountSpec(ODD, AccountType.LIABILITY, name="商户 with an odd id"),
    AccountSpec(ONLY_HELD, AccountType.LIABILITY),
    AccountSpec(CAPITAL, AccountType.EQUITY),
    AccountSpec(FEES, AccountType.REVENUE),
    AccountSpec(INTERCHANGE, AccountType.EXPENSE),
]


def cli() -> str:
    return str(Path(sys.executable).parent / "shoudan")


def bean_check() -> str:
    found = shutil.which("bean-check") or str(Path(sys.executable).parent / "bean-check")
    if not Path(found).exists():
        pytest.fail("bean-check not found (install the dev extras: beancount)")
    return found


def build_books(database: Database) -> Ledger:
    """Several account types, three business days, transfers and every kind of hold."""
    clock = FixedClock(T0)
    ledger = Ledger(database, clock)
    ledger.create_accounts(SPECS)

    def ok(*items: BatchItem) -> None:
        results = ledger.submit(items)
        assert all(r.status is ResultStatus.CREATED for r in results), results

    # day 1: capital, sales (three legs), interchange, odd accounts, a huge and a tiny amount
    ok(
        transfer("cap", BANK, CAPITAL, 100_000_000, description="paid-in capital"),
        Transfer(
            "sale-1",
            (Posting(RECEIVABLE, 10_000), Posting(UNSETTLED, -9_940), Posting(FEES, -60)),
            code="sale",
            description='sale ¥100.00 "credit" \\ 0.60%',
        ),
        Transfer(
            "sale-2",
            (Posting(RECEIVABLE, 12_345), Posting(UNSETTLED, -12_298), Posting(FEES, -47)),
            code="sale",
        ),
        transfer("interchange-1", INTERCHANGE, BANK, 33, description="interchange"),
        transfer("odd-1", ODD, BANK, 7, description="odd account, debit"),
        transfer("odd-2", BANK, ODD, 12_007, description="odd account, credit"),
        transfer("branch-1", BRANCH, BANK, MAX_AMOUNT, description="the largest posting"),
        transfer("branch-2", BANK, BRANCH, MAX_AMOUNT - 1),
        transfer("tiny", FEES, BANK, 1, description="one fen"),
    )
    clock.advance(timedelta(days=1))
    # day 2: holds — one stays open, one posts in part, one is voided, one posts in full
    ok(
        hold("h-open", RECEIVABLE, ONLY_HELD, 20_000, description="pre-auth, still open"),
        hold("h-part", RECEIVABLE, UNSETTLED, 50_000, description="pre-auth ¥500"),
        hold("h-void", RECEIVABLE, UNSETTLED, 8_800),
        hold("h-full", UNSETTLED, RECEIVABLE, 1_000, description="refund in review"),
        hold("h-expire", RECEIVABLE, UNSETTLED, 700, expires_at=clock.now() + timedelta(hours=1)),
    )
    ok(
        Linked(
            (
                PostHold("h-part-post", "h-part", 42_000, description="completion ¥420"),
                transfer("h-part-fee", UNSETTLED, FEES, 252, code="fee"),
            )
        ),
        VoidHold("h-void-void", "h-void", description="pre-auth cancelled"),
        PostHold("h-full-post", "h-full"),
    )
    refused = ledger.submit([transfer("overdraw", UNSETTLED, BANK, 10**9)])
    assert refused[0].status is ResultStatus.FAILED  # the limit keeps it out of the books
    clock.advance(timedelta(days=1))
    # day 3: an expiry (no postings), a settlement to the bank
    assert ledger.expire_due_holds() == 1
    settled = -ledger.account(UNSETTLED).balance
    ok(transfer("settle", UNSETTLED, BANK, settled, description="T+1 payout"))
    return ledger


def export_with_cli(database: Database, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            cli(), "ledger", "export", "--format", "beancount", str(out),
            "--database-url", database.url,
        ],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def replayed_fen(path: Path) -> tuple[dict[str, int], list[data.Transaction], list[data.Open]]:
    entries, errors, _options = loader.load_file(str(path))
    assert errors == [], [str(e) for e in errors]
    totals: dict[str, Decimal] = defaultdict(Decimal)
    transactions = [e for e in entries if isinstance(e, data.Transaction)]
    for entry in transactions:
        for posting in entry.postings:
            assert posting.units is not None and posting.units.currency == "CNY"
            assert isinstance(posting.units.number, Decimal)
            totals[posting.account] += posting.units.number
    fen = {}
    for name, total in totals.items():
        scaled = total * 100
        assert scaled == scaled.to_integral_value(), f"{name}: {total} is not whole fen"
        fen[name] = int(scaled)
    return fen, transactions, [e for e in entries if isinstance(e, data.Open)]


def test_cli_export_passes_bean_check_and_replays_every_balance(
    database: Database, tmp_path: Path
) -> None:
    ledger = build_books(database)
    assert ledger.verify().ok
    out = tmp_path / "books.beancount"

    exported = export_with_cli(database, out)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    checked = subprocess.run(
        [bean_check(), "--no-cache", str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == ""

    fen, transactions, opens = replayed_fen(out)
    names = unique_names([(spec.id, spec.type) for spec in SPECS])
    assert len(set(names.values())) == len(names)  # no two accounts share a name
    assert {o.account for o in opens} == set(names.values())
    for account_id, name in names.items():
        assert bc_account.is_valid(name), name
        assert (
            name.split(":")[0]
            == {
                AccountType.ASSET: "Assets",
                AccountType.LIABILITY: "Liabilities",
                AccountType.EQUITY: "Equity",
                AccountType.REVENUE: "Income",
                AccountType.EXPENSE: "Expenses",
            }[ledger.account(account_id).type]
        )
        assert fen.get(name, 0) == ledger.account(account_id).balance, account_id

    # the odd account is really there, under a valid name, with its balance
    assert fen[names[ODD]] == -12_000 == ledger.account(ODD).balance
    # the idle account and the one with only a pending hold have no movement
    assert names[IDLE] not in fen and names[ONLY_HELD] not in fen
    assert ledger.account(ONLY_HELD).credits_pending == 20_000

    # one transaction per posted entry (transfers and hold posts), each tagged with its id
    with database.read() as session:
        posted = set(
            session.scalars(
                text("SELECT id FROM ledger_entries WHERE kind IN ('transfer', 'post')")
            )
        )
        assert (
            session.execute(
                text("SELECT COUNT(*) FROM ledger_entries WHERE kind = 'expire'")
            ).scalar_one()
            == 1
        )
    assert {t.meta["entry_id"] for t in transactions} == posted
    assert "overdraw" not in posted
    for entry in transactions:
        assert sum((p.units.number for p in entry.postings if p.units), Decimal(0)) == 0
    # the partial post moved what was taken, not what was held
    (part,) = [t for t in transactions if t.meta["entry_id"] == "h-part-post"]
    assert sorted(p.units.number for p in part.postings if p.units) == [
        Decimal("-420.00"),
        Decimal("420.00"),
    ]
    # entries fall on their business days (Asia/Shanghai)
    assert {t.date.isoformat() for t in transactions} == {"2026-03-02", "2026-03-03", "2026-03-04"}
    # the open hold is a comment, not a movement
    body = out.read_text(encoding="utf-8")
    assert "hold h-open (pending, not posted)" in body


def test_export_api_replays_balances(database: Database, tmp_path: Path) -> None:
    """``Ledger.export_beancount`` (in-process) replays to the stored balances too."""
    ledger = build_books(database)
    out = tmp_path / "api.beancount"
    with out.open("w", encoding="utf-8") as handle:
        count = ledger.export_beancount(handle)
    fen, transactions, _opens = replayed_fen(out)
    assert count == len(transactions)
    names = unique_names([(spec.id, spec.type) for spec in SPECS])
    for spec in SPECS:
        assert fen.get(names[spec.id], 0) == ledger.account(spec.id).balance


def test_export_refuses_unknown_format(sqlite_url: str, tmp_path: Path) -> None:
    out = tmp_path / "books.csv"
    result = CliRunner().invoke(
        app, ["ledger", "export", "--format", "csv", str(out), "--database-url", sqlite_url]
    )
    assert result.exit_code == 2, result.output
    assert "unknown format" in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("account_id", "account_type"),
    [
        (ODD, AccountType.LIABILITY),
        ("liability:merchant:898310058120001:deposit_held", AccountType.LIABILITY),
        ("asset:bank/branch.01", AccountType.ASSET),
        ("revenue:费用", AccountType.REVENUE),
        ("expense: leading space", AccountType.EXPENSE),
        ("asset:-dash-", AccountType.ASSET),
        ("asset:123", AccountType.ASSET),
        ("equity", AccountType.EQUITY),
        (":::", AccountType.ASSET),
        ("x" * 128, AccountType.ASSET),
    ],
)
def test_account_names_are_valid(account_id: str, account_type: AccountType) -> None:
    assert bc_account.is_valid(beancount_name(account_id, account_type))


def test_replaced_characters_never_make_two_ids_collide() -> None:
    ids = ["liability:merchant:商户:x y", "liability:merchant:店:x y", "liability:merchant:x-y"]
    names = unique_names([(i, AccountType.LIABILITY) for i in ids])
    assert len(set(names.values())) == len(ids)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("liability:merchant:m1:x", "liability:merchant:M1:x"),
        ("asset:foo", "liability:foo"),
        ("liability:a::b", "liability:a:b"),
        ("liability", "liability:account"),
    ],
)
def test_distinct_ids_get_distinct_names(first: str, second: str) -> None:
    names = unique_names([(first, AccountType.LIABILITY), (second, AccountType.LIABILITY)])
    assert names[first].lower() != names[second].lower()
    assert all(bc_account.is_valid(name) for name in names.values())


def test_newlines_in_names_and_hold_ids_keep_the_file_valid(
    sqlite_database: Database, tmp_path: Path
) -> None:
    ledger = Ledger(sqlite_database)
    ledger.create_accounts(
        [
            AccountSpec("asset:a", AccountType.ASSET, name="first line\nsecond line"),
            AccountSpec("revenue:b", AccountType.REVENUE),
        ]
    )
    # control characters never enter entry ids or descriptions
    refused = ledger.submit(
        [
            transfer("t1", "asset:a", "revenue:b", 100, description="two\nlines"),
            hold("h\n2026-01-01 open Assets:Injected CNY", "asset:a", "revenue:b", 5),
        ]
    )
    assert [r.error for r in refused] == [ErrorCode.INVALID_INPUT] * 2
    results = ledger.submit([hold("h1", "asset:a", "revenue:b", 5)])
    assert all(r.ok for r in results)
    out = tmp_path / "newlines.beancount"
    with out.open("w", encoding="utf-8") as handle:
        ledger.export_beancount(handle)
    _entries, errors, _options = loader.load_file(str(out))
    assert errors == []
