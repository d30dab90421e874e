"""A product's contract terms, pure: what a merchant agrees to when it takes a terminal.

A contract freezes one ``ContractTerms`` at generation (``as_dict`` is what is stored and
hashed); deposits, settlement and the activation window read them back with ``from_dict``.
The defaults below are the market's (DESIGN.md section 4) and are data, not code paths: a
product's terms can be changed without touching a rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any

from shoudan.core.errors import DomainError, ErrorCode
from shoudan.pricing.domain import Product

__all__ = ["DEFAULT_TERMS", "ContractTerms", "DepositCollection", "SettlementTerm", "terms_for"]


class SettlementTerm(StrEnum):
    T1 = "T1"  # next working day (China's calendar, make-up days included)
    D0 = "D0"  # 秒到: continuously, for the plan's D0 fee


class DepositCollection(StrEnum):
    FIRST_SETTLEMENT = "first_settlement"  # merchant debt at activation, netted at settlement
    UPFRONT = "upfront"  # paid before shipping


@dataclass(frozen=True)
class ContractTerms:
    product: str
    fee_plan_code: str
    deposit_amount: int  # fen; 0 = no deposit
    deposit_collection: DepositCollection
    activation_target: int  # fen of card volume on the terminal within the window
    activation_window_days: int  # counted from activation
    cooling_off_days: int  # returned unused within N days of delivery → full refund
    termination_penalty: int  # fen, taken from the deposit on termination
    monthly_depreciation: int  # fen per started month since activation, linear
    deposit_refund_deadline_days: int  # ask for the deposit back within N days of the event
    settlement_term: SettlementTerm

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.value if isinstance(v, StrEnum) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContractTerms:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["deposit_collection"] = DepositCollection(values["deposit_collection"])
        values["settlement_term"] = SettlementTerm(values["settlement_term"])
        return cls(**values)


def _terms(product: Product, **overrides: Any) -> ContractTerms:
    base: dict[str, Any] = {
        "product": product.value,
        "fee_plan_code": "standard",
        "deposit_amount": 29_900,  # ¥299
        "deposit_collection": DepositCollection.FIRST_SETTLEMENT,
        "activation_target": 10_000_000,  # ¥100,000
        "activation_window_days": 180,
        "cooling_off_days": 30,
        "termination_penalty": 5_000,  # ¥50
        "monthly_depreciation": 1_000,  # ¥10 a month
        "deposit_refund_deadline_days": 365,
        "settlement_term": SettlementTerm.T1,
    }
    base.update(overrides)
    return ContractTerms(**base)


DEFAULT_TERMS: dict[Product, ContractTerms] = {
    Product.EPOS: _terms(Product.EPOS),
    Product.SMART: _terms(Product.SMART, deposit_amount=49_900, monthly_depreciation=1_500),
    Product.TRADITIONAL: _terms(
        Product.TRADITIONAL, deposit_amount=99_900, termination_penalty=10_000,
        monthly_depreciation=2_500,
    ),
}


def terms_for(product: str) -> ContractTerms:
    """The current terms of a product, or ``invalid_input`` naming the product."""
    try:
        return DEFAULT_TERMS[Product(product)]
    except ValueError:
        raise DomainError(
            ErrorCode.INVALID_INPUT, f"unknown product {product!r}", field="product"
        ) from None
