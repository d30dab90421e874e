"""Demo data: a small acquirer's books for a first look (``shoudan demo``).

``seed(database)`` is idempotent: accounts are created with ``Ledger.create_accounts`` (an
identical definition is accepted again) and every entry has a fixed id (a repeated id answers
``exists``), so seeding twice changes nothing. One audit record (``demo.seeded``) is written
the first time only.

Chart of accounts
=================

Signs follow the ledger: a posting's amount is signed fen, debit > 0, credit < 0; an account's
``balance`` is debits − credits, so liabilities and revenue normally show a negative balance.

Platform (the acquirer itself):

* ``asset:channel:unionpay:receivable`` (asset): card money UnionPay owes us for captured sales;
* ``asset:bank:settlement`` (asset): our settlement (reserve) bank account; channel settlements
  land here, merchant payouts leave from it;
* ``liability:channel:unionpay:payable`` (liability): refunds we owe UnionPay, netted at its
  settlement;
* ``revenue:fees:card`` (revenue): merchant discount fees on card and QR sales;
* ``revenue:deposit:penalty`` (revenue): terminal deposits forfeited (penalty, damage).

Per merchant (``<mid>`` is the 15-digit UnionPay merchant id; demo: ``898310058120001``, a
noodle house, and ``898310053990002``, a corner shop), all liabilities that may never go into
debit (``max_debit_balance=0``: the merchant cannot owe us through them):

* ``liability:merchant:<mid>:unsettled``: sales net of fees, not yet settled; voids, refunds
  and completion fees are funded from it;
* ``liability:merchant:<mid>:payable``: settled, owed to the merchant until the payout to its
  own verified bank card (一清);
* ``liability:merchant:<mid>:deposit_held``: the terminal deposit (押金) we hold.

Typical entries (as seeded below)
=================================

* **sale** ¥100.00 at 0.60%: receivable +100.00; merchant unsettled −99.40; fees −0.60
  (the fee is ``apply_rate``, half-up to the fen; debit cards are capped at ¥20 after rounding);
* **void** (撤销): the exact opposite of the sale, same day, before settlement;
* **refund** (退货, fee kept): merchant unsettled +50.00; UnionPay payable −50.00;
* **pre-authorisation** (预授权): a two-leg hold (receivable +, merchant unsettled −); the
  completion posts part of it, linked with its fee transfer; an open one stays pending;
* **channel settlement**: bank +net; UnionPay payable +refunds; receivable −captured;
* **merchant settlement** (T+1): unsettled → payable; then **payout**: payable → bank;
* **deposit**: payable → deposit held; on penalty, deposit held → penalty revenue; the rest is
  paid out (deposit held → bank).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import text

from shoudan.audit.service import record
from shoudan.core.db import Database
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.money import apply_rate
from shoudan.ledger.domain import (
    AccountType,
    BatchItem,
    EntryResult,
    Hold,
    Linked,
    PostHold,
    Posting,
    Transfer,
    hold,
    transfer,
)
from shoudan.ledger.service import AccountSpec, Ledger

# -- the chart -----------------------------------------------------------------------------------

RECEIVABLE = "asset:channel:unionpay:receivable"
BANK = "asset:bank:settlement"
CHANNEL_PAYABLE = "liability:channel:unionpay:payable"
FEES = "revenue:fees:card"
PENALTIES = "revenue:deposit:penalty"

NOODLES = "898310058120001"  # a noodle restaurant (MCC 5812)
GROCER = "898310053990002"  # a convenience store (MCC 5499)
MERCHANTS = {NOODLES: "兰州拉面 Demo Noodle House", GROCER: "便利店 Demo Corner Shop"}

# rates in basis points (DESIGN.md section 4)
CREDIT_BP = 60  # 电签POS credit 0.60%
DEBIT_BP = 50  # 电签POS debit 0.50% ...
DEBIT_CAP = 2_000  # ... capped at ¥20.00
QR_BP = 38  # QR 0.38%
DEPOSIT = 9_900  # ¥99.00 terminal deposit

DEMO_ACTION = "demo.seeded"


def unsettled(mid: str) -> str:
    return f"liability:merchant:{mid}:unsettled"


def payable(mid: str) -> str:
    return f"liability:merchant:{mid}:payable"


def deposit_held(mid: str) -> str:
    return f"liability:merchant:{mid}:deposit_held"


def chart() -> list[AccountSpec]:
    """Every demo account (platform accounts first, then two per-merchant sets)."""
    specs = [
        AccountSpec(RECEIVABLE, AccountType.ASSET, name="UnionPay receivable",
                    owner_type="channel", owner_id="unionpay"),
        AccountSpec(BANK, AccountType.ASSET, name="Settlement bank account"),
        AccountSpec(CHANNEL_PAYABLE, AccountType.LIABILITY, name="UnionPay payable (refunds)",
                    owner_type="channel", owner_id="unionpay"),
        AccountSpec(FEES, AccountType.REVENUE, name="Card and QR fee revenue"),
        AccountSpec(PENALTIES, AccountType.REVENUE, name="Forfeited terminal deposits"),
    ]  # fmt: skip
    for mid, label in MERCHANTS.items():
        specs += [
            AccountSpec(unsettled(mid), AccountType.LIABILITY, name=f"{label}: unsettled",
                        owner_type="merchant", owner_id=mid, max_debit_balance=0),
            AccountSpec(payable(mid), AccountType.LIABILITY, name=f"{label}: payable",
                        owner_type="merchant", owner_id=mid, max_debit_balance=0),
            AccountSpec(deposit_held(mid), AccountType.LIABILITY, name=f"{label}: deposit held",
                        owner_type="merchant", owner_id=mid, max_debit_balance=0),
        ]  # fmt: skip
    return specs


# -- building the entries ------------------------------------------------------------------------


@dataclass
class _Book:
    """Builds the demo entries with fixed ids and keeps a running tally of posted balances,
    so settlements move exactly what the earlier entries left (all pure, deterministic)."""

    batches: list[list[BatchItem]] = field(default_factory=list)
    posted: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sales: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    _seq: int = 0

    def day(self) -> None:
        """Start a new batch (one ``submit``; entries of a batch share a timestamp)."""
        self.batches.append([])

    def _id(self, kind: str, subject: str) -> str:
        self._seq += 1
        return f"demo:{self._seq:03d}:{kind}:{subject}"

    def _tally(self, postings: tuple[Posting, ...]) -> None:
        for posting in postings:
            self.posted[posting.account_id] += posting.amount

    def _add(self, item: BatchItem) -> None:
        self.batches[-1].append(item)

    def _transfer(self, kind: str, subject: str, legs: list[tuple[str, int]], note: str) -> str:
        entry_id = self._id(kind, subject)
        postings = tuple(Posting(account, amount) for account, amount in legs if amount != 0)
        self._add(Transfer(entry_id, postings, code=kind, description=note))
        self._tally(postings)
        return entry_id

    def sale(self, mid: str, amount: int, rate_bp: int, note: str, cap: int | None = None) -> str:
        fee = apply_rate(amount, rate_bp)
        if cap is not None:
            fee = min(fee, cap)  # caps apply after rounding
        legs = [(RECEIVABLE, amount), (unsettled(mid), -(amount - fee)), (FEES, -fee)]
        entry_id = self._transfer("sale", mid, legs, note)
        self.sales[entry_id] = legs
        return entry_id

    def void(self, sale_id: str, mid: str) -> str:
        legs = [(account, -amount) for account, amount in self.sales[sale_id]]
        return self._transfer("void", mid, legs, f"撤销 void of {sale_id}")

    def refund(self, mid: str, amount: int, note: str) -> str:
        return self._transfer(
            "refund", mid, [(unsettled(mid), amount), (CHANNEL_PAYABLE, -amount)], note
        )

    def preauth(self, mid: str, amount: int, note: str) -> str:
        entry_id = self._id("preauth", mid)
        request = hold(entry_id, RECEIVABLE, unsettled(mid), amount, code="preauth",
                       description=note)  # fmt: skip
        self._add(request)
        self.holds[entry_id] = request
        return entry_id

    def complete(self, hold_id: str, mid: str, amount: int, rate_bp: int, note: str) -> str:
        """预授权完成: post ``amount`` of the hold, linked with its fee."""
        post_id = self._id("preauth_done", mid)
        fee = apply_rate(amount, rate_bp)
        fee_id = self._id("fee", mid)
        self._add(
            Linked(
                (
                    PostHold(post_id, hold_id, amount, code="preauth_done", description=note),
                    transfer(fee_id, unsettled(mid), FEES, fee, code="fee",
                             description=f"fee on {post_id}"),
                )
            )
        )  # fmt: skip
        self._tally((Posting(RECEIVABLE, amount), Posting(unsettled(mid), -amount)))
        self._tally((Posting(unsettled(mid), fee), Posting(FEES, -fee)))
        return post_id

    def channel_settlement(self, note: str) -> str:
        """UnionPay pays what it owes for captured sales, net of the refunds we owe it."""
        receivable = self.posted[RECEIVABLE]
        refunds = -self.posted[CHANNEL_PAYABLE]
        return self._transfer(
            "channel_settle",
            "unionpay",
            [(BANK, receivable - refunds), (CHANNEL_PAYABLE, refunds), (RECEIVABLE, -receivable)],
            note,
        )

    def settle(self, mid: str, note: str) -> int:
        """T+1: the whole unsettled balance becomes payable; returns the amount."""
        amount = -self.posted[unsettled(mid)]
        self._transfer("settle", mid, [(unsettled(mid), amount), (payable(mid), -amount)], note)
        return amount

    def charge_deposit(self, mid: str, amount: int) -> str:
        return self._transfer(
            "deposit", mid, [(payable(mid), amount), (deposit_held(mid), -amount)],
            "押金 terminal deposit, taken from the first settlement",
        )  # fmt: skip

    def forfeit_deposit(self, mid: str, penalty: int, note: str) -> str:
        held = -self.posted[deposit_held(mid)]
        return self._transfer(
            "deposit_penalty", mid,
            [(deposit_held(mid), held), (PENALTIES, -penalty), (BANK, -(held - penalty))],
            note,
        )  # fmt: skip

    def payout(self, mid: str) -> str:
        amount = -self.posted[payable(mid)]
        return self._transfer(
            "payout", mid, [(payable(mid), amount), (BANK, -amount)],
            "payout to the merchant's verified bank card (一清)",
        )  # fmt: skip


def build() -> list[list[BatchItem]]:
    """The demo entries, as batches in business order."""
    book = _Book()

    book.day()  # day 1: trading
    book.sale(NOODLES, 10_000, CREDIT_BP, "credit card sale ¥100.00")
    big = book.sale(NOODLES, 35_800, CREDIT_BP, "credit card sale ¥358.00 (banquet)")
    wrong = book.sale(NOODLES, 8_888, CREDIT_BP, "credit card sale ¥88.88 (keyed twice)")
    book.sale(GROCER, 2_550, DEBIT_BP, "debit card sale ¥25.50", cap=DEBIT_CAP)
    book.sale(GROCER, 500_000, DEBIT_BP, "debit card sale ¥5,000.00 (fee capped)", cap=DEBIT_CAP)
    book.sale(GROCER, 129_900, CREDIT_BP, "credit card sale ¥1,299.00")
    book.sale(GROCER, 6_660, QR_BP, "UnionPay QR sale ¥66.60")
    book.void(wrong, NOODLES)
    deposit_preauth = book.preauth(NOODLES, 50_000, "预授权 pre-authorisation ¥500.00 (room)")
    book.preauth(GROCER, 20_000, "预授权 pre-authorisation ¥200.00 (still open)")

    book.day()  # day 2: completion, refund
    book.complete(deposit_preauth, NOODLES, 42_000, CREDIT_BP, "预授权完成 completion ¥420.00")
    book.refund(NOODLES, 5_000, f"退货 partial refund ¥50.00 of {big}, fee kept")

    book.day()  # day 3: the channel pays, merchants are settled, deposits taken, paid out
    book.channel_settlement("UnionPay settlement, net of refunds")
    for mid in MERCHANTS:
        book.settle(mid, "T+1 settlement")
        book.charge_deposit(mid, DEPOSIT)
        book.payout(mid)

    book.day()  # day 4: the grocer's damaged terminal: ¥30.00 kept, the rest of the deposit paid
    book.forfeit_deposit(GROCER, 3_000, "terminal returned damaged: ¥30.00 forfeited, rest paid")
    return book.batches


# -- seeding -------------------------------------------------------------------------------------


def _check(results: list[EntryResult]) -> None:
    for result in results:
        if not result.ok:
            raise DomainError(
                result.error or ErrorCode.INTERNAL_ERROR,
                f"demo entry {result.id} refused: {result.message}",
            )


def seed(database: Database) -> None:
    """Load the demo chart of accounts and entries; safe to run any number of times."""
    ledger = Ledger(database)
    ledger.create_accounts(chart())
    for batch in build():
        _check(ledger.submit(batch))
    with database.transaction() as session:
        done = session.execute(
            text("SELECT 1 FROM audit_log WHERE action = :action LIMIT 1"),
            {"action": DEMO_ACTION},
        ).first()
        if done is None:
            record(
                session,
                actor="system:demo",
                action=DEMO_ACTION,
                subject_type="system",
                subject_id="demo",
                after={"accounts": len(chart()), "merchants": sorted(MERCHANTS)},
            )
