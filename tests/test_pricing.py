"""Fee plans: the fee table, caps and rounding at their boundaries, promotions, limits, and
plans surviving JSON and both databases unchanged."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoudan.core.clock import SHANGHAI, FixedClock
from shoudan.core.db import Database
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.pricing import service
from shoudan.pricing.domain import (
    DEFAULT_PLANS,
    FeeCategory,
    FeePlan,
    FeeQuote,
    Limits,
    Product,
    Promotion,
    RateRule,
    category_for,
    check_limits,
    plan_from_dict,
    plan_to_dict,
    quote,
)

PLANS = {plan.code: plan for plan in DEFAULT_PLANS}
STANDARD = PLANS["standard"]
PROMO = PLANS["promo-2026"]
D0 = PLANS["d0"]
AT = datetime(2025, 6, 1, 12, tzinfo=UTC)  # outside every default promotion
IN_PROMO = datetime(2026, 6, 1, 12, tzinfo=UTC)

E, S, T = Product.EPOS, Product.SMART, Product.TRADITIONAL
C = FeeCategory


def fee(
    plan: FeePlan, product: Product, category: FeeCategory, amount: int, at: datetime = AT
) -> int:
    return quote(plan, product, category, amount, at).fee


# -- the fee table (DESIGN.md §4) ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("product", "category", "amount", "expected"),
    [
        # ¥100.00 at each rate
        (E, C.CARD_CREDIT, 10_000, 60),
        (E, C.CARD_DEBIT, 10_000, 50),
        (E, C.WECHAT, 10_000, 38),
        (E, C.ALIPAY, 10_000, 38),
        (E, C.UNIONPAY_QR, 10_000, 38),
        (E, C.CONTACTLESS, 10_000, 38),
        (S, C.CARD_CREDIT, 10_000, 60),
        (S, C.CARD_DEBIT, 10_000, 50),
        (S, C.WECHAT, 10_000, 38),
        (S, C.CONTACTLESS, 10_000, 38),
        (T, C.CARD_CREDIT, 10_000, 60),
        (T, C.CARD_DEBIT, 10_000, 55),
        (T, C.ALIPAY, 10_000, 38),
        (T, C.CONTACTLESS, 10_000, 38),
        # the debit cap: ¥4,000.00 at 0.50% is exactly ¥20.00; one fen more is capped
        (E, C.CARD_DEBIT, 400_000, 2000),
        (E, C.CARD_DEBIT, 400_001, 2000),
        (E, C.CARD_DEBIT, 399_999, 2000),  # 1999.995 rounds half-up to 2000
        (E, C.CARD_DEBIT, 399_998, 2000),  # 1999.99 rounds to 2000 too
        (E, C.CARD_DEBIT, 399_899, 1999),  # 1999.495 → 1999
        (E, C.CARD_DEBIT, 50_000_000, 2000),
        # 传统大POS: 0.55% reaches ¥20 at ¥3,636.37 (1999.98... → 2000); below is uncapped
        (T, C.CARD_DEBIT, 363_636, 2000),  # 1999.998 → 2000
        (T, C.CARD_DEBIT, 363_500, 1999),  # 1999.25 → 1999
        (T, C.CARD_DEBIT, 1_000_000, 2000),
        # credit is never capped
        (E, C.CARD_CREDIT, 5_000_000, 30_000),
        # rounding: half-up at exactly .5 fen
        (E, C.CARD_CREDIT, 1, 0),  # 0.006
        (E, C.CARD_CREDIT, 83, 0),  # 0.498
        (E, C.CARD_CREDIT, 84, 1),  # 0.504
        (E, C.CARD_DEBIT, 100, 1),  # 0.5 exactly → 1
        (E, C.CARD_DEBIT, 99, 0),  # 0.495 → 0
        (E, C.CARD_DEBIT, 300, 2),  # 1.5 → 2
        (E, C.CARD_DEBIT, 500, 3),  # 2.5 → 3 (half-up, not banker's)
        (E, C.WECHAT, 131, 0),  # 0.4978
        (E, C.WECHAT, 132, 1),  # 0.5016
        (E, C.WECHAT, 2500, 10),  # 9.5 exactly → 10
        (E, C.CONTACTLESS, 7500, 29),  # 28.5 exactly → 29
        (T, C.CARD_DEBIT, 1000, 6),  # 5.5 → 6
    ],
)
def test_fee_table(product: Product, category: FeeCategory, amount: int, expected: int) -> None:
    q = quote(STANDARD, product, category, amount, AT)
    assert q.fee == expected
    assert q.net == amount - expected
    assert q.promotion is None


def test_quote_carries_rate_and_cap() -> None:
    q = quote(STANDARD, "epos", "card_debit", 400_001, AT)
    assert q == FeeQuote(400_001, 2000, 398_001, Decimal(50), 2000, None)
    assert quote(STANDARD, T, C.CARD_CREDIT, 100, AT).cap is None


def test_sale_in_the_design_notes() -> None:
    """DESIGN.md §3: a ¥100.00 sale at 0.60% nets the merchant ¥99.40."""
    q = quote(STANDARD, E, C.CARD_CREDIT, 10_000, AT)
    assert (q.fee, q.net) == (60, 9_940)


@pytest.mark.parametrize("amount", [0, -1, -10_000])
def test_non_positive_amounts_are_refused(amount: int) -> None:
    with pytest.raises(DomainError) as err:
        quote(STANDARD, E, C.CARD_CREDIT, amount, AT)
    assert err.value.code is ErrorCode.INVALID_AMOUNT


@pytest.mark.parametrize("amount", [1.5, Decimal(100), "100", True])
def test_non_integer_amounts_are_refused(amount: object) -> None:
    with pytest.raises(DomainError) as err:
        quote(STANDARD, E, C.CARD_CREDIT, amount, AT)  # type: ignore[arg-type]
    assert err.value.code is ErrorCode.INVALID_AMOUNT


def test_naive_instant_unknown_product_and_missing_rule_are_refused() -> None:
    with pytest.raises(DomainError) as err:
        quote(STANDARD, E, C.CARD_CREDIT, 100, datetime(2026, 1, 1))
    assert err.value.code is ErrorCode.INVALID_INPUT
    with pytest.raises(DomainError) as err:
        quote(STANDARD, "mpos", C.CARD_CREDIT, 100, AT)
    assert err.value.code is ErrorCode.INVALID_INPUT
    qr_only = FeePlan("qr-only", "QR only", {(E, C.WECHAT): RateRule(Decimal(30))})
    assert quote(qr_only, E, C.WECHAT, 10_000, AT).fee == 30
    with pytest.raises(DomainError) as err:
        quote(qr_only, E, C.CARD_CREDIT, 10_000, AT)
    assert err.value.code is ErrorCode.UNSUPPORTED_METHOD


def test_fractional_rates_are_exact() -> None:
    plan = FeePlan("frac", "fractional", {(E, C.CARD_CREDIT): RateRule(Decimal("52.5"))})
    assert fee(plan, E, C.CARD_CREDIT, 10_000) == 53  # 52.5 → 53
    assert fee(plan, E, C.CARD_CREDIT, 20_000) == 105


@pytest.mark.parametrize("rate", [0.6, Decimal(-1), Decimal(10_001), Decimal("NaN"), True])
def test_bad_rates_are_refused(rate: object) -> None:
    with pytest.raises(DomainError) as err:
        RateRule(rate)  # type: ignore[arg-type]
    assert err.value.code is ErrorCode.INVALID_INPUT


def test_fee_quote_refuses_broken_invariants() -> None:
    with pytest.raises(DomainError):
        FeeQuote(100, 1, 98, Decimal(60), None, None)
    with pytest.raises(DomainError):
        FeeQuote(10_000, 30, 9_970, Decimal(60), 20, None)


# -- categories -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "funding", "entry_mode", "amount", "expected"),
    [
        ("card", "credit", "chip", 10_000, C.CARD_CREDIT),
        ("card", "debit", "chip", 10_000, C.CARD_DEBIT),
        ("card", "debit", "magstripe", 10_000, C.CARD_DEBIT),
        ("card", "credit", None, 10_000, C.CARD_CREDIT),
        ("card", "debit", "manual", 10_000, C.CARD_DEBIT),
        # contactless up to ¥1,000.00 inclusive
        ("card", "debit", "contactless", 100_000, C.CONTACTLESS),
        ("card", "credit", "contactless", 100_000, C.CONTACTLESS),
        ("card", "credit", "contactless", 1, C.CONTACTLESS),
        ("card", "debit", "contactless", 100_001, C.CARD_DEBIT),
        ("card", "credit", "contactless", 100_001, C.CARD_CREDIT),
        ("wechat", None, None, 10_000, C.WECHAT),
        ("alipay", None, None, 10_000, C.ALIPAY),
        ("unionpay_qr", None, None, 10_000, C.UNIONPAY_QR),
        ("unionpay_qr", "debit", "contactless", 10_000, C.UNIONPAY_QR),
    ],
)
def test_category_for(
    method: str, funding: str | None, entry_mode: str | None, amount: int, expected: FeeCategory
) -> None:
    assert category_for(method, funding, entry_mode, amount) is expected


def test_contactless_boundary_fees() -> None:
    """¥1,000.00 contactless debit pays 0.38%; one fen more pays the debit rate."""
    at_ceiling = category_for("card", "debit", "contactless", 100_000)
    above = category_for("card", "debit", "contactless", 100_001)
    assert fee(STANDARD, E, at_ceiling, 100_000) == 380
    assert fee(STANDARD, E, above, 100_001) == 500  # 500.005 → 500


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("cash", None, None, 100), ErrorCode.UNSUPPORTED_METHOD),
        (("card", None, "chip", 100), ErrorCode.INVALID_CARD),
        (("card", "prepaid", "chip", 100), ErrorCode.INVALID_CARD),
        (("card", "debit", "swipe", 100), ErrorCode.INVALID_INPUT),
        (("card", "debit", "chip", 0), ErrorCode.INVALID_AMOUNT),
        (("wechat", None, None, -5), ErrorCode.INVALID_AMOUNT),
    ],
)
def test_category_for_refusals(
    args: tuple[str, str | None, str | None, int], code: ErrorCode
) -> None:
    with pytest.raises(DomainError) as err:
        category_for(*args)
    assert err.value.code is code


# -- promotions -----------------------------------------------------------------------------------
def test_promotion_window_is_half_open_in_shanghai_time() -> None:
    start = datetime(2026, 1, 1, tzinfo=SHANGHAI)
    end = datetime(2027, 1, 1, tzinfo=SHANGHAI)
    for at, expected_rate in [
        (start - timedelta(microseconds=1), 60),
        (start, 55),
        (start.astimezone(UTC), 55),  # 2025-12-31T16:00Z is already 2026 in Shanghai
        (datetime(2025, 12, 31, 23, tzinfo=UTC), 55),
        (datetime(2025, 12, 31, 15, 59, tzinfo=UTC), 60),
        (IN_PROMO, 55),
        (end - timedelta(microseconds=1), 55),
        (end, 60),
    ]:
        q = quote(PROMO, E, C.CARD_CREDIT, 10_000, at)
        assert q.rate_bp == expected_rate, at
        assert q.fee == expected_rate
        assert q.promotion == ("credit-055-2026" if expected_rate == 55 else None)


def test_promotion_only_touches_its_categories() -> None:
    for product in Product:
        assert fee(PROMO, product, C.CARD_CREDIT, 10_000, IN_PROMO) == 55
        assert fee(PROMO, product, C.WECHAT, 10_000, IN_PROMO) == 38
        assert quote(PROMO, product, C.CARD_DEBIT, 10_000, IN_PROMO).promotion is None
    # the standard plan has no promotion, even inside the window
    assert fee(STANDARD, E, C.CARD_CREDIT, 10_000, IN_PROMO) == 60


def _promo(code: str, rate: int, products: frozenset[Product] = frozenset({E})) -> Promotion:
    return Promotion(
        code,
        Decimal(rate),
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 2, 1, tzinfo=UTC),
        frozenset({C.CARD_DEBIT}),
        products,
    )


def test_lowest_promotional_rate_wins_and_cap_still_applies() -> None:
    plan = FeePlan(
        "multi",
        "several promotions",
        {(E, C.CARD_DEBIT): RateRule(Decimal(50), 2000), (S, C.CARD_DEBIT): RateRule(Decimal(50))},
        promotions=(_promo("a", 45), _promo("b", 40), _promo("c", 48)),
    )
    at = datetime(2026, 1, 15, tzinfo=UTC)
    q = quote(plan, E, C.CARD_DEBIT, 10_000, at)
    assert (q.fee, q.rate_bp, q.promotion) == (40, Decimal(40), "b")
    assert quote(plan, E, C.CARD_DEBIT, 10_000_000, at).fee == 2000  # capped
    assert quote(plan, S, C.CARD_DEBIT, 10_000, at).promotion is None  # product not listed


def test_a_promotion_never_raises_the_rate() -> None:
    plan = FeePlan(
        "higher",
        "misconfigured promotion",
        {(E, C.CARD_DEBIT): RateRule(Decimal(50))},
        promotions=(_promo("up", 70),),
    )
    q = quote(plan, E, C.CARD_DEBIT, 10_000, datetime(2026, 1, 15, tzinfo=UTC))
    assert (q.fee, q.promotion) == (50, None)


def test_bad_promotions_are_refused() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for kwargs in [
        {"ends_at": start},  # empty window
        {"starts_at": datetime(2026, 1, 1)},
        {"categories": frozenset()},
        {"products": frozenset()},
        {"code": ""},
    ]:
        values: dict[str, object] = {
            "code": "p",
            "rate_bp": Decimal(40),
            "starts_at": start,
            "ends_at": start + timedelta(days=1),
            "categories": frozenset({C.CARD_DEBIT}),
            "products": frozenset({E}),
        }
        values.update(kwargs)
        with pytest.raises(DomainError) as err:
            Promotion(**values)  # type: ignore[arg-type]
        assert err.value.code is ErrorCode.INVALID_INPUT, kwargs


# -- the default plans ----------------------------------------------------------------------------
def test_default_plans() -> None:
    assert list(PLANS) == ["standard", "promo-2026", "d0"]
    assert STANDARD.d0_fee == 0 and D0.d0_fee == 300
    assert D0.rules == STANDARD.rules == PROMO.rules
    assert len(STANDARD.rules) == len(Product) * len(FeeCategory)  # every pair is priced
    for plan in DEFAULT_PLANS:
        assert plan.refund_fee_policy == "keep"
        assert plan.limits == Limits(5_000_000, 20_000_000, 50_000_000)
    assert PROMO.promotions[0].products == frozenset(Product)
    assert [p.label for p in Product] == ["电签POS", "智能POS", "传统大POS"]


# -- properties -----------------------------------------------------------------------------------
PAIRS = [(plan, p, c) for plan in DEFAULT_PLANS for p in Product for c in FeeCategory]


@given(
    amount=st.integers(min_value=1, max_value=10**10),
    case=st.sampled_from(PAIRS),
    at=st.sampled_from([AT, IN_PROMO, datetime(2026, 12, 31, 15, 59, 59, tzinfo=UTC)]),
)
def test_quote_invariants(
    amount: int, case: tuple[FeePlan, Product, FeeCategory], at: datetime
) -> None:
    plan, product, category = case
    q = quote(plan, product, category, amount, at)
    assert type(q.fee) is int and type(q.net) is int
    assert 0 <= q.fee <= amount
    assert q.net + q.fee == amount
    rule = plan.rules[(product, category)]
    assert q.cap == rule.cap
    if q.cap is not None:
        assert q.fee <= q.cap
    # exactly: half-up of amount × rate, then the cap
    exact = Decimal(amount) * q.rate_bp / 10_000
    uncapped = int(exact) + (1 if exact - int(exact) >= Decimal("0.5") else 0)
    assert q.fee == (uncapped if q.cap is None else min(uncapped, q.cap))


@given(amount=st.integers(min_value=1, max_value=10**10))
def test_fee_is_monotonic_in_amount(amount: int) -> None:
    for product in Product:
        for category in FeeCategory:
            assert fee(STANDARD, product, category, amount) <= fee(
                STANDARD, product, category, amount + 1
            )


# -- limits ---------------------------------------------------------------------------------------
def _limit_of(call: object) -> str:
    assert callable(call)
    with pytest.raises(DomainError) as err:
        call()
    assert err.value.code is ErrorCode.LIMIT_EXCEEDED
    return str(err.value.details["limit"])


def test_limits() -> None:
    limits = Limits()
    check_limits(limits, 5_000_000, 0, 0)  # ¥50,000.00 exactly is allowed
    check_limits(limits, 5_000_000, 15_000_000, 45_000_000)  # both daily totals reached exactly
    assert _limit_of(lambda: check_limits(limits, 5_000_001, 0, 0)) == "per_transaction"
    assert _limit_of(lambda: check_limits(limits, 1, 20_000_000, 0)) == "per_card_daily"
    assert _limit_of(lambda: check_limits(limits, 1, 0, 50_000_000)) == "per_merchant_daily"
    # the first limit broken is reported
    assert _limit_of(lambda: check_limits(limits, 6_000_000, 20_000_000, 0)) == "per_transaction"
    custom = Limits(per_transaction=100, per_card_daily=150, per_merchant_daily=1_000)
    assert _limit_of(lambda: check_limits(custom, 100, 51, 0)) == "per_card_daily"


@pytest.mark.parametrize("args", [(0, 0, 0), (-1, 0, 0), (100, -1, 0), (100, 0, -1), (1.0, 0, 0)])
def test_limit_inputs_are_checked(args: tuple[int, int, int]) -> None:
    with pytest.raises(DomainError) as err:
        check_limits(Limits(), *args)
    assert err.value.code is ErrorCode.INVALID_AMOUNT


def test_limits_must_be_positive() -> None:
    with pytest.raises(DomainError):
        Limits(per_transaction=0)


# -- JSON -----------------------------------------------------------------------------------------
def _custom_plan() -> FeePlan:
    return FeePlan(
        code="custom-1",
        name="商户专属 custom",
        rules={
            (E, C.CARD_DEBIT): RateRule(Decimal("49.5"), 1800),
            (T, C.WECHAT): RateRule(Decimal("0.01")),
        },
        promotions=(
            Promotion(
                "spring",
                Decimal("35.25"),
                datetime(2026, 3, 1, tzinfo=SHANGHAI),
                datetime(2026, 4, 1, 8, 30, tzinfo=UTC),
                frozenset({C.WECHAT, C.CARD_DEBIT}),
                frozenset({T, E}),
            ),
        ),
        d0_fee=150,
        refund_fee_policy="return_pro_rata",
        limits=Limits(1_000_000, 2_000_000, 9_000_000),
    )


@pytest.mark.parametrize("plan", [*DEFAULT_PLANS, _custom_plan()], ids=lambda p: p.code)
def test_json_round_trip(plan: FeePlan) -> None:
    text = json.dumps(plan_to_dict(plan))
    back = plan_from_dict(json.loads(text))
    assert back == plan
    assert plan_to_dict(back) == plan_to_dict(plan)
    for rule in back.rules.values():
        assert isinstance(rule.rate_bp, Decimal)


def test_json_keeps_decimals_as_strings() -> None:
    data = plan_to_dict(_custom_plan())
    assert {"product": "epos", "category": "card_debit", "rate_bp": "49.5", "cap": 1800} in data[
        "rules"
    ]
    assert data["promotions"][0]["rate_bp"] == "35.25"
    assert "float" not in json.dumps(data)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("rules"),
        lambda d: d.update(rules=[{"product": "epos", "category": "wechat", "rate_bp": 0.38}]),
        lambda d: d.update(rules=[{"product": "epos", "category": "wechat", "rate_bp": "x"}]),
        lambda d: d.update(rules=[{"product": "pos", "category": "wechat", "rate_bp": "38"}]),
        lambda d: d.update(rules=d["rules"] + d["rules"][:1]),
        lambda d: d.update(d0_fee="300"),
        lambda d: d.update(d0_fee=True),
        lambda d: d.update(refund_fee_policy="maybe"),
        lambda d: d.update(version=99),
        lambda d: d["promotions"][0].update(starts_at="2026-01-01T00:00:00"),
        lambda d: d["promotions"][0].update(ends_at="soon"),
        lambda d: d["limits"].update(per_transaction=-1),
    ],
)
def test_malformed_json_is_refused(mutate: object) -> None:
    data = json.loads(json.dumps(plan_to_dict(_custom_plan())))
    assert callable(mutate)
    mutate(data)
    with pytest.raises(DomainError) as err:
        plan_from_dict(data)
    assert err.value.code in {ErrorCode.INVALID_INPUT, ErrorCode.INVALID_AMOUNT}


# -- storage --------------------------------------------------------------------------------------
CLOCK = FixedClock(datetime(2026, 11, 23, 9, tzinfo=UTC))


def test_default_plans_are_seeded_idempotently(database: Database) -> None:
    with database.transaction() as session:
        assert service.ensure_default_plans(session, CLOCK) == ["standard", "promo-2026", "d0"]
    with database.transaction() as session:
        assert service.ensure_default_plans(session, CLOCK) == []
    with database.read() as session:
        plans = service.list_plans(session)
        assert [p.code for p in plans] == sorted(PLANS)
        for plan in plans:
            assert plan == PLANS[plan.code]
        assert service.get_plan(session, "promo-2026") == PROMO


def test_plans_round_trip_through_the_database(database: Database) -> None:
    plan = _custom_plan()
    with database.transaction() as session:
        assert service.create_plan(session, plan, CLOCK) is plan
    with database.read() as session:
        stored = service.get_plan(session, "custom-1")
    assert stored == plan
    assert quote(stored, E, C.CARD_DEBIT, 10_000, datetime(2026, 3, 5, tzinfo=UTC)).fee == 35


def test_duplicate_and_missing_plans(database: Database) -> None:
    with database.transaction() as session:
        service.ensure_default_plans(session, CLOCK)
    with pytest.raises(DomainError) as err, database.transaction() as session:
        service.create_plan(session, FeePlan("standard", "again", STANDARD.rules), CLOCK)
    assert err.value.code is ErrorCode.INVALID_INPUT
    with database.read() as session:
        assert service.get_plan(session, "standard").name == STANDARD.name  # not overwritten
        with pytest.raises(DomainError) as err:
            service.get_plan(session, "nope")
        assert err.value.code is ErrorCode.FEE_PLAN_NOT_FOUND


def test_seeding_keeps_an_edited_default(database: Database) -> None:
    """A plan already stored under a default's code is left alone by the seeder."""
    mine = FeePlan("standard", "negotiated", {(E, C.WECHAT): RateRule(Decimal(30))})
    with database.transaction() as session:
        service.create_plan(session, mine, CLOCK)
        assert service.ensure_default_plans(session, CLOCK) == ["promo-2026", "d0"]
    with database.read() as session:
        assert service.get_plan(session, "standard") == mine
