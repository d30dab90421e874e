"""``shoudan bank simulate``: the bank's side of a batch file, for development and tests.

Each line is paid or rejected by the sandbox bank's rules (``channels.bank``): an account number
failing its check digit is ``invalid_account``, one ending in 0000 is ``account_closed``, the
rest are paid. The answers are written as a confirmation file, owner-only (docs/settlement.md).
"""

from __future__ import annotations

from pathlib import Path

from shoudan.channels.bank import SandboxBank
from shoudan.core.errors import DomainError
from shoudan.settlement.bankfile import (
    Confirmation,
    Problem,
    invalid,
    parse_batch,
    write_confirmations,
)
from shoudan.settlement.private_file import write_private


def simulate(batch_path: Path, out_path: Path) -> tuple[int, int]:
    """Answer every line of the batch file; returns (paid, rejected)."""
    lines = parse_batch(batch_path.name, batch_path.read_text(encoding="utf-8"))
    bank = SandboxBank()
    answers: list[Confirmation] = []
    for number, line in enumerate(lines, start=2):
        try:
            result = bank.transfer(line.payout_id, line.account_number, line.account_name,
                                   line.bank_name, line.amount)  # fmt: skip
        except DomainError as error:
            raise invalid(batch_path.name, [Problem(number, "-", error.message)]) from None
        reason = result.reason or ""
        status = "paid" if not reason else "rejected"
        answers.append(
            Confirmation(line.batch_id, line.line, line.payout_id, line.amount, status, reason)
        )
    write_private(out_path, lambda out: write_confirmations(answers, out))
    paid = sum(1 for a in answers if a.status == "paid")
    return paid, len(answers) - paid
