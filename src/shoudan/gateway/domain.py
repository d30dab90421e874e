"""The terminal spec's transactions (section 3) as data, and the gateway's pure rules.

One table, ``TRANSACTIONS``, says how each transaction is recognised (request MTI, field 3,
field 25, 60.1 and, for network management, 60.3), whether it is MACed and whether it may be
reversed; the rest of the gateway looks transactions up here instead of testing codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from shoudan.channels.domain import EntryMode
from shoudan.refunds.domain import LIVE, RefundStatus


class Kind(StrEnum):
    SIGN_ON = "sign_on"
    BALANCE = "balance"
    PREAUTH = "preauth"
    PREAUTH_VOID = "preauth_void"
    COMPLETION = "completion"
    COMPLETION_VOID = "completion_void"
    SALE = "sale"
    SALE_VOID = "sale_void"
    REFUND = "refund"
    REVERSAL = "reversal"
    SETTLEMENT = "settlement"


@dataclass(frozen=True, slots=True)
class Transaction:
    kind: Kind
    mti: str
    processing_code: str | None  # field 3 (None: not part of the match)
    condition: str | None  # field 25
    message_type: str  # 60.1
    network_code: str | None  # 60.3, for network management messages
    mac: bool
    reversible: bool


def _t(
    kind: Kind, mti: str, code: str | None, condition: str | None, message_type: str,
    network: str | None = None, *, mac: bool = True, reversible: bool = False,
) -> Transaction:  # fmt: skip
    return Transaction(kind, mti, code, condition, message_type, network, mac, reversible)


# Section 3 of the terminal spec. A reversal (0400) repeats its original's 3, 25 and 60.1.
TRANSACTIONS: Final[tuple[Transaction, ...]] = (
    _t(Kind.SIGN_ON, "0800", None, None, "00", "003", mac=False),
    _t(Kind.BALANCE, "0200", "310000", "00", "01"),
    _t(Kind.PREAUTH, "0100", "030000", "06", "10", reversible=True),
    _t(Kind.PREAUTH_VOID, "0100", "200000", "06", "11", reversible=True),
    _t(Kind.COMPLETION, "0200", "000000", "06", "20", reversible=True),
    _t(Kind.COMPLETION_VOID, "0200", "200000", "06", "21", reversible=True),
    _t(Kind.SALE, "0200", "000000", "00", "22", reversible=True),
    _t(Kind.SALE_VOID, "0200", "200000", "00", "23", reversible=True),
    _t(Kind.REFUND, "0220", "200000", "00", "25"),
    _t(Kind.SETTLEMENT, "0500", None, None, "00", "201"),
)
REVERSAL_MTI: Final = "0400"
REVERSAL: Final = Transaction(Kind.REVERSAL, REVERSAL_MTI, None, None, "", None, True, False)
REQUEST_MTIS: Final = frozenset({t.mti for t in TRANSACTIONS} | {REVERSAL_MTI})

# Fields every request of a kind must carry (besides 11, 41, 42, 60 on all and 64 on MACed
# ones, whose absence is an A0); "card" means field 2 or 35.
COMMON_FIELDS: Final = frozenset({11, 41, 42, 60})
_CARD_FIELDS: Final = frozenset({3, 22, 25, 49})
_PAYMENT_FIELDS: Final = _CARD_FIELDS | {4}
REQUIRED: Final[Mapping[Kind, frozenset[int]]] = {
    Kind.SIGN_ON: frozenset(),
    Kind.BALANCE: _CARD_FIELDS,
    Kind.PREAUTH: _PAYMENT_FIELDS,
    Kind.SALE: _PAYMENT_FIELDS,
    Kind.COMPLETION: _PAYMENT_FIELDS | {61},
    Kind.PREAUTH_VOID: _PAYMENT_FIELDS | {61},
    Kind.SALE_VOID: _PAYMENT_FIELDS | {37, 61},
    Kind.COMPLETION_VOID: _PAYMENT_FIELDS | {37, 61},
    Kind.REFUND: _PAYMENT_FIELDS | {37, 61},
    # it repeats the original's 2 (or 35), 3, 4, 11, 22, 25, 41, 42, 49, 60 and gives its reason
    Kind.REVERSAL: _PAYMENT_FIELDS | {39},
    Kind.SETTLEMENT: frozenset({48}),
}
CARD_KINDS: Final = frozenset(
    {Kind.BALANCE, Kind.PREAUTH, Kind.SALE, Kind.COMPLETION, Kind.PREAUTH_VOID,
     Kind.SALE_VOID, Kind.COMPLETION_VOID, Kind.REFUND, Kind.REVERSAL}
)  # fmt: skip
# What a batch's totals (48) count as sales: approved sales and completions, still captured
SALE_KINDS: Final = (Kind.SALE.value, Kind.COMPLETION.value)
# A reversal's reason (39): no response, terminal fault, response MAC failed, other (spec §3)
REVERSAL_REASONS: Final = frozenset({"98", "96", "A0", "06"})
# Requests whose payment carries the request's identity as its Idempotency-Key: found even
# when the process died before the request's journal row.
IDEMPOTENT_PAYMENT_KINDS: Final = frozenset({Kind.SALE, Kind.PREAUTH})

# Sign-on issues keys (each one fresh): never journaled for replay. Everything else is
# exactly-once.
NOT_JOURNALED: Final = frozenset({Kind.SIGN_ON})

# Field 44 of an approved refund advice that the refund policy sent to manual review (spec §3):
# the terminal prints it; the refund completes later.
PENDING_REVIEW: Final = "PENDING REVIEW"
AWAITING_REVIEW: Final = frozenset(
    {RefundStatus.IN_REVIEW, RefundStatus.NEEDS_INFO, RefundStatus.PENDING_FUNDS}
)


def refund_accepted(status: RefundStatus) -> bool:
    """Whether a refund answers ``00``: it is live (approved, on its way, or waiting for
    review or funds). A refund already rejected, canceled or failed — seen only when an
    advice is repeated after its journal row was lost — answers ``12``: it will not happen,
    and the terminal must not count it in its batch."""
    return status in LIVE


def classify(
    mti: str,
    processing_code: str | None,
    condition: str | None,
    message_type: str,
    network_code: str | None,
) -> Transaction | None:
    """The transaction a request is, or None (an unknown processing code / combination)."""
    if mti == REVERSAL_MTI:
        return REVERSAL if reversed_kind(processing_code, condition, message_type) else None
    for txn in TRANSACTIONS:
        if txn.mti != mti or txn.message_type != message_type:
            continue
        if txn.network_code is not None and txn.network_code != network_code:
            continue
        if txn.processing_code is not None and txn.processing_code != processing_code:
            continue
        if txn.condition is not None and txn.condition != condition:
            continue
        return txn
    return None


def reversed_kind(
    processing_code: str | None, condition: str | None, message_type: str
) -> Transaction | None:
    """What a reversal undoes, from the original's 3, 25 and 60.1 that it repeats."""
    for txn in TRANSACTIONS:
        if (
            txn.reversible
            and txn.processing_code == processing_code
            and txn.condition == condition
            and txn.message_type == message_type
        ):
            return txn
    return None


def response_mti(mti: str) -> str | None:
    """``0200`` → ``0210``: the answer to a request, advice, notification or instruction (an
    even third digit, ISO 8583's message function), whether or not we take that MTI (one we
    do not is answered ``30``); None for an MTI that is itself an answer (nobody to answer)."""
    if len(mti) != 4 or not mti.isdigit() or mti[2] not in "02468":
        return None
    return f"{mti[:2]}{int(mti[2]) + 1}{mti[3]}"


@dataclass(frozen=True, slots=True)
class Identity:
    """What makes a request the same request (spec §3): MTI, 41, 42, 60.2, 11."""

    mti: str
    terminal_id: str
    merchant_id: str
    batch: str
    stan: str

    @property
    def lock_key(self) -> tuple[str, str, str, str]:
        """Requests sharing it are handled one at a time: an original and its reversal."""
        return (self.terminal_id, self.merchant_id, self.batch, self.stan)

    @property
    def idempotency_key(self) -> str:
        """The payment's Idempotency-Key: a repeat never makes a second payment, even one
        that slipped past the journal (a crash between the payment and its journal row)."""
        return f"iso8583:{self.mti}:{self.terminal_id}:{self.batch}:{self.stan}"


# Field 22, first two digits: how the card was read.
ENTRY_MODES: Final[Mapping[str, EntryMode]] = {
    "01": EntryMode.MANUAL,
    "02": EntryMode.MAGSTRIPE,
    "05": EntryMode.CHIP,
    "07": EntryMode.CONTACTLESS,
    "90": EntryMode.MAGSTRIPE,
    "91": EntryMode.CONTACTLESS,
    "95": EntryMode.CHIP,
    "96": EntryMode.CHIP,
    "98": EntryMode.CONTACTLESS,
}
ENTRY_MODE_CODES: Final[Mapping[EntryMode, str]] = {
    EntryMode.MANUAL: "01",
    EntryMode.MAGSTRIPE: "02",
    EntryMode.CHIP: "05",
    EntryMode.CONTACTLESS: "07",
}

FIRST_BATCH: Final = "000001"
MAX_BATCH: Final = 999_999


def next_batch(batch: str) -> str:
    """The batch after ``batch`` (999999 wraps to 000001)."""
    return f"{int(batch) % MAX_BATCH + 1:06d}"


def next_stan(stan: str) -> str:
    """The STAN after ``stan`` (999999 wraps to 000001)."""
    return f"{int(stan) % 999_999 + 1:06d}"


def opening_batch(offered: str) -> str:
    """The batch a terminal starts with at its first sign-on: its own, unless it has none."""
    return offered if offered.isdigit() and len(offered) == 6 and int(offered) else FIRST_BATCH
