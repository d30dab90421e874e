"""The ledger's behaviour on both engines: transfers, idempotency, holds, linked groups,
limits, bad input, and the invariants checker catching tampering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from shoudan.core.clock import FixedClock
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.ledger.domain import (
    AccountType,
    Hold,
    Linked,
    PostHold,
    Posting,
    ResultStatus,
    Transfer,
    VoidHold,
    hold,
    transfer,
)
from shoudan.ledger.service import AccountSpec, Ledger
from tests.ledger_helpers import BANK, FEES, counts, make_ledger, merchant

NOW = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def ledger(database, clock) -> Ledger:
    return make_ledger(database, clock=clock)


def balances(ledger: Ledger, account_id: str) -> tuple[int, int, int, int]:
    view = ledger.account(account_id)
    return (view.debits_posted, view.credits_posted, view.debits_pending, view.credits_pending)


def test_multi_leg_sale_posts_and_balances(ledger: Ledger) -> None:
    # sale ¥100.00 at 0.60%: receivable +100.00, merchant −99.40, fee revenue −0.60
    sale = Transfer(
        "sale-1",
        (Posting(BANK, 10_000), Posting(merchant(0), -9_940), Posting(FEES, -60)),
        code="sale",
    )
    [result] = ledger.submit([sale])
    assert result.status is ResultStatus.CREATED
    assert ledger.account(BANK).balance == 10_000
    assert ledger.account(merchant(0)).credit_balance == 9_940
    assert ledger.account(FEES).credit_balance == 60
    assert ledger.verify().ok


def test_same_id_same_content_is_idempotent(ledger: Ledger, database) -> None:
    entry = transfer("t-1", BANK, merchant(0), 500)
    assert ledger.submit([entry])[0].status is ResultStatus.CREATED
    before = counts(database)
    assert ledger.submit([entry])[0].status is ResultStatus.EXISTS
    assert counts(database) == before
    assert ledger.account(BANK).balance == 500


def test_same_id_other_content_is_refused(ledger: Ledger, database) -> None:
    ledger.submit([transfer("t-1", BANK, merchant(0), 500)])
    before = counts(database)
    [result] = ledger.submit([transfer("t-1", BANK, merchant(0), 501)])
    assert result.error is ErrorCode.ENTRY_ID_CONFLICT
    assert counts(database) == before


@pytest.mark.parametrize(
    ("entry", "code"),
    [
        (
            Transfer("u", (Posting(BANK, 100), Posting(merchant(0), -99))),
            ErrorCode.ENTRY_UNBALANCED,
        ),
        (Transfer("z", (Posting(BANK, 0), Posting(merchant(0), 0))), ErrorCode.INVALID_AMOUNT),
        (Transfer("n", (Posting(BANK, -5), Posting(merchant(0), 5.0))), ErrorCode.INVALID_AMOUNT),
        (Transfer("one", (Posting(BANK, 100),)), ErrorCode.ENTRY_TOO_FEW_POSTINGS),
        (Transfer("f", (Posting(BANK, True), Posting(merchant(0), -1))), ErrorCode.INVALID_AMOUNT),
        (transfer("x", BANK, "asset:nowhere", 100), ErrorCode.ACCOUNT_NOT_FOUND),
        (transfer("c", BANK, merchant(0), 100, currency="USD"), ErrorCode.INVALID_CURRENCY),
        (transfer("", BANK, merchant(0), 100), ErrorCode.INVALID_INPUT),
        (transfer("i" * 65, BANK, merchant(0), 100), ErrorCode.INVALID_INPUT),
        (transfer("same", BANK, BANK, 100), ErrorCode.INVALID_INPUT),
        (transfer("m", merchant(0), merchant(1), 1), ErrorCode.LIMIT_EXCEEDED),
        (PostHold("p", "no-such-hold"), ErrorCode.HOLD_NOT_FOUND),
        (VoidHold("v", "no-such-hold"), ErrorCode.HOLD_NOT_FOUND),
        (PostHold("p0", "h", amount=0), ErrorCode.INVALID_AMOUNT),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(ledger: Ledger, database, entry, code) -> None:
    before = counts(database)
    bank_before = balances(ledger, BANK)
    [result] = ledger.submit([entry])
    assert result.status is ResultStatus.FAILED
    assert result.error is code, result.message
    assert result.message
    assert counts(database) == before
    assert balances(ledger, BANK) == bank_before
    with pytest.raises(DomainError) as raised, database.transaction() as session:
        ledger.post(session, entry)
    assert raised.value.code is code


@pytest.mark.parametrize("amount", [0, -5, 1.5, True, "10"])
def test_two_leg_helpers_refuse_non_positive_amounts(amount) -> None:
    for build in (transfer, hold):
        with pytest.raises(DomainError) as raised:
            build("x", BANK, merchant(0), amount)
        assert raised.value.code is ErrorCode.INVALID_AMOUNT


def test_currency_mismatch_with_account(database, clock) -> None:
    ledger = make_ledger(database, clock=clock)
    # Only CNY exists today, so fake an account in another currency at the row level.
    with database.transaction() as session:
        session.execute(
            text(
                "INSERT INTO ledger_accounts (id, type, currency, name, debits_posted,"
                " credits_posted, debits_pending, credits_pending, created_at)"
                " VALUES ('asset:usd', 'asset', 'USD', '', 0, 0, 0, 0, :now)"
            ),
            {"now": NOW.replace(tzinfo=None) if database.dialect == "sqlite" else NOW},
        )
    [result] = ledger.submit([transfer("cm", "asset:usd", merchant(0), 5)])
    assert result.error is ErrorCode.CURRENCY_MISMATCH


def test_limit_is_checked_against_pending_debits(ledger: Ledger) -> None:
    ledger.submit([transfer("fund", BANK, merchant(0), 1_000)])
    assert ledger.submit([hold("h", merchant(0), merchant(1), 800)])[0].ok
    # 800 reserved: only 200 left to spend
    [over] = ledger.submit([transfer("t", merchant(0), merchant(1), 201)])
    assert over.error is ErrorCode.LIMIT_EXCEEDED
    assert ledger.submit([transfer("t2", merchant(0), merchant(1), 200)])[0].ok
    assert ledger.verify().ok


def test_hold_post_in_part_releases_the_rest(ledger: Ledger) -> None:
    ledger.submit([transfer("fund", BANK, merchant(0), 1_000)])
    ledger.submit([hold("h", merchant(0), merchant(1), 600)])
    assert balances(ledger, merchant(0)) == (0, 1_000, 600, 0)
    [posted] = ledger.submit([PostHold("p", "h", amount=250)])
    assert posted.status is ResultStatus.CREATED
    assert balances(ledger, merchant(0)) == (250, 1_000, 0, 0)
    assert balances(ledger, merchant(1)) == (0, 250, 0, 0)
    # resolved at most once, whatever the way
    assert ledger.submit([PostHold("p2", "h")])[0].error is ErrorCode.HOLD_ALREADY_RESOLVED
    assert ledger.submit([VoidHold("v", "h")])[0].error is ErrorCode.HOLD_ALREADY_RESOLVED
    # a retry of the post itself is idempotent
    assert ledger.submit([PostHold("p", "h", amount=250)])[0].status is ResultStatus.EXISTS
    assert ledger.verify().ok


def test_hold_post_more_than_held_is_refused(ledger: Ledger, database) -> None:
    ledger.submit([transfer("fund", BANK, merchant(0), 1_000)])
    ledger.submit([hold("h", merchant(0), merchant(1), 600)])
    before = counts(database)
    assert ledger.submit([PostHold("p", "h", amount=601)])[0].error is (
        ErrorCode.HOLD_AMOUNT_EXCEEDED
    )
    assert counts(database) == before


def test_multi_leg_hold_posts_in_full_only(ledger: Ledger) -> None:
    ledger.submit(
        [
            Hold(
                "h3",
                (Posting(BANK, 1_000), Posting(merchant(0), -994), Posting(FEES, -6)),
            )
        ]
    )
    [partial] = ledger.submit([PostHold("p", "h3", amount=500)])
    assert partial.error is ErrorCode.HOLD_PARTIAL_NOT_SUPPORTED
    assert ledger.submit([PostHold("p-full", "h3")])[0].ok
    assert ledger.account(FEES).credit_balance == 6
    assert ledger.verify().ok


def test_void_releases_everything(ledger: Ledger) -> None:
    ledger.submit([transfer("fund", BANK, merchant(0), 1_000)])
    ledger.submit([hold("h", merchant(0), merchant(1), 600)])
    assert ledger.submit([VoidHold("v", "h")])[0].ok
    assert balances(ledger, merchant(0)) == (0, 1_000, 0, 0)
    assert balances(ledger, merchant(1)) == (0, 0, 0, 0)


def test_holds_expire_at_their_deadline(ledger: Ledger, clock: FixedClock) -> None:
    ledger.submit([transfer("fund", BANK, merchant(0), 1_000)])
    deadline = NOW + timedelta(minutes=30)
    ledger.submit([hold("h", merchant(0), merchant(1), 600, expires_at=deadline)])
    ledger.submit([hold("keep", merchant(0), merchant(1), 100)])
    assert ledger.expire_due_holds() == 0
    clock.advance(timedelta(minutes=30))
    assert ledger.submit([PostHold("late", "h")])[0].error is ErrorCode.HOLD_EXPIRED
    assert ledger.submit([VoidHold("late-v", "h")])[0].error is ErrorCode.HOLD_EXPIRED
    assert ledger.expire_due_holds() == 1
    assert ledger.expire_due_holds() == 0  # at most once
    assert balances(ledger, merchant(0)) == (0, 1_000, 100, 0)
    assert ledger.verify().ok


def test_hold_deadline_must_be_future_and_aware(ledger: Ledger) -> None:
    past = hold("h", BANK, merchant(0), 5, expires_at=NOW - timedelta(seconds=1))
    naive = hold("h2", BANK, merchant(0), 5, expires_at=datetime(2030, 1, 1))
    assert ledger.submit([past])[0].error is ErrorCode.INVALID_INPUT
    assert ledger.submit([naive])[0].error is ErrorCode.INVALID_INPUT


def test_linked_group_fails_together(ledger: Ledger, database) -> None:
    ledger.submit([transfer("fund", BANK, merchant(0), 1_000)])
    before = counts(database)
    results = ledger.submit(
        [
            transfer("solo", BANK, merchant(2), 7),
            Linked(
                (
                    transfer("a", merchant(0), merchant(1), 600),
                    hold("b", merchant(0), merchant(1), 300),
                    transfer("c", merchant(0), merchant(1), 200),  # 600+300+200 > 1000
                    transfer("d", BANK, merchant(1), 1),
                )
            ),
        ]
    )
    assert [r.status for r in results] == [ResultStatus.CREATED] + [ResultStatus.FAILED] * 4
    assert [r.error for r in results[1:]] == [
        ErrorCode.LINKED_ENTRY_FAILED,
        ErrorCode.LINKED_ENTRY_FAILED,
        ErrorCode.LIMIT_EXCEEDED,
        ErrorCode.LINKED_ENTRY_FAILED,
    ]
    assert counts(database) == (before[0] + 1, before[1] + 2)
    assert balances(ledger, merchant(0)) == (0, 1_000, 0, 0)
    assert ledger.verify().ok


def test_linked_group_succeeds_together_and_retries_as_exists(ledger: Ledger) -> None:
    group = Linked(
        (
            transfer("a", BANK, merchant(0), 600),
            hold("b", merchant(0), merchant(1), 300),
            PostHold("c", "b", amount=100),
        )
    )
    assert [r.status for r in ledger.submit([group])] == [ResultStatus.CREATED] * 3
    assert [r.status for r in ledger.submit([group])] == [ResultStatus.EXISTS] * 3
    assert balances(ledger, merchant(0)) == (100, 600, 0, 0)


def test_batch_results_are_per_entry(ledger: Ledger) -> None:
    results = ledger.submit(
        [
            transfer("ok1", BANK, merchant(0), 10),
            transfer("bad", merchant(1), merchant(0), 10),
            transfer("ok2", BANK, merchant(1), 10),
            transfer("ok1", BANK, merchant(0), 10),  # repeated inside the batch
        ]
    )
    assert [r.status for r in results] == [
        ResultStatus.CREATED,
        ResultStatus.FAILED,
        ResultStatus.CREATED,
        ResultStatus.EXISTS,
    ]


def test_accounts_are_idempotent_and_validated(ledger: Ledger) -> None:
    spec = AccountSpec(merchant(0), AccountType.LIABILITY, max_debit_balance=0)
    ledger.create_accounts([spec])  # same definition again: fine
    with pytest.raises(DomainError) as conflict:
        ledger.create_accounts([AccountSpec(merchant(0), AccountType.ASSET)])
    assert conflict.value.code is ErrorCode.ACCOUNT_CONFLICT
    for bad, code in [
        (AccountSpec("", AccountType.ASSET), ErrorCode.INVALID_INPUT),
        (AccountSpec("a", "cash"), ErrorCode.INVALID_INPUT),  # type: ignore[arg-type]
        (AccountSpec("a", AccountType.ASSET, currency="XXX"), ErrorCode.INVALID_CURRENCY),
        (AccountSpec("a", AccountType.ASSET, max_debit_balance=-1), ErrorCode.INVALID_AMOUNT),
    ]:
        with pytest.raises(DomainError) as raised:
            ledger.create_accounts([bad])
        assert raised.value.code is code
    with pytest.raises(DomainError) as missing:
        ledger.account("nope")
    assert missing.value.code is ErrorCode.ACCOUNT_NOT_FOUND


def test_postings_are_append_only(ledger: Ledger, database) -> None:
    ledger.submit([transfer("t", BANK, merchant(0), 10)])
    for statement in (
        "UPDATE ledger_postings SET amount = amount * 2",
        "DELETE FROM ledger_postings",
        "UPDATE ledger_entries SET description = 'x'",
        "DELETE FROM ledger_entries",
    ):
        with pytest.raises(Exception, match="append-only"), database.transaction() as session:
            session.execute(text(statement))
    assert ledger.verify().ok


def _drop_append_only_triggers(database) -> None:
    with database.transaction() as session:
        if database.dialect == "sqlite":
            for name in ("trg_ledger_postings_no_update", "trg_ledger_entries_no_update"):
                session.execute(text(f"DROP TRIGGER {name}"))
        else:
            for table in ("ledger_postings", "ledger_entries"):
                session.execute(text(f"DROP TRIGGER trg_{table}_append_only ON {table}"))


def test_verify_detects_tampering(ledger: Ledger, database) -> None:
    ledger.submit([transfer("fund", BANK, merchant(0), 1_000)])
    ledger.submit([hold("h", merchant(0), merchant(1), 300), PostHold("p", "h", amount=100)])
    assert ledger.verify().ok
    _drop_append_only_triggers(database)
    with database.transaction() as session:
        session.execute(
            text("UPDATE ledger_postings SET amount = 2000 WHERE entry_id = 'fund' AND amount > 0")
        )
    report = ledger.verify()
    kinds = {v.invariant for v in report.violations}
    assert {"zero_sum_entry", "zero_sum_global", "balance_replay"} <= kinds


def test_verify_detects_broken_limit_and_stored_balance(ledger: Ledger, database) -> None:
    ledger.submit([transfer("fund", BANK, merchant(0), 1_000)])
    with database.transaction() as session:
        session.execute(
            text("UPDATE ledger_accounts SET debits_posted = 5000 WHERE id = :id"),
            {"id": merchant(0)},
        )
    kinds = {v.invariant for v in ledger.verify().violations}
    assert kinds == {"balance_replay", "limit"}


def test_verify_detects_over_posted_hold(ledger: Ledger, database) -> None:
    ledger.submit([transfer("fund", BANK, merchant(0), 1_000)])
    ledger.submit([hold("h", merchant(0), merchant(1), 300), PostHold("p", "h", amount=100)])
    _drop_append_only_triggers(database)
    with database.transaction() as session:
        session.execute(
            text("UPDATE ledger_postings SET amount = 400 WHERE entry_id = 'p' AND amount > 0")
        )
        session.execute(
            text("UPDATE ledger_postings SET amount = -400 WHERE entry_id = 'p' AND amount < 0")
        )
    kinds = {v.invariant for v in ledger.verify().violations}
    assert "hold_post_amount" in kinds


def test_apply_joins_the_callers_transaction(ledger: Ledger, database) -> None:
    before = counts(database)
    with pytest.raises(RuntimeError), database.transaction() as session:
        ledger.post(session, transfer("rolled-back", BANK, merchant(0), 10))
        raise RuntimeError("the use case failed after posting")
    assert counts(database) == before
    assert ledger.account(BANK).balance == 0


def test_cli_verify_exit_codes(ledger: Ledger, database, db_url) -> None:
    from typer.testing import CliRunner

    from shoudan.cli.main import app

    ledger.submit([transfer("fund", BANK, merchant(0), 1_000)])
    runner = CliRunner()
    ok = runner.invoke(app, ["ledger", "verify", "--database-url", db_url])
    assert ok.exit_code == 0, ok.output
    assert "ledger OK" in ok.output
    with database.transaction() as session:
        session.execute(
            text("UPDATE ledger_accounts SET credits_posted = 1 WHERE id = :id"),
            {"id": merchant(0)},
        )
    bad = runner.invoke(app, ["ledger", "verify", "--database-url", db_url])
    assert bad.exit_code == 1
    assert "VIOLATION balance_replay" in bad.output
