"""Hypothesis drives random ledger operations against a tiny in-memory model, on SQLite and
on PostgreSQL; after every step the stored balances must equal the model's and every
invariant of ``verify`` must hold."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from shoudan.core.clock import FixedClock
from shoudan.core.errors import ErrorCode
from shoudan.ledger.domain import (
    AccountType,
    Linked,
    PostHold,
    ResultStatus,
    VoidHold,
    hold,
    transfer,
)
from shoudan.ledger.service import AccountSpec, Ledger

ACCOUNTS = 4
START = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)


@dataclass
class ModelAccount:
    limit: int | None  # max debit balance (None: no limit)
    dp: int = 0
    cp: int = 0
    dpend: int = 0
    cpend: int = 0

    def ok(self) -> bool:
        return self.limit is None or self.dp + self.dpend - self.cp <= self.limit


@dataclass
class ModelHold:
    debit: int
    credit: int
    amount: int
    expires_at: datetime | None
    resolved: bool = False


def machine_for(database):
    class LedgerMachine(RuleBasedStateMachine):
        holds = Bundle("holds")
        done = Bundle("done")

        def __init__(self) -> None:
            super().__init__()
            self.prefix = uuid.uuid4().hex[:8]
            self.clock = FixedClock(START)
            self.ledger = Ledger(database, self.clock)
            # account 0 is the unlimited source; the others may not go into debit
            self.model = [ModelAccount(None)] + [ModelAccount(0) for _ in range(ACCOUNTS - 1)]
            self.model_holds: dict[str, ModelHold] = {}
            self.entries: dict[str, object] = {}
            self.counter = 0
            self.ledger.create_accounts(
                [
                    AccountSpec(self.acct(i), AccountType.LIABILITY,
                                max_debit_balance=self.model[i].limit)
                    for i in range(ACCOUNTS)
                ]
            )  # fmt: skip

        def acct(self, i: int) -> str:
            return f"liability:{self.prefix}:{i}"

        def new_id(self) -> str:
            self.counter += 1
            return f"{self.prefix}-{self.counter}"

        # -- model ----------------------------------------------------------------------------
        def model_move(
            self, debit: int, credit: int, amount: int, pending: bool, sign: int
        ) -> bool:
            saved = [(a.dp, a.cp, a.dpend, a.cpend) for a in self.model]
            d, c = self.model[debit], self.model[credit]
            if pending:
                d.dpend += sign * amount
                c.cpend += sign * amount
            else:
                d.dp += sign * amount
                c.cp += sign * amount
            if all(a.ok() for a in self.model):
                return True
            for a, s in zip(self.model, saved, strict=True):
                a.dp, a.cp, a.dpend, a.cpend = s
            return False

        # -- rules ----------------------------------------------------------------------------
        @rule(debit=st.integers(0, ACCOUNTS - 1), credit=st.integers(0, ACCOUNTS - 1),
              amount=st.integers(1, 5_000))  # fmt: skip
        def do_transfer(self, debit: int, credit: int, amount: int) -> None:
            entry = transfer(self.new_id(), self.acct(debit), self.acct(credit), amount)
            [result] = self.ledger.submit([entry])
            if debit == credit:
                assert result.error is ErrorCode.INVALID_INPUT
                return
            expected = self.model_move(debit, credit, amount, pending=False, sign=1)
            assert result.ok == expected, result
            if not expected:
                assert result.error is ErrorCode.LIMIT_EXCEEDED
            else:
                self.entries[entry.id] = entry

        @rule(target=holds, debit=st.integers(0, ACCOUNTS - 1),
              credit=st.integers(0, ACCOUNTS - 1), amount=st.integers(1, 5_000),
              ttl=st.none() | st.integers(1, 120))  # fmt: skip
        def do_hold(self, debit: int, credit: int, amount: int, ttl: int | None) -> str:
            expires = self.clock.now() + timedelta(minutes=ttl) if ttl else None
            entry = hold(self.new_id(), self.acct(debit), self.acct(credit), amount,
                         expires_at=expires)  # fmt: skip
            [result] = self.ledger.submit([entry])
            if debit == credit:
                assert result.error is ErrorCode.INVALID_INPUT
                return entry.id
            expected = self.model_move(debit, credit, amount, pending=True, sign=1)
            assert result.ok == expected, result
            if expected:
                self.model_holds[entry.id] = ModelHold(debit, credit, amount, expires)
                self.entries[entry.id] = entry
            return entry.id

        def resolve(self, hold_id: str, posted: int | None, void: bool) -> None:
            h = self.model_holds.get(hold_id)
            request = (
                VoidHold(self.new_id(), hold_id)
                if void
                else PostHold(self.new_id(), hold_id, posted)
            )
            [result] = self.ledger.submit([request])
            if h is None:
                assert result.error is ErrorCode.HOLD_NOT_FOUND
                return
            if h.resolved:
                assert result.error is ErrorCode.HOLD_ALREADY_RESOLVED
                return
            if h.expires_at is not None and h.expires_at <= self.clock.now():
                assert result.error is ErrorCode.HOLD_EXPIRED
                return
            if posted is not None and posted > h.amount:
                assert result.error is ErrorCode.HOLD_AMOUNT_EXCEEDED
                return
            assert result.status is ResultStatus.CREATED, result
            self.model_move(h.debit, h.credit, h.amount, pending=True, sign=-1)
            if not void:
                assert self.model_move(h.debit, h.credit, posted or h.amount, False, 1)
            h.resolved = True
            self.entries[request.id] = request

        @rule(hold_id=holds, posted=st.none() | st.integers(1, 6_000))
        def do_post(self, hold_id: str, posted: int | None) -> None:
            self.resolve(hold_id, posted, void=False)

        @rule(hold_id=holds)
        def do_void(self, hold_id: str) -> None:
            self.resolve(hold_id, None, void=True)

        @rule(minutes=st.integers(1, 90))
        def advance_and_expire(self, minutes: int) -> None:
            self.clock.advance(timedelta(minutes=minutes))
            now = self.clock.now()
            due = [
                h for h in self.model_holds.values()
                if not h.resolved and h.expires_at is not None and h.expires_at <= now
            ]  # fmt: skip
            self.ledger.expire_due_holds()
            for h in due:
                self.model_move(h.debit, h.credit, h.amount, pending=True, sign=-1)
                h.resolved = True

        @rule(data=st.data())
        def retry_same_id(self, data: st.DataObject) -> None:
            if not self.entries:
                return
            entry_id = data.draw(st.sampled_from(sorted(self.entries)))
            [result] = self.ledger.submit([self.entries[entry_id]])  # type: ignore[list-item]
            assert result.status is ResultStatus.EXISTS, result

        @rule(data=st.data())
        def reuse_id_with_other_content(self, data: st.DataObject) -> None:
            if not self.entries:
                return
            entry_id = data.draw(st.sampled_from(sorted(self.entries)))
            other = transfer(entry_id, self.acct(0), self.acct(1), 999_999_999)
            [result] = self.ledger.submit([other])
            assert result.error is ErrorCode.ENTRY_ID_CONFLICT

        @rule(amount=st.integers(1, 3_000), bad_position=st.integers(0, 2))
        def linked_with_failing_member(self, amount: int, bad_position: int) -> None:
            members = [
                transfer(self.new_id(), self.acct(1), self.acct(0), amount),
                transfer(self.new_id(), self.acct(0), self.acct(2), amount),
                transfer(self.new_id(), self.acct(2), self.acct(3), amount),
            ]
            # this member can never pass: it overdraws account 3 by far more than exists
            members[bad_position] = transfer(self.new_id(), self.acct(3), self.acct(0), 10**12)
            results = self.ledger.submit([Linked(tuple(members))])
            assert all(r.status is ResultStatus.FAILED for r in results)
            # the first member that fails carries the reason (it may come before the bad one);
            # every other member says the group failed
            errors = [r.error for r in results]
            first = errors.index(ErrorCode.LIMIT_EXCEEDED)
            assert first <= bad_position
            assert errors.count(ErrorCode.LINKED_ENTRY_FAILED) == len(members) - 1

        # -- invariants -----------------------------------------------------------------------
        @invariant()
        def balances_match_model(self) -> None:
            for i, expected in enumerate(self.model):
                view = self.ledger.account(self.acct(i))
                stored = (view.debits_posted, view.credits_posted, view.debits_pending,
                          view.credits_pending)  # fmt: skip
                assert stored == (expected.dp, expected.cp, expected.dpend, expected.cpend)

        @invariant()
        def ledger_verifies(self) -> None:
            report = self.ledger.verify()
            assert report.ok, report.violations

    return LedgerMachine


@pytest.mark.slow
def test_ledger_against_model(database) -> None:
    run_state_machine_as_test(
        machine_for(database),
        settings=settings(
            max_examples=15,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
