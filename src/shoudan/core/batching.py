"""Concurrent writes of the same kind written together, just before their group commits.

On SQLite a process's write transactions run one after another inside one database
transaction, each in its own savepoint, and commit together (group commit, core/db.py). For
the busiest write — a new payment, about fifteen statements — the per-transaction work (its
savepoint, the ledger reading and updating the same accounts, a statement per row) was most
of the write turn, which is the one thing all processes share (docs/benchmarks.md).

``BatchWriter.write(item)`` joins the open group in the writer's queue like any write
transaction, but opens no transaction of its own (its savepoint's bookkeeping alone cost a
tenth of a gateway sale's CPU): it only leaves its item there. Just before the group
commits, ``write_many`` writes every item the group holds in one go (one statement per table
where it can, the ledger's accounts read and updated once), and each caller gets its own
result once the commit is done. Nobody waits for more items than group commit already
gathers.

One item's refusal must not fail its neighbours: ``write_many`` runs in a savepoint, and when
it raises (anything, ``BaseException`` included), each of its items is written again alone,
by its own caller, after the commit (``write_many`` with one item, in a transaction of its
own); only the item at fault gets the error. An item alone in its group gets its error at
once. Called inside a transaction already open, ``write`` writes its item in it at once.

On PostgreSQL, whose write transactions run side by side and commit on their own, there is
no group to join: every caller writes its item in its own transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy.orm import Session

from shoudan.core.db import Database

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False, slots=True)
class _Entry(Generic[T, R]):
    item: T
    result: R | None = None
    written: bool = False
    error: BaseException | None = None
    alone: bool = False  # its batch failed: its caller writes it again, alone


class BatchWriter(Generic[T, R]):
    def __init__(
        self, database: Database, write_many: Callable[[Session, Sequence[T]], list[R]]
    ) -> None:
        self._database = database
        self._write_many = write_many

    def write(self, item: T) -> R:
        """Write ``item`` and return its result once the transaction that holds it has
        committed; its own error if it is refused."""
        if not self._database.groups_writes or self._database.in_transaction():
            # no group to join, or the caller's own transaction: written in it, now, so that
            # it commits or rolls back with the caller's work
            return self._alone(item)
        entry: _Entry[T, R] = _Entry(item)
        self._database.before_commit(self, self._flush, entry)  # returns after the commit
        if entry.error is not None:
            raise entry.error
        if entry.alone:
            return self._alone(item)
        assert entry.written
        return entry.result  # type: ignore[return-value]

    def _alone(self, item: T) -> R:
        with self._database.transaction() as session:
            return self._write_many(session, [item])[0]

    def _flush(self, session: Session, entries: list[_Entry[T, R]]) -> None:
        """Just before the group commits, holding its writer lock: every item at once."""
        savepoint = session.begin_nested()
        try:
            results = self._write_many(session, [entry.item for entry in entries])
            savepoint.commit()
        except BaseException as error:  # even one that is not an Exception: its own caller's
            savepoint.rollback()
            if len(entries) == 1:
                entries[0].error = error
            for entry in entries:
                entry.alone = True
            return
        for entry, result in zip(entries, results, strict=True):
            entry.result, entry.written = result, True
