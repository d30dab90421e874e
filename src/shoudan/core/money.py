"""Money as an integer number of minor units (fen) plus a currency. Never a float.

``Money.parse`` is strict on purpose: amounts arrive from merchants, terminals and files,
and a silently "fixed" amount is worse than a refused one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Final

from shoudan.core.errors import DomainError, ErrorCode

# currency code -> (symbol, minor-unit exponent). Only CNY is settled today.
CURRENCIES: Final[dict[str, tuple[str, int]]] = {"CNY": ("¥", 2)}
DEFAULT_CURRENCY: Final = "CNY"
# Largest amount accepted from text: ¥10,000,000,000,000.00 (10^15 fen) — far above any real
# payment, far below BIGINT. The text length bound keeps parsing cheap on hostile input.
MAX_PARSED_MINOR: Final = 10**15
MAX_TEXT_LENGTH: Final = 40

# "1234", "1234.5", "1,234.56", optionally signed and prefixed by ¥ or "CNY ".
_AMOUNT_RE = re.compile(
    r"^(?P<sign>-)?(?:(?P<symbol>¥)|(?P<code>[A-Z]{3}) ?)?"
    r"(?P<int>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.(?P<frac>[0-9]{1,2}))?$"
)


def check_currency(currency: str) -> str:
    if currency not in CURRENCIES:
        raise DomainError(ErrorCode.INVALID_CURRENCY, f"unsupported currency {currency!r}")
    return currency


def check_minor(amount_minor: object) -> int:
    """Accept only a real ``int`` (not bool, not float, not Decimal) as a minor-unit amount."""
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
        raise DomainError(
            ErrorCode.INVALID_AMOUNT,
            f"amount must be an integer number of fen, got {type(amount_minor).__name__}",
        )
    return amount_minor


def round_half_up(value: Decimal) -> int:
    """The one rounding rule of shoudan: half-up (away from zero on .5) to a whole fen."""
    if not value.is_finite():
        raise DomainError(ErrorCode.INVALID_AMOUNT, "cannot round a non-finite amount")
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def apply_rate(amount_minor: int, rate_bp: Decimal | int) -> int:
    """amount × rate (in basis points), rounded half-up to the fen. 0.60% is ``Decimal(60)``."""
    check_minor(amount_minor)
    if isinstance(rate_bp, bool) or not isinstance(rate_bp, Decimal | int):
        raise DomainError(ErrorCode.INVALID_INPUT, "a rate is a Decimal (or int) of basis points")
    return round_half_up(Decimal(amount_minor) * Decimal(rate_bp) / Decimal(10_000))


@dataclass(frozen=True, slots=True, order=False)
class Money:
    amount_minor: int
    currency: str = DEFAULT_CURRENCY

    def __post_init__(self) -> None:
        check_minor(self.amount_minor)
        check_currency(self.currency)

    # -- construction -------------------------------------------------------------
    @classmethod
    def parse(cls, text: object, currency: str = DEFAULT_CURRENCY) -> Money:
        """Parse a decimal string such as ``"12.34"``, ``"¥1,234.56"`` or ``"CNY 5"``.

        Refuses floats, NaN/infinity, exponents, more decimals than the currency has,
        and a currency other than the expected one.
        """
        check_currency(currency)
        if not isinstance(text, str):
            raise DomainError(
                ErrorCode.INVALID_AMOUNT,
                f"amount must be a decimal string, got {type(text).__name__}",
            )
        if len(text) > MAX_TEXT_LENGTH:
            raise DomainError(ErrorCode.INVALID_AMOUNT, "amount text is too long")
        match = _AMOUNT_RE.match(text.strip())
        if match is None:
            raise DomainError(ErrorCode.INVALID_AMOUNT, f"not a valid amount: {text!r}")
        symbol, exponent = CURRENCIES[currency]
        code = match["code"]
        if code is not None and code != currency:
            raise DomainError(
                ErrorCode.CURRENCY_MISMATCH, f"expected {currency}, got {code} in {text!r}"
            )
        if match["symbol"] is not None and match["symbol"] != symbol:
            raise DomainError(ErrorCode.CURRENCY_MISMATCH, f"expected {currency} in {text!r}")
        frac = match["frac"] or ""
        if len(frac) > exponent:
            raise DomainError(
                ErrorCode.INVALID_AMOUNT, f"{currency} has {exponent} decimals: {text!r}"
            )
        units = int(match["int"].replace(",", ""))
        minor = units * 10**exponent + int(frac.ljust(exponent, "0") or 0)
        if minor > MAX_PARSED_MINOR:
            raise DomainError(ErrorCode.INVALID_AMOUNT, f"amount too large: {text!r}")
        return cls(-minor if match["sign"] else minor, currency)

    @classmethod
    def from_decimal(cls, value: Decimal, currency: str = DEFAULT_CURRENCY) -> Money:
        """Exact conversion; refuses a value with more decimals than the currency has."""
        check_currency(currency)
        if not isinstance(value, Decimal) or not value.is_finite():
            raise DomainError(ErrorCode.INVALID_AMOUNT, f"not a finite Decimal: {value!r}")
        scaled = value.scaleb(CURRENCIES[currency][1])
        try:
            exact = scaled.to_integral_exact()
        except InvalidOperation as exc:  # pragma: no cover - decimal traps are off by default
            raise DomainError(ErrorCode.INVALID_AMOUNT, str(exc)) from exc
        if exact != scaled:
            raise DomainError(ErrorCode.INVALID_AMOUNT, f"too many decimals: {value}")
        return cls(int(exact), currency)

    # -- presentation ---------------------------------------------------------------
    def to_decimal(self) -> Decimal:
        return Decimal(self.amount_minor).scaleb(-CURRENCIES[self.currency][1])

    def plain(self) -> str:
        """``"1234.56"``: the machine form, as accepted by :meth:`parse`."""
        exponent = CURRENCIES[self.currency][1]
        sign = "-" if self.amount_minor < 0 else ""
        units, minor = divmod(abs(self.amount_minor), 10**exponent)
        return f"{sign}{units}.{minor:0{exponent}d}"

    def format(self) -> str:
        """``"¥1,234.56"`` (negative: ``"-¥1,234.56"``): the human form."""
        symbol, exponent = CURRENCIES[self.currency]
        sign = "-" if self.amount_minor < 0 else ""
        units, minor = divmod(abs(self.amount_minor), 10**exponent)
        return f"{sign}{symbol}{units:,}.{minor:0{exponent}d}"

    def __str__(self) -> str:
        return self.format()

    # -- arithmetic -----------------------------------------------------------------
    def _same(self, other: Money) -> None:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise DomainError(
                ErrorCode.CURRENCY_MISMATCH, f"{self.currency} and {other.currency} do not mix"
            )

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor + other.amount_minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor - other.amount_minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount_minor, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount_minor < other.amount_minor

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.amount_minor <= other.amount_minor

    def __gt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount_minor > other.amount_minor

    def __ge__(self, other: Money) -> bool:
        self._same(other)
        return self.amount_minor >= other.amount_minor

    def is_positive(self) -> bool:
        return self.amount_minor > 0

    def require_positive(self) -> Money:
        if self.amount_minor <= 0:
            raise DomainError(ErrorCode.INVALID_AMOUNT, f"amount must be positive, got {self}")
        return self
