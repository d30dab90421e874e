"""The chart of accounts: every account id the domains post to, in one place.

Ids are ``type:owner-kind:owner:purpose`` (see docs/ledger.md). Merchant accounts are created
with the merchant; platform accounts by ``platform_accounts()`` (idempotent).
"""

from __future__ import annotations

from shoudan.ledger.domain import AccountType
from shoudan.ledger.service import AccountSpec

# -- platform -------------------------------------------------------------------------------
BANK_SETTLEMENT = "asset:bank:settlement"
# Memo (control) accounts: they move only against each other, so they never change the
# balance sheet; their balance limits enforce a rule (TigerBeetle's "balance-bounded" pattern).
REFUND_CAPACITY_CONTROL = "equity:control:refund_capacity"
DEPOSIT_PENALTY_REVENUE = "revenue:deposit:penalty"
DEPOSIT_DEPRECIATION_REVENUE = "revenue:deposit:depreciation"  # the device's wear, kept
NETWORKS = ("unionpay", "wechat", "alipay")
# settlement: payouts sent to the bank and not confirmed yet; D0 (秒到) settlement fees
PAYOUTS_IN_FLIGHT = "liability:payouts:in_flight"
D0_FEE_REVENUE = "revenue:fees:d0_settlement"


def channel_receivable(network: str) -> str:
    """What a card/QR network owes us for captured payments."""
    return f"asset:channel:{network}:receivable"


def channel_payable(network: str) -> str:
    """What we owe a network (refunds), netted at its settlement."""
    return f"liability:channel:{network}:payable"


def fee_revenue(method: str) -> str:
    """Merchant discount fees, by payment method (card, wechat, alipay, unionpay_qr)."""
    return f"revenue:fees:{method}"


FEE_METHODS = ("card", "wechat", "alipay", "unionpay_qr")


def platform_accounts() -> list[AccountSpec]:
    specs = [
        AccountSpec(BANK_SETTLEMENT, AccountType.ASSET, name="settlement bank account"),
        AccountSpec(DEPOSIT_PENALTY_REVENUE, AccountType.REVENUE, name="forfeited deposits"),
        AccountSpec(
            DEPOSIT_DEPRECIATION_REVENUE, AccountType.REVENUE, name="deposit depreciation kept"
        ),
        AccountSpec(REFUND_CAPACITY_CONTROL, AccountType.EQUITY, name="refund capacity (memo)"),
        AccountSpec(
            PAYOUTS_IN_FLIGHT, AccountType.LIABILITY, name="payouts sent, unconfirmed",
            max_debit_balance=0,
        ),
        AccountSpec(D0_FEE_REVENUE, AccountType.REVENUE, name="D0 settlement fees"),
    ]
    for network in NETWORKS:
        specs.append(AccountSpec(channel_receivable(network), AccountType.ASSET))
        specs.append(AccountSpec(channel_payable(network), AccountType.LIABILITY))
    specs.extend(AccountSpec(fee_revenue(m), AccountType.REVENUE) for m in FEE_METHODS)
    return specs


# -- per merchant ---------------------------------------------------------------------------
def merchant_unsettled(merchant_id: str) -> str:
    """Sales net of fees, not yet settled. Never in debit: refunds and voids are funded from
    it and are refused (or wait) when it is short."""
    return f"liability:merchant:{merchant_id}:unsettled"


def merchant_settled(merchant_id: str) -> str:
    """Settled, owed to the merchant until paid out to its own verified bank card."""
    return f"liability:merchant:{merchant_id}:settled"


def merchant_deposit(merchant_id: str) -> str:
    """The terminal deposits (押金) we hold for the merchant."""
    return f"liability:merchant:{merchant_id}:deposit_held"


def merchant_debt(merchant_id: str) -> str:
    """What the merchant owes us (negative settlement nets carried forward): an asset."""
    return f"asset:merchant:{merchant_id}:debt"


def merchant_accounts(merchant_id: str) -> list[AccountSpec]:
    def liability(account_id: str) -> AccountSpec:
        return AccountSpec(
            account_id, AccountType.LIABILITY, owner_type="merchant", owner_id=merchant_id,
            max_debit_balance=0,
        )  # fmt: skip

    debt = AccountSpec(
        merchant_debt(merchant_id), AccountType.ASSET, owner_type="merchant",
        owner_id=merchant_id, max_credit_balance=0,
    )  # fmt: skip
    return [
        liability(merchant_unsettled(merchant_id)),
        liability(merchant_settled(merchant_id)),
        liability(merchant_deposit(merchant_id)),
        debt,
    ]


# -- per payment ----------------------------------------------------------------------------
def refund_capacity(payment_id: str) -> str:
    """Memo account: debited by every refund (held while in flight, posted once refunded) and
    every prepayment redemption, never beyond the captured amount — its ``max_debit_balance``.
    Concurrent refunds of one payment can therefore never exceed it, on any engine."""
    return f"equity:payment:{payment_id}:refund_capacity"


def refund_capacity_account(payment_id: str, captured_amount: int) -> AccountSpec:
    return AccountSpec(
        refund_capacity(payment_id), AccountType.EQUITY, owner_type="payment",
        owner_id=payment_id, max_debit_balance=captured_amount,
    )  # fmt: skip


# -- reconciliation (对账) --------------------------------------------------------------------
# A difference found against a channel's statement is parked in suspense by an adjustment
# (until someone traces it), or written off: a gain when the channel paid more than we booked,
# an expense when it paid less.
RECONCILIATION_SUSPENSE = "liability:reconciliation:suspense"
RECONCILIATION_WRITE_OFF_GAIN = "revenue:reconciliation:write_off"
RECONCILIATION_WRITE_OFF_LOSS = "expense:reconciliation:write_off"


def reconciliation_accounts() -> list[AccountSpec]:
    return [
        AccountSpec(RECONCILIATION_SUSPENSE, AccountType.LIABILITY, name="reconciliation suspense"),
        AccountSpec(RECONCILIATION_WRITE_OFF_GAIN, AccountType.REVENUE, name="written-off surplus"),
        AccountSpec(RECONCILIATION_WRITE_OFF_LOSS, AccountType.EXPENSE, name="written-off loss"),
    ]
