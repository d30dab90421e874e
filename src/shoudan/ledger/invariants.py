"""The ledger's invariants, checked from the stored rows alone (``shoudan ledger verify``).

1. every entry sums to zero per currency, and so does the whole ledger;
2. every stored balance equals the replay of its postings (posted: transfers and posts;
   pending: holds not yet resolved);
3. no account exceeds its balance limits;
4. every hold is resolved at most once, only by a post/void/expire entry, and a post never
   takes more than was held;
5. every posting is in its account's currency; transfers and holds have ≥ 2 postings,
   voids and expiries none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.orm import Session

from shoudan.ledger.domain import AccountState


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: str
    subject: str
    message: str


@dataclass(slots=True)
class VerifyReport:
    accounts: int = 0
    entries: int = 0
    postings: int = 0
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def add(self, invariant: str, subject: str, message: str) -> None:
        self.violations.append(Violation(invariant, subject, message))


_REPLAY = """
SELECT p.account_id,
  SUM(CASE WHEN e.kind IN ('transfer','post') AND p.amount > 0 THEN p.amount ELSE 0 END),
  SUM(CASE WHEN e.kind IN ('transfer','post') AND p.amount < 0 THEN -p.amount ELSE 0 END),
  SUM(CASE WHEN e.kind = 'pending' AND r.id IS NULL AND p.amount > 0 THEN p.amount ELSE 0 END),
  SUM(CASE WHEN e.kind = 'pending' AND r.id IS NULL AND p.amount < 0 THEN -p.amount ELSE 0 END)
FROM ledger_postings p
JOIN ledger_entries e ON e.id = p.entry_id
LEFT JOIN ledger_entries r ON r.resolves_id = e.id AND e.kind = 'pending'
GROUP BY p.account_id
"""


def verify(session: Session) -> VerifyReport:
    report = VerifyReport()
    run = session.execute
    report.accounts = run(text("SELECT COUNT(*) FROM ledger_accounts")).scalar_one()
    report.entries = run(text("SELECT COUNT(*) FROM ledger_entries")).scalar_one()
    report.postings = run(text("SELECT COUNT(*) FROM ledger_postings")).scalar_one()

    # 1. zero sum per entry and globally
    for entry_id, currency, total in run(
        text(
            "SELECT entry_id, currency, SUM(amount) FROM ledger_postings"
            " GROUP BY entry_id, currency HAVING SUM(amount) <> 0"
        )
    ):
        report.add("zero_sum_entry", entry_id, f"postings sum to {total} {currency}")
    for currency, total in run(
        text("SELECT currency, SUM(amount) FROM ledger_postings GROUP BY currency")
    ):
        if total != 0:
            report.add("zero_sum_global", currency, f"the ledger sums to {total} {currency}")

    # 2. stored balances equal the replay; 3. limits
    replayed = {row[0]: tuple(int(v) for v in row[1:]) for row in run(text(_REPLAY))}
    for row in run(
        text(
            "SELECT id, currency, max_debit_balance, max_credit_balance, debits_posted,"
            " credits_posted, debits_pending, credits_pending FROM ledger_accounts ORDER BY id"
        )
    ):
        account = AccountState(*row)
        expected = replayed.get(account.id, (0, 0, 0, 0))
        if account.snapshot() != expected:
            report.add(
                "balance_replay",
                account.id,
                "stored (debits_posted, credits_posted, debits_pending, credits_pending) = "
                f"{account.snapshot()}, replay of postings = {expected}",
            )
        breach = account.limit_breach()
        if breach is not None:
            report.add("limit", account.id, breach)

    # 4. holds resolved at most once, by the right kinds, never over-posted
    for resolves_id, count in run(
        text(
            "SELECT resolves_id, COUNT(*) FROM ledger_entries WHERE resolves_id IS NOT NULL"
            " GROUP BY resolves_id HAVING COUNT(*) > 1"
        )
    ):
        report.add("hold_resolved_once", resolves_id, f"resolved {count} times")
    for entry_id, kind, target_kind in run(
        text(
            "SELECT r.id, r.kind, e.kind FROM ledger_entries r"
            " JOIN ledger_entries e ON e.id = r.resolves_id WHERE e.kind <> 'pending'"
        )
    ):
        report.add("hold_target", entry_id, f"{kind} resolves a {target_kind} entry")
    for entry_id, account_id, posted, held in run(
        text(
            "SELECT r.id, p.account_id, p.amount, h.amount FROM ledger_entries r"
            " JOIN ledger_postings p ON p.entry_id = r.id"
            " LEFT JOIN ledger_postings h ON h.entry_id = r.resolves_id"
            "  AND h.account_id = p.account_id AND h.currency = p.currency"
            "  AND (h.amount > 0) = (p.amount > 0)"
            " WHERE r.kind = 'post'"
        )
    ):
        if held is None or (posted > 0) != (held > 0) or abs(posted) > abs(held):
            report.add(
                "hold_post_amount", entry_id, f"posts {posted} on {account_id}, held {held}"
            )

    # 5. shapes and currencies
    for entry_id, kind, count in run(
        text(
            "SELECT e.id, e.kind, COUNT(p.entry_id) FROM ledger_entries e"
            " LEFT JOIN ledger_postings p ON p.entry_id = e.id GROUP BY e.id, e.kind"
            " HAVING (e.kind IN ('transfer','pending','post') AND COUNT(p.entry_id) < 2)"
            "  OR (e.kind IN ('void','expire') AND COUNT(p.entry_id) > 0)"
        )
    ):
        report.add("entry_shape", entry_id, f"{kind} entry with {count} postings")
    for entry_id, account_id, currency, account_currency in run(
        text(
            "SELECT p.entry_id, p.account_id, p.currency, a.currency FROM ledger_postings p"
            " JOIN ledger_accounts a ON a.id = p.account_id WHERE a.currency <> p.currency"
        )
    ):
        report.add(
            "currency", entry_id, f"{currency} posting on {account_currency} account {account_id}"
        )
    return report
