"""Ledger use cases: create accounts, submit batches of entries, expire holds, read balances.

``Ledger.apply(session, items)`` runs inside a caller's transaction (a payment, a refund, a
settlement posts its entries in the same transaction as its own rows). ``Ledger.submit(items)``
owns a transaction and retries it when PostgreSQL reports a lost race (serialization failure,
deadlock, or a concurrent insert of the same entry id): the retry then finds the winner's row
and answers ``exists``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from shoudan.core.clock import Clock, SystemClock
from shoudan.core.db import Database, DriverSQL
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.money import CURRENCIES
from shoudan.ledger.domain import (
    MAX_ACCOUNT_ID_LENGTH,
    AccountType,
    BatchItem,
    Engine,
    EntryResult,
    ExpireHold,
    Refusal,
    accounts_of,
    check_all,
    entry_ids_of,
    hold_ids_of,
)
from shoudan.ledger.export import write_beancount
from shoudan.ledger.invariants import VerifyReport, verify
from shoudan.ledger.models import LedgerAccount
from shoudan.ledger.repository import LedgerRepository

log = logging.getLogger(__name__)

MAX_BATCH = 8_190  # as TigerBeetle: one request, one commit, bounded work
MAX_RETRIES = 5


@dataclass(frozen=True, slots=True)
class AccountSpec:
    id: str
    type: AccountType
    currency: str = "CNY"
    name: str = ""
    owner_type: str | None = None
    owner_id: str | None = None
    max_debit_balance: int | None = None
    max_credit_balance: int | None = None


@dataclass(frozen=True, slots=True)
class AccountView:
    id: str
    type: AccountType
    currency: str
    name: str
    owner_type: str | None
    owner_id: str | None
    max_debit_balance: int | None
    max_credit_balance: int | None
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int

    @property
    def balance(self) -> int:
        """Posted debit balance (debits − credits). A liability in credit shows negative."""
        return self.debits_posted - self.credits_posted

    @property
    def credit_balance(self) -> int:
        """Posted credit balance (credits − debits): what a liability or revenue holds."""
        return self.credits_posted - self.debits_posted


def _check_spec(spec: AccountSpec) -> None:
    if not isinstance(spec.id, str) or not spec.id.strip() or len(spec.id) > MAX_ACCOUNT_ID_LENGTH:
        raise DomainError(ErrorCode.INVALID_INPUT, f"bad account id {spec.id!r}")
    try:
        AccountType(spec.type)
    except ValueError:
        raise DomainError(ErrorCode.INVALID_INPUT, f"unknown account type {spec.type!r}") from None
    if spec.currency not in CURRENCIES:
        raise DomainError(ErrorCode.INVALID_CURRENCY, f"unsupported currency {spec.currency!r}")
    for limit in (spec.max_debit_balance, spec.max_credit_balance):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise DomainError(ErrorCode.INVALID_AMOUNT, "balance limits are integer fen")
        if limit is not None and limit < 0:
            raise DomainError(ErrorCode.INVALID_AMOUNT, "balance limits cannot be negative")


def _limit(value: Any) -> int | None:
    return None if value is None else int(value)


def _view(row: LedgerAccount) -> AccountView:
    return AccountView(
        row.id, AccountType(row.type), row.currency, row.name, row.owner_type, row.owner_id,
        row.max_debit_balance, row.max_credit_balance, row.debits_posted, row.credits_posted,
        row.debits_pending, row.credits_pending,
    )  # fmt: skip


class Ledger:
    def __init__(self, database: Database, clock: Clock | None = None) -> None:
        self.database = database
        self.clock = clock or SystemClock()

    # -- accounts ------------------------------------------------------------------------------
    def create_accounts(self, specs: Sequence[AccountSpec]) -> None:
        with self.database.transaction() as session:
            self.ensure_accounts(session, specs)

    def ensure_accounts(self, session: Session, specs: Sequence[AccountSpec]) -> None:
        """Create accounts; an existing account with the same definition is fine (idempotent),
        one with a different definition is refused with ``account_conflict``."""
        for spec in specs:
            _check_spec(spec)
        ids = [spec.id for spec in specs]
        if len(set(ids)) != len(ids):
            raise DomainError(ErrorCode.INVALID_INPUT, "the same account id appears twice")
        # Driver statements: every first refund of a payment comes here (docs/benchmarks.md).
        driver = DriverSQL(session)
        marks = ", ".join("?" * len(ids))
        existing = {
            row[0]: row[1:]
            for row in driver.execute(
                "SELECT id, type, currency, owner_type, owner_id, max_debit_balance,"
                f" max_credit_balance FROM ledger_accounts WHERE id IN ({marks})",
                ids,
            )
        } if ids else {}  # fmt: skip
        now = self.clock.now()
        for spec in specs:
            stored = existing.get(spec.id)
            if stored is None:
                driver.insert(
                    LedgerAccount,
                    {
                        "id": spec.id, "type": AccountType(spec.type).value,
                        "currency": spec.currency, "name": spec.name,
                        "owner_type": spec.owner_type, "owner_id": spec.owner_id,
                        "max_debit_balance": spec.max_debit_balance,
                        "max_credit_balance": spec.max_credit_balance, "debits_posted": 0,
                        "credits_posted": 0, "debits_pending": 0, "credits_pending": 0,
                        "created_at": now,
                    },
                )  # fmt: skip
                continue
            wanted = (
                AccountType(spec.type).value, spec.currency, spec.owner_type, spec.owner_id,
                spec.max_debit_balance, spec.max_credit_balance,
            )  # fmt: skip
            if tuple(stored[:4]) + tuple(
                None if v is None else int(v) for v in stored[4:]
            ) != wanted:
                raise DomainError(
                    ErrorCode.ACCOUNT_CONFLICT,
                    f"account {spec.id} exists with a different definition",
                )

    def account(self, account_id: str) -> AccountView:
        with self.database.read() as session:
            return self.get_account(session, account_id)

    def get_account(self, session: Session, account_id: str) -> AccountView:
        found = self.get_accounts(session, [account_id])
        if account_id not in found:
            raise DomainError(ErrorCode.ACCOUNT_NOT_FOUND, f"account {account_id} not found")
        return found[account_id]

    def get_accounts(self, session: Session, account_ids: Sequence[str]) -> dict[str, AccountView]:
        """The accounts among ``account_ids`` that exist, with their balances as of now (in
        this transaction), in one driver statement."""
        if not account_ids:
            return {}
        rows = DriverSQL(session).execute(
            "SELECT id, type, currency, name, owner_type, owner_id, max_debit_balance,"
            " max_credit_balance, debits_posted, credits_posted, debits_pending, credits_pending"
            f" FROM ledger_accounts WHERE id IN ({', '.join('?' * len(account_ids))})",
            list(account_ids),
        )
        return {
            row[0]: AccountView(
                row[0], AccountType(row[1]), row[2], row[3], row[4], row[5],
                _limit(row[6]), _limit(row[7]),
                int(row[8]), int(row[9]), int(row[10]), int(row[11]),
            )
            for row in rows
        }  # fmt: skip

    def accounts(self, session: Session) -> list[AccountView]:
        return [_view(r) for r in session.scalars(select(LedgerAccount).order_by(LedgerAccount.id))]

    # -- entries -------------------------------------------------------------------------------
    def submit(
        self, items: Sequence[BatchItem], checked: dict[int, str | Refusal] | None = None
    ) -> list[EntryResult]:
        """Apply a batch in its own transaction; each entry gets its own result.

        A lost race (a concurrent insert of the same entry id, a deadlock, a serialization
        failure) is retried: the retry then sees the winner's rows and answers ``exists``.
        ``checked`` (from ``check_all``) lets a caller validate outside the transaction."""
        if checked is None:
            checked = check_all(items)
        for attempt in range(1, MAX_RETRIES + 1):
            try:
                # straight on the driver connection: an ORM session would cost more than a
                # single-entry commit itself (docs/benchmarks.md)
                with self.database.driver_transaction() as raw:
                    repo = LedgerRepository(raw, self.database.dialect)
                    try:
                        return self._apply(repo, items, checked)
                    finally:
                        # here, while the connection is ours: a cursor freed after the pool
                        # has it back resets a statement another thread may be running
                        # (core/db.py, _close_driver_cursors_on_checkin)
                        repo.cursor.close()
            except Exception as error:
                if attempt == MAX_RETRIES or not self.database.is_retryable(error):
                    raise
                log.info("ledger batch lost a race (attempt %d): retrying: %s", attempt, error)
        raise AssertionError("unreachable")  # pragma: no cover

    def post(self, session: Session | Connection, item: BatchItem) -> list[EntryResult]:
        """Apply one entry (or one linked group) in the caller's transaction; a refusal
        raises ``DomainError`` with the reason of the entry that failed."""
        return self.post_all(session, [item])

    def post_all(
        self, session: Session | Connection, items: Sequence[BatchItem]
    ) -> list[EntryResult]:
        """Apply entries in the caller's transaction in one batch (one account lock, one
        write); a refusal of any raises ``DomainError`` with its reason, and the caller rolls
        back (the others may have been written)."""
        results = self.apply(session, items)
        failed = [r for r in results if r.error is not None]
        if failed:
            cause = next((r for r in failed if r.error is not ErrorCode.LINKED_ENTRY_FAILED), None)
            (cause or failed[0]).raise_for_error()
        return results

    def apply(self, session: Session | Connection, items: Sequence[BatchItem]) -> list[EntryResult]:
        """Apply a batch inside the caller's transaction. Nothing of a failed entry is written;
        the caller decides whether the others commit."""
        return self._apply(LedgerRepository.of(session), items)

    def _apply(
        self,
        repo: LedgerRepository,
        items: Sequence[BatchItem],
        checked: dict[int, str | Refusal] | None = None,
    ) -> list[EntryResult]:
        count = sum(len(i.entries) if hasattr(i, "entries") else 1 for i in items)
        if count > MAX_BATCH:
            raise DomainError(ErrorCode.INVALID_INPUT, f"a batch holds at most {MAX_BATCH} entries")
        now = self.clock.now()
        hold_ids = hold_ids_of(items)
        holds = repo.holds(hold_ids) if hold_ids else {}
        account_ids = accounts_of(items)
        for held in holds.values():
            account_ids.update(p.account_id for p in held.postings)
        accounts = repo.lock_accounts(account_ids)
        if hold_ids and not repo.is_sqlite:
            holds = repo.holds(hold_ids)  # re-read under the account locks: latest resolutions
        existing = repo.existing_entries(entry_ids_of(items))
        before = {account_id: state.snapshot() for account_id, state in accounts.items()}
        outcome = Engine(accounts, holds, existing, now, checked).run(items)
        changed = [a for a in accounts.values() if a.snapshot() != before[a.id]]
        repo.write(outcome.rows, changed, now)
        return outcome.results

    # -- checks and exports --------------------------------------------------------------------
    def verify(self) -> VerifyReport:
        with self.database.read() as session:
            return verify(session)

    def export_beancount(self, out: TextIO) -> int:
        with self.database.read() as session:
            return write_beancount(session, out)

    # -- holds ---------------------------------------------------------------------------------
    def expire_due_holds(self, limit: int = 1_000) -> int:
        """Void every hold whose deadline has passed; safe to run from several workers."""
        expired = 0
        while True:
            with self.database.transaction() as session:
                due = LedgerRepository.of(session).due_holds(self.clock.now(), limit)
                if not due:
                    return expired
                results = self.apply(session, [ExpireHold(hold_id) for hold_id in due])
            expired += sum(1 for r in results if r.status == "created")
            if len(due) < limit:
                return expired


def expire_due_holds(database: Database, clock: Clock | None = None) -> int:
    """Worker hook: expire the holds that are due."""
    return Ledger(database, clock).expire_due_holds()

