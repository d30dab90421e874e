"""Child process for ``tests/test_ledger_crash.py``: posts ledger batches until killed.

Usage: ``python tests/crash_child.py DATABASE_URL PREFIX [BATCH]``

The database must already be migrated and hold the accounts of ``ACCOUNTS``. Each batch holds
``BATCH`` transfers, one new hold, and the post (in part) of the previous batch's hold. Only
after ``Ledger.submit`` returns, every id it created is printed on its own line and stdout is
flushed: a printed id is an acknowledged (committed) entry. The process never stops by itself
before ``MAX_BATCHES``; the parent kills it with SIGKILL.
"""

from __future__ import annotations

import sys

from shoudan.core.db import Database
from shoudan.ledger.domain import BatchItem, PostHold, hold, transfer
from shoudan.ledger.service import Ledger

ACCOUNTS = (
    "asset:channel:crash:receivable",
    "liability:merchant:crash1:unsettled",
    "liability:merchant:crash2:unsettled",
    "revenue:fees:crash",
)
MAX_BATCHES = 100_000  # a safety net: the parent's timeout is the real bound


def main(url: str, prefix: str, batch_size: int) -> int:
    database = Database(url)
    ledger = Ledger(database)
    receivable, first, second, fees = ACCOUNTS
    previous_hold: str | None = None
    for number in range(MAX_BATCHES):
        items: list[BatchItem] = []
        for index in range(batch_size):
            merchant = first if index % 2 else second
            amount = 100 + (number * batch_size + index) % 9_900
            items.append(transfer(f"{prefix}:{number}:{index}", receivable, merchant, amount))
            items.append(transfer(f"{prefix}:{number}:{index}:fee", merchant, fees, 1))
        hold_id = f"{prefix}:{number}:hold"
        items.append(hold(hold_id, receivable, first, 5_000))
        if previous_hold is not None:
            items.append(PostHold(f"{prefix}:{number}:post", previous_hold, 4_000))
        results = ledger.submit(items)
        failed = [r for r in results if not r.ok]
        if failed:
            print(f"FAILED {failed[0]}", file=sys.stderr, flush=True)
            return 3
        sys.stdout.write("".join(f"{r.id}\n" for r in results))
        sys.stdout.flush()
        previous_hold = hold_id
    return 0


if __name__ == "__main__":
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    sys.exit(main(sys.argv[1], sys.argv[2], size))
