"""Fee plans as data: rates per product and fee category, caps, promotions, limits.

A fee plan is a value, not code, so that a new plan (or a contract's negotiated rates) is a
row in ``fee_plans`` rather than a release. Everything here is pure: the service stores plans
as JSON made by :func:`plan_to_dict` and reads them back with :func:`plan_from_dict`.

Money is integer fen; rates are ``Decimal`` basis points (0.60% is ``Decimal(60)``). The fee
is rounded half-up to the fen first and capped after rounding (DESIGN.md §3), so a capped fee
is exactly the cap and ``net + fee == amount`` always.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

from shoudan.core.clock import SHANGHAI
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.money import apply_rate, check_minor

PLAN_FORMAT_VERSION: Final = 1
MAX_CODE_LENGTH: Final = 32
MAX_NAME_LENGTH: Final = 128
# Contactless card payments up to this amount (inclusive) are priced as ``contactless``
# (小额双免: ¥1,000.00); above it they are priced by the card's funding.
CONTACTLESS_CEILING: Final = 100_000
BP_PER_UNIT: Final = Decimal(10_000)

RefundFeePolicy = Literal["keep", "return_pro_rata"]
REFUND_FEE_POLICIES: Final[tuple[str, ...]] = get_args(RefundFeePolicy)


class Product(StrEnum):
    """The terminal product a payment was taken on; rates differ by product."""

    EPOS = "epos"  # 电签POS
    SMART = "smart"  # 智能POS
    TRADITIONAL = "traditional"  # 传统大POS

    @property
    def label(self) -> str:
        return _PRODUCT_LABELS[self]


_PRODUCT_LABELS: Final = {
    Product.EPOS: "电签POS",
    Product.SMART: "智能POS",
    Product.TRADITIONAL: "传统大POS",
}


class FeeCategory(StrEnum):
    """What a payment is priced as: the rate table's second key."""

    CARD_CREDIT = "card_credit"
    CARD_DEBIT = "card_debit"
    CONTACTLESS = "contactless"
    WECHAT = "wechat"
    ALIPAY = "alipay"
    UNIONPAY_QR = "unionpay_qr"


QR_CATEGORIES: Final = frozenset({FeeCategory.WECHAT, FeeCategory.ALIPAY, FeeCategory.UNIONPAY_QR})
_METHOD_CATEGORIES: Final = {c.value: c for c in QR_CATEGORIES}
_ENTRY_MODES: Final = frozenset({"chip", "magstripe", "contactless", "manual"})
_FUNDING: Final = {"credit": FeeCategory.CARD_CREDIT, "debit": FeeCategory.CARD_DEBIT}


# -- validation helpers ------------------------------------------------------------------------
def _invalid(message: str) -> DomainError:
    return DomainError(ErrorCode.INVALID_INPUT, message)


def _rate(value: object, what: str) -> Decimal:
    """A rate in basis points: a finite Decimal (or int) between 0 and 100%.

    Floats are refused: 0.6 as a float is not 0.6, and a rate feeds every fee.
    """
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise _invalid(f"{what}: a rate is a Decimal (or int) of basis points")
    rate = Decimal(value)
    if not rate.is_finite() or rate < 0 or rate > BP_PER_UNIT:
        raise _invalid(f"{what}: rate must be between 0 and 10000 bp, got {value}")
    return rate


def _aware(value: object, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise _invalid(f"{what} must be a timezone-aware datetime")
    return value


def _product(value: object) -> Product:
    try:
        return Product(value if isinstance(value, str) else "")
    except ValueError:
        raise _invalid(f"unknown product {value!r}") from None


def _category(value: object) -> FeeCategory:
    try:
        return FeeCategory(value if isinstance(value, str) else "")
    except ValueError:
        raise _invalid(f"unknown fee category {value!r}") from None


def _positive_amount(amount: object) -> int:
    value = check_minor(amount)
    if value <= 0:
        raise DomainError(ErrorCode.INVALID_AMOUNT, f"amount must be positive fen, got {value}")
    return value


# -- the plan ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RateRule:
    """One cell of a plan's rate table. ``cap`` (fen) bounds the fee after rounding."""

    rate_bp: Decimal
    cap: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate_bp", _rate(self.rate_bp, "rate rule"))
        if self.cap is not None and check_minor(self.cap) < 0:
            raise _invalid(f"a fee cap cannot be negative, got {self.cap}")


@dataclass(frozen=True, slots=True)
class Promotion:
    """A promotional rate on some products and categories during ``[starts_at, ends_at)``.

    A promotion never raises a rate: when several apply, the lowest rate wins, and the plan's
    own rate wins over a (misconfigured) higher promotional one. The base rule's cap still
    applies. Empty ``products``/``categories`` are refused rather than read as "everything",
    so a typo cannot silently discount the whole book.
    """

    code: str
    rate_bp: Decimal
    starts_at: datetime
    ends_at: datetime
    categories: frozenset[FeeCategory]
    products: frozenset[Product]

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or not 0 < len(self.code) <= MAX_CODE_LENGTH:
            raise _invalid(f"a promotion code is 1-{MAX_CODE_LENGTH} characters")
        object.__setattr__(self, "rate_bp", _rate(self.rate_bp, f"promotion {self.code}"))
        _aware(self.starts_at, f"promotion {self.code} starts_at")
        _aware(self.ends_at, f"promotion {self.code} ends_at")
        if self.ends_at <= self.starts_at:
            raise _invalid(f"promotion {self.code} ends before it starts")
        categories = frozenset(_category(c) for c in self.categories)
        products = frozenset(_product(p) for p in self.products)
        if not categories or not products:
            raise _invalid(f"promotion {self.code} must name its categories and products")
        object.__setattr__(self, "categories", categories)
        object.__setattr__(self, "products", products)

    def applies(self, product: Product, category: FeeCategory, at: datetime) -> bool:
        return (
            product in self.products
            and category in self.categories
            and self.starts_at <= at < self.ends_at
        )


@dataclass(frozen=True, slots=True)
class Limits:
    """Amount limits in fen (DESIGN.md §4): ¥50,000 a transaction, ¥200,000 a card a day,
    ¥500,000 a merchant a day by default."""

    per_transaction: int = 5_000_000
    per_card_daily: int = 20_000_000
    per_merchant_daily: int = 50_000_000

    def __post_init__(self) -> None:
        for name in ("per_transaction", "per_card_daily", "per_merchant_daily"):
            if check_minor(getattr(self, name)) <= 0:
                raise _invalid(f"limit {name} must be positive fen")


@dataclass(frozen=True, slots=True)
class FeePlan:
    """A named set of rates. ``rules`` is keyed by (product, category); a pair the plan does
    not list cannot be priced with it (``quote`` refuses it with UNSUPPORTED_METHOD).

    ``d0_fee`` is the flat per-transaction charge for D0 (秒到) settlement, applied by
    settlement, not by :func:`quote`. ``refund_fee_policy`` says whether a refund returns the
    fee pro rata or the acquirer keeps it (the default, DESIGN.md §4).
    """

    code: str
    name: str
    rules: Mapping[tuple[Product, FeeCategory], RateRule]
    promotions: tuple[Promotion, ...] = ()
    d0_fee: int = 0
    refund_fee_policy: RefundFeePolicy = "keep"
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or not 0 < len(self.code) <= MAX_CODE_LENGTH:
            raise _invalid(f"a plan code is 1-{MAX_CODE_LENGTH} characters")
        if self.code != self.code.strip():
            raise _invalid("a plan code has no surrounding spaces")
        if not isinstance(self.name, str) or not 0 < len(self.name) <= MAX_NAME_LENGTH:
            raise _invalid(f"a plan name is 1-{MAX_NAME_LENGTH} characters")
        rules: dict[tuple[Product, FeeCategory], RateRule] = {}
        for key, rule in dict(self.rules).items():
            if not isinstance(key, tuple) or len(key) != 2:
                raise _invalid("plan rules are keyed by (product, category)")
            if not isinstance(rule, RateRule):
                raise _invalid("plan rules are RateRule values")
            rules[(_product(key[0]), _category(key[1]))] = rule
        if not rules:
            raise _invalid(f"plan {self.code} has no rates")
        object.__setattr__(self, "rules", MappingProxyType(rules))
        promotions = tuple(self.promotions)
        if not all(isinstance(p, Promotion) for p in promotions):
            raise _invalid("plan promotions are Promotion values")
        if len({p.code for p in promotions}) != len(promotions):
            raise _invalid(f"plan {self.code} repeats a promotion code")
        object.__setattr__(self, "promotions", promotions)
        if check_minor(self.d0_fee) < 0:
            raise _invalid("the D0 fee cannot be negative")
        if self.refund_fee_policy not in REFUND_FEE_POLICIES:
            raise _invalid(f"refund_fee_policy is one of {', '.join(REFUND_FEE_POLICIES)}")
        if not isinstance(self.limits, Limits):
            raise _invalid("plan limits are a Limits value")

    def rule(self, product: Product | str, category: FeeCategory | str) -> RateRule:
        key = (_product(product), _category(category))
        try:
            return self.rules[key]
        except KeyError:
            raise DomainError(
                ErrorCode.UNSUPPORTED_METHOD,
                f"fee plan {self.code} has no rate for {key[1]} on {key[0]}",
            ) from None


@dataclass(frozen=True, slots=True)
class FeeQuote:
    """The fee on one amount: ``net + fee == amount`` and ``0 <= fee <= cap`` (when capped).

    ``promotion`` is the code of the promotion whose rate was used, if any.
    """

    amount: int
    fee: int
    net: int
    rate_bp: Decimal
    cap: int | None
    promotion: str | None

    def __post_init__(self) -> None:
        for name in ("amount", "fee", "net"):
            check_minor(getattr(self, name))
        if self.net + self.fee != self.amount:
            raise _invalid("a fee quote must satisfy net + fee == amount")
        if self.fee < 0 or (self.cap is not None and self.fee > self.cap):
            raise _invalid("a fee quote's fee must be between 0 and its cap")


# -- rules -------------------------------------------------------------------------------------
def quote(
    plan: FeePlan,
    product: Product | str,
    category: FeeCategory | str,
    amount: int,
    at: datetime,
) -> FeeQuote:
    """The fee on ``amount`` under ``plan`` at instant ``at`` (promotions are time-bound)."""
    amount = _positive_amount(amount)
    at = _aware(at, "the pricing instant")
    product, category = _product(product), _category(category)
    rule = plan.rule(product, category)
    rate, promotion = rule.rate_bp, None
    matching = [p for p in plan.promotions if p.applies(product, category, at)]
    if matching:
        best = min(matching, key=lambda p: (p.rate_bp, p.code))
        if best.rate_bp <= rate:
            rate, promotion = best.rate_bp, best.code
    fee = apply_rate(amount, rate)  # half-up to the fen first...
    if rule.cap is not None:
        fee = min(fee, rule.cap)  # ...then the cap (DESIGN.md §3)
    return FeeQuote(
        amount=amount,
        fee=fee,
        net=amount - fee,
        rate_bp=rate,
        cap=rule.cap,
        promotion=promotion,
    )


def category_for(
    method: str, funding: str | None, entry_mode: str | None, amount: int
) -> FeeCategory:
    """How a payment is priced. QR methods are their own category; a contactless card payment
    up to ¥1,000.00 is ``contactless``; any other card payment is priced by its funding."""
    amount = _positive_amount(amount)
    if method in _METHOD_CATEGORIES:
        return _METHOD_CATEGORIES[method]
    if method != "card":
        raise DomainError(ErrorCode.UNSUPPORTED_METHOD, f"unknown payment method {method!r}")
    if entry_mode is not None and entry_mode not in _ENTRY_MODES:
        raise _invalid(f"unknown entry mode {entry_mode!r}")
    if funding not in _FUNDING:
        raise DomainError(
            ErrorCode.INVALID_CARD, f"card funding must be debit or credit, got {funding!r}"
        )
    if entry_mode == "contactless" and amount <= CONTACTLESS_CEILING:
        return FeeCategory.CONTACTLESS
    return _FUNDING[funding]


def check_limits(limits: Limits, amount: int, card_day_total: int, merchant_day_total: int) -> None:
    """Refuse ``amount`` when it breaks a limit. The totals are what was already approved
    today (business day) for this card and this merchant, not counting ``amount``; pass 0 as
    the card total for QR payments. The error says which limit, in ``details["limit"]``."""
    amount = _positive_amount(amount)
    totals = {"card_day_total": card_day_total, "merchant_day_total": merchant_day_total}
    for name, total in totals.items():
        if check_minor(total) < 0:
            raise DomainError(ErrorCode.INVALID_AMOUNT, f"{name} cannot be negative")
    checks = (
        ("per_transaction", amount, limits.per_transaction),
        ("per_card_daily", card_day_total + amount, limits.per_card_daily),
        ("per_merchant_daily", merchant_day_total + amount, limits.per_merchant_daily),
    )
    for name, value, limit in checks:
        if value > limit:
            raise DomainError(
                ErrorCode.LIMIT_EXCEEDED,
                f"{name} limit exceeded: {value} fen > {limit} fen",
                limit=name,
                value=value,
                maximum=limit,
            )


# -- serialisation -----------------------------------------------------------------------------
def plan_to_dict(plan: FeePlan) -> dict[str, Any]:
    """A JSON-ready dict. Decimals are strings (exact), datetimes ISO 8601 with their offset;
    rules and promotions are sorted so equal plans serialise to equal text."""
    rules = [
        {"product": p.value, "category": c.value, "rate_bp": str(r.rate_bp), "cap": r.cap}
        for (p, c), r in sorted(plan.rules.items(), key=lambda item: item[0])
    ]
    promotions = [
        {
            "code": promo.code,
            "rate_bp": str(promo.rate_bp),
            "starts_at": promo.starts_at.isoformat(),
            "ends_at": promo.ends_at.isoformat(),
            "categories": sorted(c.value for c in promo.categories),
            "products": sorted(p.value for p in promo.products),
        }
        for promo in plan.promotions
    ]
    return {
        "version": PLAN_FORMAT_VERSION,
        "code": plan.code,
        "name": plan.name,
        "rules": rules,
        "promotions": promotions,
        "d0_fee": plan.d0_fee,
        "refund_fee_policy": plan.refund_fee_policy,
        "limits": {
            "per_transaction": plan.limits.per_transaction,
            "per_card_daily": plan.limits.per_card_daily,
            "per_merchant_daily": plan.limits.per_merchant_daily,
        },
    }


def _get(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in data:
        raise _invalid(f"fee plan JSON: missing {key!r}")
    value = data[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise _invalid(f"fee plan JSON: {key!r} has the wrong type")
    return value


def _decimal(text: object, what: str) -> Decimal:
    if not isinstance(text, str):
        raise _invalid(f"fee plan JSON: {what} must be a decimal string")
    try:
        return Decimal(text)
    except InvalidOperation:
        raise _invalid(f"fee plan JSON: {what} is not a decimal: {text!r}") from None


def _datetime(text: object, what: str) -> datetime:
    if not isinstance(text, str):
        raise _invalid(f"fee plan JSON: {what} must be an ISO 8601 string")
    try:
        return _aware(datetime.fromisoformat(text), what)
    except ValueError:
        raise _invalid(f"fee plan JSON: {what} is not a datetime: {text!r}") from None


def plan_from_dict(data: Mapping[str, Any]) -> FeePlan:
    """The inverse of :func:`plan_to_dict`; refuses anything malformed with INVALID_INPUT."""
    if not isinstance(data, Mapping):
        raise _invalid("fee plan JSON must be an object")
    if data.get("version", PLAN_FORMAT_VERSION) != PLAN_FORMAT_VERSION:
        raise _invalid(f"unsupported fee plan format version {data.get('version')!r}")
    rules: dict[tuple[Product, FeeCategory], RateRule] = {}
    for item in _get(data, "rules", list):
        if not isinstance(item, Mapping):
            raise _invalid("fee plan JSON: a rule must be an object")
        key = (_product(item.get("product")), _category(item.get("category")))
        if key in rules:
            raise _invalid(f"fee plan JSON: rule {key[0]}/{key[1]} appears twice")
        cap = item.get("cap")
        if cap is not None:
            check_minor(cap)
        rules[key] = RateRule(_decimal(item.get("rate_bp"), "rate_bp"), cap)
    promotions = []
    for item in _get(data, "promotions", list):
        if not isinstance(item, Mapping):
            raise _invalid("fee plan JSON: a promotion must be an object")
        promotions.append(
            Promotion(
                code=_get(item, "code", str),
                rate_bp=_decimal(item.get("rate_bp"), "promotion rate_bp"),
                starts_at=_datetime(item.get("starts_at"), "starts_at"),
                ends_at=_datetime(item.get("ends_at"), "ends_at"),
                categories=frozenset(_category(c) for c in _get(item, "categories", list)),
                products=frozenset(_product(p) for p in _get(item, "products", list)),
            )
        )
    limits = _get(data, "limits", Mapping)
    return FeePlan(
        code=_get(data, "code", str),
        name=_get(data, "name", str),
        rules=rules,
        promotions=tuple(promotions),
        d0_fee=_get(data, "d0_fee", int),
        refund_fee_policy=_get(data, "refund_fee_policy", str),
        limits=Limits(
            per_transaction=_get(limits, "per_transaction", int),
            per_card_daily=_get(limits, "per_card_daily", int),
            per_merchant_daily=_get(limits, "per_merchant_daily", int),
        ),
    )


# -- the default plans (DESIGN.md §4) ----------------------------------------------------------
def _table(
    credit: int, debit: int, debit_cap: int | None, qr: int, contactless: int
) -> dict[FeeCategory, RateRule]:
    row = {
        FeeCategory.CARD_CREDIT: RateRule(Decimal(credit)),
        FeeCategory.CARD_DEBIT: RateRule(Decimal(debit), debit_cap),
        FeeCategory.CONTACTLESS: RateRule(Decimal(contactless)),
    }
    row.update({category: RateRule(Decimal(qr)) for category in QR_CATEGORIES})
    return row


def _rules(
    rows: Mapping[Product, Mapping[FeeCategory, RateRule]],
) -> dict[tuple[Product, FeeCategory], RateRule]:
    return {(p, category): rule for p, row in rows.items() for category, rule in row.items()}


def _all(values: Iterable[Product]) -> frozenset[Product]:
    return frozenset(values)


# 电签POS and 智能POS: credit 0.60%, debit 0.50% capped at ¥20, QR and contactless 0.38%;
# 传统大POS: debit 0.55% capped at ¥20, the rest as 电签POS.
STANDARD_RULES: Final = MappingProxyType(
    _rules(
        {
            Product.EPOS: _table(credit=60, debit=50, debit_cap=2000, qr=38, contactless=38),
            Product.SMART: _table(credit=60, debit=50, debit_cap=2000, qr=38, contactless=38),
            Product.TRADITIONAL: _table(credit=60, debit=55, debit_cap=2000, qr=38, contactless=38),
        }
    )
)

PROMO_2026: Final = Promotion(
    code="credit-055-2026",
    rate_bp=Decimal(55),
    starts_at=datetime(2026, 1, 1, tzinfo=SHANGHAI),
    ends_at=datetime(2027, 1, 1, tzinfo=SHANGHAI),
    categories=frozenset({FeeCategory.CARD_CREDIT}),
    products=_all(Product),
)

DEFAULT_PLANS: Final[tuple[FeePlan, ...]] = (
    FeePlan(code="standard", name="标准费率 Standard", rules=STANDARD_RULES),
    FeePlan(
        code="promo-2026",
        name="2026 信用卡优惠 Credit promotion 2026",
        rules=STANDARD_RULES,
        promotions=(PROMO_2026,),
    ),
    FeePlan(code="d0", name="D0 秒到 Same-day settlement", rules=STANDARD_RULES, d0_fee=300),
)
DEFAULT_PLAN_CODE: Final = "standard"
