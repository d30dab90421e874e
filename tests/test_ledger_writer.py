"""Group commit: concurrent callers share commits, yet each gets its own entries' results."""

from __future__ import annotations

import threading

from shoudan.core.errors import ErrorCode
from shoudan.ledger.domain import Linked, ResultStatus, transfer
from shoudan.ledger.writer import GroupCommitWriter
from tests.ledger_helpers import BANK, counts, make_ledger, merchant

CLIENTS = 8
PER_CLIENT = 60


def test_concurrent_callers_share_commits_and_keep_their_own_results(database) -> None:
    ledger = make_ledger(database, merchants=CLIENTS)
    results: dict[int, list] = {}

    def client(n: int) -> None:
        mine = []
        for k in range(PER_CLIENT):
            if k % 10 == 3:  # a refused entry: overdraws the client's own account
                batch = [transfer(f"c{n}-{k}", merchant(n), BANK, 10**9)]
            elif k % 10 == 7:  # a linked group whose second member fails
                batch = [
                    Linked(
                        (
                            transfer(f"c{n}-{k}-a", BANK, merchant(n), 5),
                            transfer(f"c{n}-{k}-b", merchant(n), BANK, 10**9),
                        )
                    )
                ]
            else:
                batch = [transfer(f"c{n}-{k}", BANK, merchant(n), 100)]
            mine.append(writer.submit(batch))
        results[n] = mine

    with GroupCommitWriter(ledger) as writer:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        commits = writer.commits

    requests = CLIENTS * PER_CLIENT
    assert commits < requests  # commits were shared
    for n in range(CLIENTS):
        for k, answer in enumerate(results[n]):
            if k % 10 == 3:
                assert [r.error for r in answer] == [ErrorCode.LIMIT_EXCEEDED]
            elif k % 10 == 7:
                assert [r.error for r in answer] == [
                    ErrorCode.LINKED_ENTRY_FAILED,
                    ErrorCode.LIMIT_EXCEEDED,
                ]
            else:
                assert [r.status for r in answer] == [ResultStatus.CREATED]
        created = sum(1 for k in range(PER_CLIENT) if k % 10 not in (3, 7))
        assert ledger.account(merchant(n)).credit_balance == created * 100
    entries, _ = counts(database)
    assert entries == CLIENTS * sum(1 for k in range(PER_CLIENT) if k % 10 not in (3, 7))
    assert ledger.verify().ok


def test_writer_answers_retries_and_refuses_after_close(database) -> None:
    ledger = make_ledger(database)
    writer = GroupCommitWriter(ledger)
    entry = transfer("once", BANK, merchant(0), 1)
    assert writer.submit([entry])[0].status is ResultStatus.CREATED
    assert writer.submit([entry])[0].status is ResultStatus.EXISTS
    writer.close()
    try:
        writer.submit([entry])
    except RuntimeError as closed:
        assert "closed" in str(closed)
    else:  # pragma: no cover
        raise AssertionError("a closed writer accepted work")
