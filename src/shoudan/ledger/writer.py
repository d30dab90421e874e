"""Group commit: many callers, one writer, one commit for everything that arrived meanwhile.

SQLite has one writer and PostgreSQL pays a WAL flush per commit; either way a commit costs
far more than the entries in it. ``GroupCommitWriter`` lets many threads submit small batches
(a terminal's single sale, an API refund) and commits whatever queued up while the previous
commit was flushing, as one transaction — the way TigerBeetle batches client requests.

Each caller still gets exactly the results its own entries would have had on their own:
results are per entry, and a linked group only ever fails together with its own members.
Callers validate and fingerprint their entries in their own thread (``check_all``) before
queueing, so that work overlaps the writer's I/O. A caller returns only after the commit
that holds its entries is durable.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from shoudan.ledger.domain import BatchItem, EntryResult, Linked, Refusal, check_all
from shoudan.ledger.service import MAX_BATCH, Ledger

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Request:
    items: Sequence[BatchItem]
    checked: dict[int, str | Refusal]
    size: int
    future: Future[list[EntryResult]]


def _size(items: Sequence[BatchItem]) -> int:
    return sum(len(item.entries) if isinstance(item, Linked) else 1 for item in items)


class GroupCommitWriter:
    def __init__(self, ledger: Ledger, max_entries: int = MAX_BATCH) -> None:
        self.ledger = ledger
        self.max_entries = max_entries
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()
        self.commits = 0  # for benchmarks and tests: how many transactions were needed

    def submit(self, items: Sequence[BatchItem]) -> list[EntryResult]:
        """Queue a batch and wait until it is committed; returns its per-entry results."""
        if self._closed:
            raise RuntimeError("the ledger writer is closed")
        size = _size(items)
        if size > self.max_entries:
            return self.ledger.submit(items)  # too big to share a commit: on its own
        request = _Request(items, check_all(items), size, Future())
        self._queue.put(request)
        return request.future.result()

    def close(self) -> None:
        """Finish what is queued, then stop the writer thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    def __enter__(self) -> GroupCommitWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- the writer thread -----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group, stop = [first], False
            total = first.size
            while total < self.max_entries:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                if total + nxt.size > self.max_entries:
                    self._commit(group)
                    group, total = [], 0
                group.append(nxt)
                total += nxt.size
            self._commit(group)
            if stop:
                return

    def _commit(self, group: list[_Request]) -> None:
        if not group:
            return
        items = [item for request in group for item in request.items]
        checked: dict[int, str | Refusal] = {}
        for request in group:
            checked.update(request.checked)
        try:
            results = self.ledger.submit(items, checked)
            self.commits += 1
        except Exception as error:
            if len(group) == 1:
                group[0].future.set_exception(error)
                return
            # one request broke the shared transaction: give every request its own, so the
            # failure stays with the request that caused it
            log.exception("group commit of %d requests failed; retrying one by one", len(group))
            for request in group:
                self._commit([request])
            return
        start = 0
        for request in group:
            request.future.set_result(results[start : start + request.size])
            start += request.size

