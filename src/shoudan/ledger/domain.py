"""Pure ledger rules: entry shapes, validation, and the batch engine that applies entries to
account balances. No I/O: the service loads state, this module decides, the repository writes.

Semantics follow TigerBeetle, generalised to multi-leg journal entries:

* a **transfer** posts at once: its postings move the accounts' posted balances;
* a **hold** (pending entry) reserves: its postings move the pending balances only;
* a hold is resolved **at most once**, by a **post** (in full, or in part for a two-leg hold),
  a **void**, or an **expiry** after its deadline; resolution releases the whole reservation;
* a posting amount is signed fen: debit > 0, credit < 0; every entry sums to zero per currency;
* an account may carry balance limits, checked after each entry against
  ``debits_posted + debits_pending - credits_posted <= max_debit_balance`` (and the mirror for
  credits): pending debits count against the limit, pending credits do not (conservative);
* entry ids are chosen by the client: the same id with the same content is an idempotent
  retry (``exists``), the same id with other content is refused (``entry_id_conflict``);
* a **linked** group succeeds or fails as a whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.money import CURRENCIES

MAX_ID_LENGTH = 64
MAX_ACCOUNT_ID_LENGTH = 128
MAX_CODE_LENGTH = 32
MAX_DESCRIPTION_LENGTH = 255
# A single posting may not exceed this (a 19-digit guard well inside BIGINT).
MAX_AMOUNT = 10**15


class AccountType(StrEnum):
    ASSET = "asset"
    LIABILITY = "liability"
    EQUITY = "equity"
    REVENUE = "revenue"
    EXPENSE = "expense"


class EntryKind(StrEnum):
    TRANSFER = "transfer"
    PENDING = "pending"
    POST = "post"
    VOID = "void"
    EXPIRE = "expire"


class ResultStatus(StrEnum):
    CREATED = "created"
    EXISTS = "exists"
    FAILED = "failed"


# -- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Posting:
    account_id: str
    amount: int  # signed fen: debit > 0, credit < 0
    currency: str = "CNY"


@dataclass(frozen=True, slots=True)
class Transfer:
    """An entry that posts immediately."""

    id: str
    postings: tuple[Posting, ...]
    code: str = ""
    description: str = ""


@dataclass(frozen=True, slots=True)
class Hold:
    """A pending entry: reserves its postings until posted, voided or expired."""

    id: str
    postings: tuple[Posting, ...]
    expires_at: datetime | None = None
    code: str = ""
    description: str = ""


@dataclass(frozen=True, slots=True)
class PostHold:
    """Posts a hold: in full (``amount=None``) or, for a two-leg hold, ``amount`` of it."""

    id: str
    hold_id: str
    amount: int | None = None
    code: str = ""
    description: str = ""


@dataclass(frozen=True, slots=True)
class VoidHold:
    id: str
    hold_id: str
    code: str = ""
    description: str = ""


@dataclass(frozen=True, slots=True)
class ExpireHold:
    """Written by the system when a hold's deadline has passed (id ``expire:<hold id>``)."""

    hold_id: str

    @property
    def id(self) -> str:
        return f"expire:{self.hold_id}"

    @property
    def code(self) -> str:
        return "expire"

    @property
    def description(self) -> str:
        return ""


EntryRequest = Transfer | Hold | PostHold | VoidHold | ExpireHold


@dataclass(frozen=True, slots=True)
class Linked:
    """Entries that succeed or fail together."""

    entries: tuple[EntryRequest, ...]


BatchItem = EntryRequest | Linked


def transfer(
    entry_id: str,
    debit: str,
    credit: str,
    amount: int,
    *,
    currency: str = "CNY",
    code: str = "",
    description: str = "",
) -> Transfer:
    """The common two-leg transfer: ``amount`` (positive fen) from ``credit`` to ``debit``."""
    _check_positive(amount)
    return Transfer(
        entry_id,
        (Posting(debit, amount, currency), Posting(credit, -amount, currency)),
        code,
        description,
    )


def hold(
    entry_id: str,
    debit: str,
    credit: str,
    amount: int,
    *,
    expires_at: datetime | None = None,
    currency: str = "CNY",
    code: str = "",
    description: str = "",
) -> Hold:
    """A two-leg hold reserving ``amount`` (positive fen) from ``credit`` to ``debit``."""
    _check_positive(amount)
    return Hold(
        entry_id,
        (Posting(debit, amount, currency), Posting(credit, -amount, currency)),
        expires_at,
        code,
        description,
    )


def _check_positive(amount: object) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise DomainError(
            ErrorCode.INVALID_AMOUNT, f"amount must be a positive integer of fen, got {amount!r}"
        )


def kind_of(request: EntryRequest) -> EntryKind:
    if isinstance(request, Transfer):
        return EntryKind.TRANSFER
    if isinstance(request, Hold):
        return EntryKind.PENDING
    if isinstance(request, PostHold):
        return EntryKind.POST
    if isinstance(request, VoidHold):
        return EntryKind.VOID
    return EntryKind.EXPIRE


# -- state the engine works on ------------------------------------------------------------------


@dataclass(slots=True)
class AccountState:
    id: str
    currency: str
    max_debit_balance: int | None = None
    max_credit_balance: int | None = None
    debits_posted: int = 0
    credits_posted: int = 0
    debits_pending: int = 0
    credits_pending: int = 0

    def snapshot(self) -> tuple[int, int, int, int]:
        return (self.debits_posted, self.credits_posted, self.debits_pending, self.credits_pending)

    def restore(self, values: tuple[int, int, int, int]) -> None:
        (self.debits_posted, self.credits_posted, self.debits_pending, self.credits_pending) = (
            values
        )

    @property
    def balance(self) -> int:
        """Posted debit balance (debits − credits); negative means a credit balance."""
        return self.debits_posted - self.credits_posted

    def limit_breach(self) -> str | None:
        if self.max_debit_balance is not None:
            exposure = self.debits_posted + self.debits_pending - self.credits_posted
            if exposure > self.max_debit_balance:
                return (
                    f"account {self.id}: debit balance {exposure} would exceed its limit "
                    f"{self.max_debit_balance}"
                )
        if self.max_credit_balance is not None:
            exposure = self.credits_posted + self.credits_pending - self.debits_posted
            if exposure > self.max_credit_balance:
                return (
                    f"account {self.id}: credit balance {exposure} would exceed its limit "
                    f"{self.max_credit_balance}"
                )
        return None


@dataclass(frozen=True, slots=True)
class HoldState:
    id: str
    postings: tuple[Posting, ...]
    expires_at: datetime | None
    resolved: bool = False


@dataclass(frozen=True, slots=True)
class EntryResult:
    id: str
    status: ResultStatus
    error: ErrorCode | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not ResultStatus.FAILED

    def raise_for_error(self) -> EntryResult:
        if self.error is not None:
            raise DomainError(self.error, self.message, entry_id=self.id)
        return self


@dataclass(frozen=True, slots=True)
class EntryRow:
    """An entry the engine accepted, ready to be written."""

    id: str
    kind: EntryKind
    resolves_id: str | None
    code: str
    description: str
    content_hash: str
    expires_at: datetime | None
    postings: tuple[Posting, ...]


@dataclass(slots=True)
class Outcome:
    results: list[EntryResult] = field(default_factory=list)
    rows: list[EntryRow] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)


# -- validation ---------------------------------------------------------------------------------


class _Refused(Exception):
    """A rule refused an entry (internal: the engine turns it into a failed result)."""


    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _check_text(value: object, name: str, limit: int, *, required: bool) -> None:
    # the common case first, cheaply (this runs several times per entry on the hot path)
    if (
        type(value) is str
        and len(value) <= limit
        and value.isprintable()
        and (not required or (value and not value.isspace()))
    ):
        return
    if not isinstance(value, str):
        raise _Refused(ErrorCode.INVALID_INPUT, f"{name} must be a string")
    if required and not value.strip():
        raise _Refused(ErrorCode.INVALID_INPUT, f"{name} must not be empty")
    if len(value) > limit:
        raise _Refused(ErrorCode.INVALID_INPUT, f"{name} is longer than {limit} characters")
    if not value.isprintable():
        raise _Refused(ErrorCode.INVALID_INPUT, f"{name} contains control characters")


def _check_postings(postings: object) -> None:
    if not isinstance(postings, tuple) or len(postings) < 2:
        raise _Refused(ErrorCode.ENTRY_TOO_FEW_POSTINGS, "an entry needs at least two postings")
    sums: dict[str, int] = {}
    seen: set[str] = set()
    for posting in postings:
        if type(posting) is not Posting:
            raise _Refused(ErrorCode.INVALID_INPUT, "postings must be Posting values")
        account_id = posting.account_id
        _check_text(account_id, "account id", MAX_ACCOUNT_ID_LENGTH, required=True)
        # as TigerBeetle's accounts_must_be_different: one leg per account keeps every
        # replay and hold check unambiguous (merge the amounts instead)
        if account_id in seen:
            raise _Refused(
                ErrorCode.INVALID_INPUT, f"account {account_id} appears twice in the entry"
            )
        seen.add(account_id)
        amount = posting.amount
        if type(amount) is not int:  # bool, float, Decimal are all refused
            raise _Refused(ErrorCode.INVALID_AMOUNT, "posting amounts must be integer fen")
        if amount == 0 or not -MAX_AMOUNT <= amount <= MAX_AMOUNT:
            raise _Refused(
                ErrorCode.INVALID_AMOUNT, f"posting amount {amount} must be non-zero and sane"
            )
        if posting.currency not in CURRENCIES:
            raise _Refused(ErrorCode.INVALID_CURRENCY, f"unsupported currency {posting.currency}")
        sums[posting.currency] = sums.get(posting.currency, 0) + amount
    unbalanced = {currency: total for currency, total in sums.items() if total != 0}
    if unbalanced:
        raise _Refused(
            ErrorCode.ENTRY_UNBALANCED,
            "postings must sum to zero per currency; off by "
            + ", ".join(f"{total} {currency}" for currency, total in sorted(unbalanced.items())),
        )


def _check_deadline(request: Hold, now: datetime) -> None:
    if request.expires_at is not None and request.expires_at <= now:
        raise _Refused(ErrorCode.INVALID_INPUT, "expires_at must be in the future")


def _validate(request: EntryRequest, now: datetime | None) -> None:
    if isinstance(request, ExpireHold):
        _check_text(request.hold_id, "hold id", MAX_ID_LENGTH, required=True)
        return
    _check_text(request.id, "entry id", MAX_ID_LENGTH, required=True)
    _check_text(request.code, "code", MAX_CODE_LENGTH, required=False)
    _check_text(request.description, "description", MAX_DESCRIPTION_LENGTH, required=False)
    if isinstance(request, Transfer | Hold):
        _check_postings(request.postings)
        if isinstance(request, Hold) and request.expires_at is not None:
            if request.expires_at.tzinfo is None:
                raise _Refused(ErrorCode.INVALID_INPUT, "expires_at must be timezone-aware")
            if now is not None:
                _check_deadline(request, now)
        return
    _check_text(request.hold_id, "hold id", MAX_ID_LENGTH, required=True)
    if isinstance(request, PostHold) and request.amount is not None:
        amount = request.amount
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise _Refused(ErrorCode.INVALID_AMOUNT, "a partial post needs a positive amount")


def content_hash(request: EntryRequest) -> str:
    """Fingerprint of what an entry says, to tell an idempotent retry from a conflict."""
    kind = kind_of(request)
    parts = [kind.value, request.code, request.description]
    if isinstance(request, Transfer | Hold):
        if isinstance(request, Hold):
            parts.append(request.expires_at.isoformat() if request.expires_at else "")
        parts.extend(f"{p.account_id}\x1f{p.currency}\x1f{p.amount}" for p in request.postings)
    elif isinstance(request, PostHold):
        parts.extend((request.hold_id, "" if request.amount is None else str(request.amount)))
    else:
        parts.append(request.hold_id)
    return hashlib.sha256("\x1e".join(parts).encode()).hexdigest()


def check(request: EntryRequest) -> str | _Refused:
    """The stateless half of applying an entry: shape validation and the content
    fingerprint. Safe to run outside the write transaction (and in the caller's thread)."""
    try:
        _validate(request, None)
    except _Refused as refused:
        return refused
    return content_hash(request)


def check_all(items: Iterable[BatchItem]) -> dict[int, str | _Refused]:
    """``check`` for every entry of a batch, keyed by ``id(request)`` for the engine."""
    checked: dict[int, str | _Refused] = {}
    for item in items:
        for request in item.entries if isinstance(item, Linked) else (item,):
            checked[id(request)] = check(request)
    return checked


def accounts_of(items: Iterable[BatchItem]) -> set[str]:
    """Account ids named directly by the batch (holds' accounts are found via their state)."""
    found: set[str] = set()
    for item in items:
        for request in item.entries if isinstance(item, Linked) else (item,):
            if isinstance(request, Transfer | Hold) and isinstance(request.postings, tuple):
                found.update(p.account_id for p in request.postings if isinstance(p, Posting))
    return found


def hold_ids_of(items: Iterable[BatchItem]) -> set[str]:
    found: set[str] = set()
    for item in items:
        for request in item.entries if isinstance(item, Linked) else (item,):
            if isinstance(request, PostHold | VoidHold | ExpireHold) and isinstance(
                request.hold_id, str
            ):
                found.add(request.hold_id)
    return found


def entry_ids_of(items: Iterable[BatchItem]) -> set[str]:
    found: set[str] = set()
    for item in items:
        for request in item.entries if isinstance(item, Linked) else (item,):
            if isinstance(request.id, str):
                found.add(request.id)
    return found


# -- the batch engine ---------------------------------------------------------------------------


class Engine:
    """Applies a batch to in-memory state, entry by entry, as the database will record it.

    ``accounts`` must hold every account the batch may touch (locked by the caller);
    ``holds`` every hold it may resolve; ``existing`` the content fingerprint of every
    stored entry whose id is in the batch.
    """

    def __init__(
        self,
        accounts: dict[str, AccountState],
        holds: dict[str, HoldState],
        existing: dict[str, str],
        now: datetime,
        checked: dict[int, str | _Refused] | None = None,
    ) -> None:
        self.checked = checked or {}
        self.accounts = accounts
        self.holds = holds
        self.existing = existing
        self.now = now
        self._undo: list[tuple[str, tuple[int, int, int, int]]] | None = None
        self._undo_seen: set[str] = set()

    def run(self, items: Sequence[BatchItem]) -> Outcome:
        outcome = Outcome()
        for item in items:
            if isinstance(item, Linked):
                self._run_linked(item, outcome)
            else:
                result, row = self._apply(item)
                outcome.results.append(result)
                if row is not None:
                    self._record(row, outcome)
        return outcome

    def _run_linked(self, group: Linked, outcome: Outcome) -> None:
        self._undo, self._undo_seen = [], set()
        holds_before = dict(self.holds)
        existing_before = dict(self.existing)
        results: list[EntryResult] = []
        rows: list[EntryRow] = []
        failed_at: int | None = None
        for index, request in enumerate(group.entries):
            result, row = self._apply(request)
            results.append(result)
            if not result.ok:
                failed_at = index
                break
            if row is not None:
                rows.append(row)
                self.existing[row.id] = row.content_hash
        if failed_at is None:
            outcome.results.extend(results)
            for row in rows:
                self._record(row, outcome)
        else:
            for account_id, values in reversed(self._undo):
                self.accounts[account_id].restore(values)
            self.holds, self.existing = holds_before, existing_before
            failure = results[failed_at]
            for index, request in enumerate(group.entries):
                if index == failed_at:
                    outcome.results.append(failure)
                else:
                    outcome.results.append(
                        EntryResult(
                            _safe_id(request),
                            ResultStatus.FAILED,
                            ErrorCode.LINKED_ENTRY_FAILED,
                            f"linked entry {failure.id} failed: {failure.error}",
                        )
                    )
        self._undo = None

    def _record(self, row: EntryRow, outcome: Outcome) -> None:
        outcome.rows.append(row)
        self.existing[row.id] = row.content_hash

    def _touch(self, account: AccountState) -> None:
        if self._undo is not None and account.id not in self._undo_seen:
            self._undo_seen.add(account.id)
            self._undo.append((account.id, account.snapshot()))

    def _apply(self, request: EntryRequest) -> tuple[EntryResult, EntryRow | None]:
        entry_id = _safe_id(request)
        try:
            checked = self.checked.get(id(request)) or check(request)
            if isinstance(checked, _Refused):
                raise checked
            digest = checked
            known = self.existing.get(request.id)
            if known is not None:
                # a retry is answered before any time-dependent rule: the entry exists
                if known == digest:
                    return EntryResult(request.id, ResultStatus.EXISTS), None
                raise _Refused(
                    ErrorCode.ENTRY_ID_CONFLICT,
                    f"entry {request.id} exists with different content",
                )
            if isinstance(request, Hold):
                _check_deadline(request, self.now)
            row = self._effects(request, digest)
        except _Refused as refused:
            return EntryResult(entry_id, ResultStatus.FAILED, refused.code, refused.message), None
        return EntryResult(request.id, ResultStatus.CREATED), row

    def _effects(self, request: EntryRequest, digest: str) -> EntryRow:
        kind = kind_of(request)
        if isinstance(request, Transfer | Hold):
            pending = isinstance(request, Hold)
            self._move([(p, pending, 1) for p in request.postings])
            expires_at = request.expires_at if isinstance(request, Hold) else None
            if isinstance(request, Hold):
                self.holds[request.id] = HoldState(request.id, request.postings, expires_at)
            return EntryRow(
                request.id, kind, None, request.code, request.description, digest,
                expires_at, request.postings,
            )  # fmt: skip
        held = self._open_hold(request)
        posted: tuple[Posting, ...] = ()
        if isinstance(request, PostHold):
            posted = _posted_part(held, request.amount)
        # Resolution releases the whole reservation, then posts what was taken.
        self._move([(p, True, -1) for p in held.postings] + [(p, False, 1) for p in posted])
        self.holds[held.id] = HoldState(held.id, held.postings, held.expires_at, resolved=True)
        return EntryRow(
            request.id, kind, held.id, request.code, request.description, digest, None, posted
        )

    def _open_hold(self, request: PostHold | VoidHold | ExpireHold) -> HoldState:
        held = self.holds.get(request.hold_id)
        if held is None:
            raise _Refused(ErrorCode.HOLD_NOT_FOUND, f"hold {request.hold_id} not found")
        if held.resolved:
            raise _Refused(
                ErrorCode.HOLD_ALREADY_RESOLVED, f"hold {request.hold_id} is already resolved"
            )
        expired = held.expires_at is not None and held.expires_at <= self.now
        if isinstance(request, ExpireHold):
            if not expired:
                raise _Refused(ErrorCode.INVALID_INPUT, f"hold {held.id} has not expired yet")
        elif expired:
            raise _Refused(ErrorCode.HOLD_EXPIRED, f"hold {held.id} expired at {held.expires_at}")
        return held

    def _account_for(self, posting: Posting) -> AccountState:
        account = self.accounts.get(posting.account_id)
        if account is None:
            raise _Refused(ErrorCode.ACCOUNT_NOT_FOUND, f"account {posting.account_id} not found")
        if account.currency != posting.currency:
            raise _Refused(
                ErrorCode.CURRENCY_MISMATCH,
                f"account {account.id} is in {account.currency}, posting in {posting.currency}",
            )
        return account

    def _move(self, changes: list[tuple[Posting, bool, int]]) -> None:
        """Apply (posting, to pending?, sign) changes; all or nothing, limits checked after."""
        accounts = [self._account_for(posting) for posting, _, _ in changes]
        unique = list({account.id: account for account in accounts}.values())
        saved = [account.snapshot() for account in unique]
        if self._undo is not None:
            for account in unique:
                self._touch(account)
        for (posting, pending, sign), account in zip(changes, accounts, strict=True):
            amount = posting.amount * sign
            if pending:
                if posting.amount > 0:
                    account.debits_pending += amount
                else:
                    account.credits_pending -= amount
            elif posting.amount > 0:
                account.debits_posted += amount
            else:
                account.credits_posted -= amount
        for account in unique:
            if account.max_debit_balance is None and account.max_credit_balance is None:
                continue
            breach = account.limit_breach()
            if breach is not None:
                for undo_account, values in zip(unique, saved, strict=True):
                    undo_account.restore(values)
                raise _Refused(ErrorCode.LIMIT_EXCEEDED, breach)


def _safe_id(request: object) -> str:
    entry_id = getattr(request, "id", "")
    return entry_id if isinstance(entry_id, str) else repr(entry_id)


def _posted_part(held: HoldState, amount: int | None) -> tuple[Posting, ...]:
    if amount is None:
        return held.postings
    if len(held.postings) != 2:
        raise _Refused(
            ErrorCode.HOLD_PARTIAL_NOT_SUPPORTED,
            f"hold {held.id} has {len(held.postings)} postings: only two-leg holds post in part",
        )
    debit = next(p for p in held.postings if p.amount > 0)
    credit = next(p for p in held.postings if p.amount < 0)
    if amount > debit.amount:
        raise _Refused(
            ErrorCode.HOLD_AMOUNT_EXCEEDED,
            f"cannot post {amount} of hold {held.id} holding {debit.amount}",
        )
    return (
        Posting(debit.account_id, amount, debit.currency),
        Posting(credit.account_id, -amount, credit.currency),
    )


Refusal = _Refused  # the public name, for type annotations outside this module
