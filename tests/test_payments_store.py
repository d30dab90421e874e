"""The payment path's driver-level SQL (payments/store.py, core.db.DriverSQL): rows stored as
the ORM would store them, driver errors as SQLAlchemy's, counters and totals in one statement
each, and the ``also`` hook that commits with the payment (the gateway's journal row)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from shoudan.auth.domain import Principal, Role
from shoudan.channels.domain import ChannelResult
from shoudan.core.db import Database, DriverSQL
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.ledger.models import LedgerEntry
from shoudan.notifications.models import OutboxEvent
from shoudan.payments.domain import EntryMode, Method
from shoudan.payments.models import Payment, PaymentStatusChange, RrnCounter
from shoudan.payments.service import CardInput, PaymentRequest, upstream_reference_of
from shoudan.payments.store import (
    PAYMENT_COLUMNS,
    RRN_SEQUENCE_SIZE,
    advance_rrn,
    count,
    day_totals,
    draw_rrn_numbers,
)
from tests.payments_world import DEBIT, NOW, PIN, World, build_world, check_day_totals


@pytest.fixture
def world(database, tmp_path):
    world = build_world(database, tmp_path)
    yield world
    assert world.container.ledger.verify().ok


def _request(world: World, amount: int = 10_000, key: str | None = None) -> PaymentRequest:
    card = CardInput(DEBIT, "2912", EntryMode.CHIP, PIN)
    return PaymentRequest(world.terminal_a, amount, Method.CARD, card=card, idempotency_key=key)


def _principal(world: World) -> Principal:
    return Principal("k", Role.MERCHANT, world.merchant_a)


def test_a_payment_is_returned_exactly_as_it_is_stored(world: World) -> None:
    payment = world.container.payments.create(_principal(world), _request(world))
    with world.container.database.read() as session:
        stored = session.get(Payment, payment.id)
        history = session.scalars(
            select(PaymentStatusChange).where(PaymentStatusChange.payment_id == payment.id)
        ).one()
    assert stored is not None
    assert {c: getattr(stored, c) for c in PAYMENT_COLUMNS} == {
        c: getattr(payment, c) for c in PAYMENT_COLUMNS
    }
    assert stored.created_at == NOW and stored.created_at.tzinfo is not None
    assert stored.prepayment is False and stored.redeemed_amount == 0
    assert (history.from_status, history.to_status, history.created_at) == (None, "captured", NOW)
    check_day_totals(world)


def test_driver_errors_are_sqlalchemy_errors(world: World) -> None:
    with pytest.raises(IntegrityError), world.container.database.transaction() as session:
        driver = DriverSQL(session)
        driver.insert(RrnCounter, {"business_date": "2026-01-01", "last_value": 1})
        driver.insert(RrnCounter, {"business_date": "2026-01-01", "last_value": 2})
    with world.container.database.read() as session:
        assert session.get(RrnCounter, "2026-01-01") is None  # rolled back as a whole


def test_rrn_counter_and_running_totals_in_one_statement_each(world: World) -> None:
    payment = Payment(business_date="2026-01-02", merchant_id=world.merchant_a, card_token="tok")
    with world.container.database.transaction() as session:
        driver = DriverSQL(session)
        assert advance_rrn(driver, "2026-01-02", 0) == 0  # created, only locked
        assert [advance_rrn(driver, "2026-01-02", 1) for _ in range(3)] == [1, 2, 3]
        assert count(driver, payment, 500) == (500, 500)
        assert count(driver, payment, -200) == (300, 300)
        assert day_totals(driver, "tok", world.merchant_a, "2026-01-02") == (300, 300)
        assert day_totals(driver, None, world.merchant_a, "2026-01-02") == (0, 300)
        assert day_totals(driver, "other", world.merchant_b, "2026-01-02") == (0, 0)


def test_rrn_numbers_are_distinct_and_wrap_within_their_seven_digits(world: World) -> None:
    """SQLite: the day's counter. PostgreSQL: a sequence, no day-wide row lock (payments of
    different merchants commit side by side); at the end of the 7 digits it wraps to 1."""
    database = world.container.database
    with database.transaction() as session:
        driver = DriverSQL(session)
        first = draw_rrn_numbers(driver, "2026-01-03", 3)
    assert first == [first[0], first[0] + 1, first[0] + 2]
    assert all(1 <= n <= RRN_SEQUENCE_SIZE for n in first)
    if database.dialect == "sqlite":
        assert first == [1, 2, 3]  # the day's own counter
        return
    with database.transaction() as session:
        driver = DriverSQL(session)
        driver.execute(f"SELECT setval('payment_rrn_seq', {RRN_SEQUENCE_SIZE - 1})")
        assert draw_rrn_numbers(driver, "2026-01-03", 3) == [
            RRN_SEQUENCE_SIZE, 1, 2
        ]


def test_payments_of_two_merchants_do_not_wait_for_each_other(world: World) -> None:
    """With one merchant's payment open (its write transaction holding its rows), another
    merchant's payment still commits: nothing day-wide is locked. (On SQLite one writer at a
    time is the design: PostgreSQL only.)"""
    database = world.container.database
    if database.dialect == "sqlite":
        pytest.skip("SQLite has one writer at a time")
    a = Payment(business_date="2026-01-04", merchant_id=world.merchant_a, card_token="tok-a")
    b = Payment(business_date="2026-01-04", merchant_id=world.merchant_b, card_token="tok-b")
    with database.transaction() as first:
        driver = DriverSQL(first)
        draw_rrn_numbers(driver, "2026-01-04", 1)
        count(driver, a, 100)
        other = Database(database.url)  # another connection, its own transaction
        try:
            with other.transaction() as second:
                theirs = DriverSQL(second)
                theirs.execute("SET LOCAL lock_timeout = '2s'")  # a wait would fail the test
                assert draw_rrn_numbers(theirs, "2026-01-04", 1)[0] >= 1
                assert count(theirs, b, 50) == (50, 50)  # committed while ours is open
        finally:
            other.dispose()


def _note_row(key: str, payment: Payment) -> dict[str, object]:
    """An outbox row naming the payment: what ``also`` writes with it in this test."""
    return {
        "id": f"evt_note_{key}", "topic": "system.ping", "payload": f'{{"rrn":"{payment.rrn}"}}',
        "dedupe_key": f"note:{key}", "status": "pending", "attempts": 0,
        "next_attempt_at": NOW, "locked_by": None, "locked_until": None, "last_error": None,
        "created_at": NOW, "delivered_at": None,
    }  # fmt: skip


def test_also_commits_with_the_payment_and_a_failure_undoes_both(world: World, monkeypatch) -> None:
    payments = world.container.payments
    reversed_upstream: list[str] = []
    reverse = payments.channel.reverse
    monkeypatch.setattr(
        payments.channel, "reverse", lambda ref: reversed_upstream.append(ref) or reverse(ref)
    )
    seen: list[str] = []

    def note(payment: Payment) -> tuple[type[OutboxEvent], dict[str, object]]:
        seen.append(f"before: {payment.status} {payment.rrn}")  # complete before the write
        return OutboxEvent, _note_row("k-1", payment)

    first = payments.create(_principal(world), _request(world, key="k-1"), also=note)
    assert seen == [f"before: captured {first.rrn}"]
    with world.container.database.read() as session:
        row = session.get(OutboxEvent, "evt_note_k-1")
    assert row is not None and row.payload == f'{{"rrn":"{first.rrn}"}}'  # committed with it
    assert reversed_upstream == []

    def boom(payment: Payment) -> tuple[type[OutboxEvent], dict[str, object]]:
        return OutboxEvent, _note_row("k-1", payment)  # its id is taken: the insert fails

    with pytest.raises(IntegrityError):
        payments.create(_principal(world), _request(world, key="k-2"), also=boom)
    with world.container.database.read() as session:
        ids = set(session.scalars(select(Payment.id)))
    assert ids == {first.id}  # nothing of the second payment stayed…
    assert len(reversed_upstream) == 1  # …and the network gave its money back
    # a retry of a recorded payment is answered without running ``also`` again
    again = payments.create(_principal(world), _request(world, key="k-1"), also=boom)
    assert again.id == first.id
    check_day_totals(world)


def test_also_writes_with_a_completion_and_a_void_in_their_transaction(world: World) -> None:
    """The gateway journals a completion or a void with it: the hook writes in the transaction
    that records the change, after it, and a failure there undoes the change with it."""
    payments, principal = world.container.payments, _principal(world)
    preauth = payments.create(principal, replace(_request(world, key="pa"), capture=False))
    seen: list[str] = []

    def note(key: str) -> Callable[[DriverSQL, Payment], None]:
        def write(driver: DriverSQL, payment: Payment) -> None:
            seen.append(f"{key}: {payment.status}")  # called with the change made
            driver.insert(OutboxEvent, _note_row(key, payment))

        return write

    payments.create(principal, _request(world, key="other"), also=lambda p: (
        OutboxEvent, _note_row("taken", p)
    ))  # fmt: skip
    with pytest.raises(IntegrityError):  # its row's id is taken: refused with the capture
        payments.capture(principal, preauth.id, 9_000, also=note("taken"))
    assert payments.get(principal, preauth.id).status == "authorized"  # undone with its row

    captured = payments.capture(principal, preauth.id, 9_000, also=note("capture"))
    assert captured.status == "captured" and captured.captured_amount == 9_000
    with pytest.raises(IntegrityError):
        payments.void(principal, captured.id, also=note("taken"))
    assert payments.get(principal, captured.id).status == "captured"
    voided = payments.void(principal, captured.id, also=note("void"))
    assert voided.status == "voided"
    with world.container.database.read() as session:
        notes = set(
            session.scalars(select(OutboxEvent.id).where(OutboxEvent.id.like("evt_note_%")))
        )
    assert notes == {"evt_note_taken", "evt_note_capture", "evt_note_void"}
    assert seen == ["taken: captured", "capture: captured", "taken: voided", "void: voided"]
    check_day_totals(world)


def test_a_reversed_void_captures_again_and_a_second_void_has_its_own_entry_and_event(
    world: World,
) -> None:
    payments, principal = world.container.payments, _principal(world)
    sale = payments.create(principal, _request(world, key="s"))
    payments.void(principal, sale.id)
    restored = payments.reverse_void(principal, sale.id)
    assert (restored.status, restored.voided_at) == ("captured", None)
    assert payments.reverse_void(principal, sale.id).status == "captured"  # idempotent
    check_day_totals(world)  # counted again
    payments.void(principal, sale.id)
    with world.container.database.read() as session:
        events = list(session.scalars(
            select(OutboxEvent.topic).where(OutboxEvent.dedupe_key.like(f"{sale.id}:%"))
            .order_by(OutboxEvent.created_at, OutboxEvent.id)
        ))  # fmt: skip
        history = list(session.scalars(
            select(PaymentStatusChange.to_status).where(PaymentStatusChange.payment_id == sale.id)
            .order_by(PaymentStatusChange.id)
        ))  # fmt: skip
    assert events.count("payment.voided") == 2 and events.count("payment.captured") >= 1
    assert history == ["captured", "voided", "captured", "voided"]

    preauth = payments.create(principal, replace(_request(world, key="p"), capture=False))
    payments.void(principal, preauth.id)
    assert payments.reverse_void(principal, preauth.id).status == "authorized"  # a new hold
    completed = payments.capture(principal, preauth.id, 10_000)
    assert payments.reverse_completion(principal, completed.id).status == "authorized"
    assert payments.reverse_completion(principal, completed.id).status == "authorized"  # again
    with world.container.database.read() as session:
        entries = set(session.scalars(
            select(LedgerEntry.id).where(LedgerEntry.id.like(f"pay:{preauth.id}:%"))
        ))  # fmt: skip
    assert entries == {f"pay:{preauth.id}:{name}" for name in (
        "auth", "void", "auth-2", "auth-2-release", "capture-2", "completion-reversal-2",
        "auth-3",
    )}  # fmt: skip
    with pytest.raises(DomainError):  # a sale has no completion to undo
        payments.reverse_completion(principal, payments.create(principal, _request(world)).id)
    reversed_sale = payments.reverse(principal, payments.create(principal, _request(world)).id)
    with pytest.raises(DomainError):  # no void to undo
        payments.reverse_void(principal, reversed_sale.id)
    check_day_totals(world)


def refused_over_the_limit(world: World, voided: Payment) -> None:
    """``reverse_void`` refused by the day's limit: voided in our books and at the network."""
    payments = world.container.payments
    with pytest.raises(DomainError) as refused:
        payments.reverse_void(_principal(world), voided.id)
    assert refused.value.code is ErrorCode.LIMIT_EXCEEDED
    assert payments.get(_principal(world), voided.id).status == "voided"
    network = payments.channel.query(upstream_reference_of(voided))
    assert network is not None and network.state == "voided"
    check_day_totals(world)


def test_a_void_is_not_undone_beyond_the_days_limits_nor_on_a_later_day(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the void freed may be spent since: the card's ¥200,000 a day holds, and the
    network is put back as our books stay (voided there too)."""
    payments, principal = world.container.payments, _principal(world)
    sales = [payments.create(principal, _request(world, 5_000_000)) for _ in range(4)]
    payments.void(principal, sales[0].id)
    assert payments.create(principal, _request(world, 5_000_000)).status == "captured"
    refused_over_the_limit(world, sales[0])

    # spent while the network restores it: refused at the write, voided there again
    payments.void(principal, sales[1].id)
    restore = payments.channel.reverse_void

    def meanwhile_a_sale(reference: str) -> ChannelResult:
        result = restore(reference)
        assert payments.create(principal, _request(world, 5_000_000)).status == "captured"
        return result

    monkeypatch.setattr(payments.channel, "reverse_void", meanwhile_a_sale)
    refused_over_the_limit(world, sales[1])
    monkeypatch.undo()

    payments.void(principal, sales[2].id)
    world.clock.advance(timedelta(days=1))
    with pytest.raises(DomainError) as late:
        payments.reverse_void(principal, sales[2].id)
    assert late.value.code is ErrorCode.INVALID_TRANSITION
    check_day_totals(world)


def test_a_completion_reversal_refused_at_the_write_is_completed_upstream_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The day ends while the network undoes the completion: our books keep it captured, and
    the network is made to agree; completed again, the second capture has its own event."""
    payments, principal = world.container.payments, _principal(world)
    preauth = payments.create(principal, replace(_request(world, key="p"), capture=False))
    payments.capture(principal, preauth.id, 9_000)
    undo = payments.channel.reverse_completion

    def at_midnight(reference: str) -> ChannelResult:
        result = undo(reference)
        world.clock.advance(timedelta(days=1))
        return result

    monkeypatch.setattr(payments.channel, "reverse_completion", at_midnight)
    with pytest.raises(DomainError) as refused:
        payments.reverse_completion(principal, preauth.id)
    assert refused.value.code is ErrorCode.INVALID_TRANSITION
    monkeypatch.undo()
    assert payments.get(principal, preauth.id).status == "captured"
    network = payments.channel.query(upstream_reference_of(preauth))
    assert network is not None and network.state == "captured"
    check_day_totals(world)


def test_a_pre_auth_completed_twice_sends_two_captured_events(world: World) -> None:
    payments, principal = world.container.payments, _principal(world)
    preauth = payments.create(principal, replace(_request(world, key="p"), capture=False))
    payments.capture(principal, preauth.id, 9_000)
    payments.reverse_completion(principal, preauth.id)
    payments.capture(principal, preauth.id, 8_000)
    with world.container.database.read() as session:
        keys = list(session.scalars(
            select(OutboxEvent.dedupe_key).where(OutboxEvent.topic == "payment.captured")
            .where(OutboxEvent.dedupe_key.like(f"{preauth.id}:%"))
        ))  # fmt: skip
    assert sorted(keys) == [f"{preauth.id}:capture-2", f"{preauth.id}:captured"]
    check_day_totals(world)


def test_rrn_numbers_are_drawn_ahead_in_blocks_and_never_repeat(world: World) -> None:
    """A payment's RRN is known before its write turn: each process draws RRN_BLOCK numbers
    at a time, committed before it uses them. Two processes (two services here) interleave
    without a repeat; numbers a process never used are a gap, never reused."""
    from shoudan.payments.models import RrnCounter
    from shoudan.payments.service import RRN_BLOCK, _RrnNumbers

    database = world.container.database
    first, second = _RrnNumbers(database), _RrnNumbers(database)
    ours = [first.next("2026-02-01") for _ in range(3)]
    theirs = [second.next("2026-02-01") for _ in range(3)]
    ours += [first.next("2026-02-01") for _ in range(RRN_BLOCK)]  # into a third block
    assert len(set(ours + theirs)) == len(ours + theirs)
    assert all(1 <= n <= RRN_SEQUENCE_SIZE for n in ours + theirs)
    if database.dialect != "sqlite":
        return
    assert ours[:3] == [1, 2, 3] and theirs == [RRN_BLOCK + 1, RRN_BLOCK + 2, RRN_BLOCK + 3]
    assert ours[-1] == 2 * RRN_BLOCK + 3  # after its first block, the next one free
    assert first.next("2026-02-02") == 1  # a new business day: its own counter
    with database.read() as session:  # the blocks are committed before any number is used
        assert session.get(RrnCounter, "2026-02-01").last_value == 3 * RRN_BLOCK


def test_threads_short_of_rrns_wait_for_one_draw(world: World) -> None:
    """Found by review: every thread that found the block empty drew a block of its own (16
    threads, 16,000 numbers drawn for 16 payments), a herd at start and each new day."""
    from concurrent.futures import ThreadPoolExecutor

    from shoudan.payments.models import RrnCounter
    from shoudan.payments.service import RRN_BLOCK, _RrnNumbers

    database = world.container.database
    numbers = _RrnNumbers(database)
    start = threading.Barrier(16)

    def draw(_: int) -> int:
        start.wait()
        return numbers.next("2026-02-03")

    with ThreadPoolExecutor(max_workers=16) as pool:
        drawn = list(pool.map(draw, range(16)))
    assert len(set(drawn)) == 16
    if database.dialect == "sqlite":
        assert sorted(drawn) == list(range(1, 17))
        with database.read() as session:
            assert session.get(RrnCounter, "2026-02-03").last_value == RRN_BLOCK  # one draw
