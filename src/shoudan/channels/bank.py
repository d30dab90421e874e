"""The sandbox bank: a deterministic stand-in for a bank credit transfer (the rail for refunds
a card cannot take back, and later for settlement payouts).

Rules, checked in this order:

1. ``reference`` seen before: the same account and amount get the first answer again
   (idempotent); another account or amount fails permanently ``reference_reused`` (and the
   first transfer stands);
2. an account number that is not 12-25 digits passing the Luhn check → ``invalid_account``;
3. an account number ending in ``0000`` → ``account_closed``;
4. otherwise the transfer succeeds.

Answers 2-4 are recorded, so ``query_transfer`` reports them. The books live in a
``SandboxStore`` (``channels.store``; it may be the card network's own file): an account
number is kept only as an HMAC token under the store's key and its last four digits; the
holder's and the bank's names are checked and never kept.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from importlib import resources
from typing import ClassVar, Final

from shoudan.channels.domain import TransferResult, TransferStatus, check_transfer
from shoudan.channels.store import MemoryStore, SandboxStore
from shoudan.core import baton
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.identifiers import luhn_valid

ACCOUNT_MIN_LENGTH: Final = 12
ACCOUNT_MAX_LENGTH: Final = 25
CLOSED_SUFFIX: Final = "0000"

_ACCOUNTS: Final[dict[str, str]] = json.loads(
    resources.files("shoudan.channels").joinpath("fixtures/sandbox_accounts.json").read_text()
)
ACCOUNT_SUCCEEDS: Final = _ACCOUNTS["succeeds"]
ACCOUNT_CLOSED: Final = _ACCOUNTS["closed"]
ACCOUNT_INVALID: Final = _ACCOUNTS["invalid"]

_TRANSFER: Final = "bank_transfer"
_MESSAGES: Final = {
    None: "transferred",
    "invalid_account": "no such account: the account number fails its check digit",
    "account_closed": "account closed",
    "reference_reused": "reference reused for a different transfer",
}


def _account_valid(account_number: str) -> bool:
    return ACCOUNT_MIN_LENGTH <= len(account_number) <= ACCOUNT_MAX_LENGTH and luhn_valid(
        account_number
    )


def _result(
    reference: str, amount: int, account_last4: str, reason: str | None
) -> TransferResult:
    status = TransferStatus.SUCCEEDED if reason is None else TransferStatus.FAILED_PERMANENT
    return TransferResult(status, reference, amount, account_last4, reason, _MESSAGES[reason])


class SandboxBank:
    """The simulated bank. ``latency_seconds`` delays every answer (outside the store
    session); ``store`` holds its books (this instance's memory unless given)."""

    in_process: ClassVar[bool] = True  # as the sandbox network's (its waits: ``baton.sleep``)

    def __init__(self, store: SandboxStore | None = None, latency_seconds: float = 0.0) -> None:
        if latency_seconds < 0:
            raise DomainError(ErrorCode.CONFIGURATION_ERROR, "sandbox delays cannot be negative")
        self.store: SandboxStore = store if store is not None else MemoryStore()
        self.latency_seconds = latency_seconds

    def __repr__(self) -> str:
        return f"SandboxBank(latency_seconds={self.latency_seconds}, store={self.store!r})"

    def _delay(self) -> None:
        if self.latency_seconds:
            baton.sleep(self.latency_seconds)

    def _token(self, account_number: str) -> str:
        material = f"bank-account\x1f{account_number}".encode()
        return hmac.new(self.store.token_key, material, hashlib.sha256).hexdigest()

    def transfer(
        self, reference: str, account_number: str, holder_name: str, bank_name: str, amount: int
    ) -> TransferResult:
        """Credit ``amount`` fen to the account, by the module's rules; idempotent per
        ``reference``."""
        amount = check_transfer(reference, account_number, holder_name, bank_name, amount)
        token, last4 = self._token(account_number), account_number[-4:]
        self._delay()
        with self.store.session() as session:
            text = session.get(_TRANSFER, reference)
            if text is not None:
                record = json.loads(text)
                if (record["account_token"], record["amount"]) != (token, amount):
                    return _result(reference, amount, last4, "reference_reused")
                return _result(reference, amount, last4, record["reason"])
            reason = None
            if not _account_valid(account_number):
                reason = "invalid_account"
            elif account_number.endswith(CLOSED_SUFFIX):
                reason = "account_closed"
            record = {"account_token": token, "account_last4": last4, "amount": amount}
            session.put(_TRANSFER, reference, json.dumps({**record, "reason": reason}))
            return _result(reference, amount, last4, reason)

    def query_transfer(self, reference: str) -> TransferResult | None:
        """The bank's record of ``reference``, or None when it never recorded it."""
        self._delay()
        with self.store.session() as session:
            text = session.get(_TRANSFER, reference)
        if text is None:
            return None
        record = json.loads(text)
        return _result(reference, record["amount"], record["account_last4"], record["reason"])
