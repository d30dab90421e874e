"""The channel port and the sandbox issuer: every row of the spec's sandbox table (§6), the
card rules (Luhn, expiry, PIN), QR payment codes, idempotency, refund queries, and the
open-to-buy card under concurrency — on both of the sandbox's stores (memory and its own
SQLite file). Sharing the file between processes is tested in test_sandbox_store.py."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shoudan.channels.domain import (
    AuthorizeRequest,
    CardData,
    Channel,
    ChannelResult,
    ChannelTimeout,
    EntryMode,
    Funding,
    Network,
    PaymentMethod,
    RefundResult,
    RefundStatus,
    TxnState,
    card_funding,
    card_network,
    luhn_valid,
    qr_method,
    qr_network,
)
from shoudan.channels.sandbox import (
    BALANCES,
    DEFAULT_BALANCE,
    PAN_APPROVE_CREDIT,
    PAN_APPROVE_DEBIT,
    PAN_CARD_CLOSED,
    PAN_EXPIRED,
    PAN_FLAKY_REFUND,
    PAN_INSUFFICIENT_FUNDS,
    PAN_ISSUER_UNAVAILABLE,
    PAN_LOST,
    PAN_NO_ANSWER,
    PAN_OPEN_TO_BUY,
    SandboxChannel,
    auth_code_for,
)
from shoudan.channels.store import MemoryStore, SandboxStore, SqliteStore
from shoudan.core.clock import FixedClock
from shoudan.core.errors import DomainError, ErrorCode

NOW = datetime(2026, 11, 23, 4, tzinfo=UTC)  # 2026-11-23 12:00 Asia/Shanghai
GOOD_EXPIRY = "2812"
PIN = "123456"
OTHER_VALID_PAN = "4111111111111111"  # Luhn-valid, not in the table
WECHAT_CODE = "134567890123456789"
ALIPAY_CODE = "284567890123456789"
UNIONPAY_CODE = "628888888888888888"


STORES = ["memory", "sqlite"]


def open_test_store(kind: str, tmp_path: Path) -> SandboxStore:
    if kind == "memory":
        return MemoryStore()
    return SqliteStore(tmp_path / "sandbox-network.sqlite3")


@pytest.fixture(params=STORES)
def channel(request: pytest.FixtureRequest, tmp_path: Path) -> SandboxChannel:
    store = open_test_store(request.param, tmp_path)
    return SandboxChannel(timeout_seconds=0.01, clock=FixedClock(NOW), store=store)


_counter = iter(range(10**9))


def ref() -> str:
    return f"T{next(_counter):011d}"


def card(
    pan: str,
    *,
    pin: str | None = PIN,
    expiry: str = GOOD_EXPIRY,
    entry_mode: EntryMode = EntryMode.CHIP,
) -> CardData:
    return CardData(pan=pan, expiry=expiry, pin=pin, entry_mode=entry_mode)


def sale(
    channel: SandboxChannel,
    pan: str,
    amount: int = 10_000,
    *,
    reference: str | None = None,
    capture: bool = True,
    **card_kwargs: object,
) -> ChannelResult:
    request = AuthorizeRequest(
        reference=reference or ref(),
        amount=amount,
        currency="CNY",
        card=card(pan, **card_kwargs),  # type: ignore[arg-type]
        auth_code=None,
        capture=capture,
    )
    return channel.authorize(request)


def qr_sale(channel: SandboxChannel, code: str, amount: int = 10_000) -> ChannelResult:
    request = AuthorizeRequest(ref(), amount, "CNY", None, code, True)
    return channel.authorize(request)


def test_sandbox_is_a_channel(channel: SandboxChannel) -> None:
    assert isinstance(channel, Channel)


# -- the sandbox table ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pan", "code"),
    [
        (PAN_APPROVE_DEBIT, "00"),
        (PAN_APPROVE_CREDIT, "00"),
        (PAN_INSUFFICIENT_FUNDS, "51"),
        (PAN_EXPIRED, "54"),
        (PAN_LOST, "41"),
        (PAN_ISSUER_UNAVAILABLE, "91"),
        (PAN_CARD_CLOSED, "00"),
        (PAN_FLAKY_REFUND, "00"),
        (PAN_OPEN_TO_BUY, "00"),
        (OTHER_VALID_PAN, "00"),
        ("6222020000000000019", "14"),  # Luhn fails
        ("6258070000000018", "14"),
    ],
)
def test_sandbox_table(channel: SandboxChannel, pan: str, code: str) -> None:
    result = sale(channel, pan)
    assert result.response_code == code
    assert result.approved is (code == "00")
    assert result.network is Network.UNIONPAY
    assert len(result.channel_reference) == 12
    if result.approved:
        assert result.auth_code is not None and len(result.auth_code) == 6
        assert result.state is TxnState.CAPTURED
    else:
        assert result.auth_code is None
        assert result.state is TxnState.DECLINED


def test_auth_codes_are_deterministic() -> None:
    a, b = SandboxChannel(clock=FixedClock(NOW)), SandboxChannel(clock=FixedClock(NOW))
    first = sale(a, PAN_APPROVE_CREDIT, reference="R-1")
    second = sale(b, PAN_APPROVE_CREDIT, reference="R-1")
    assert first.auth_code == second.auth_code == auth_code_for("R-1")
    assert first.channel_reference == second.channel_reference
    assert auth_code_for("R-1") != auth_code_for("R-2")


def test_no_answer_card_times_out(channel: SandboxChannel) -> None:
    started = time.monotonic()
    with pytest.raises(ChannelTimeout):
        sale(channel, PAN_NO_ANSWER, reference="LOST-1")
    assert time.monotonic() - started >= 0.01
    # nothing happened upstream: query knows nothing, the reversal is acknowledged anyway
    assert channel.query("LOST-1") is None
    reversal = channel.reverse("LOST-1")
    assert reversal.approved and reversal.network is None


# -- balance inquiry (查询) ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pan", "pin", "code", "available"),
    [
        (PAN_APPROVE_DEBIT, PIN, "00", 100_000_000),  # ¥1,000,000.00: "large balance"
        (PAN_APPROVE_CREDIT, None, "00", 5_000_000),
        (PAN_CARD_CLOSED, PIN, "00", BALANCES[PAN_CARD_CLOSED]),
        (PAN_FLAKY_REFUND, None, "00", 2_000_000),
        (PAN_OPEN_TO_BUY, None, "00", 100_000),  # nothing spent yet
        (OTHER_VALID_PAN, None, "00", DEFAULT_BALANCE),
        (PAN_INSUFFICIENT_FUNDS, PIN, "51", None),
        (PAN_EXPIRED, None, "54", None),
        (PAN_LOST, PIN, "41", None),
        (PAN_ISSUER_UNAVAILABLE, None, "91", None),
        ("6222020000000000019", PIN, "14", None),  # Luhn fails
    ],
)
def test_balance_of_every_sandbox_card(
    channel: SandboxChannel, pan: str, pin: str | None, code: str, available: int | None
) -> None:
    result, balance = channel.balance(card(pan, pin=pin))
    assert (result.response_code, result.approved, balance) == (code, code == "00", available)
    assert result.network is Network.UNIONPAY and len(result.channel_reference) == 12
    assert (result.auth_code is not None) is (code == "00")
    assert result.state is None  # nothing happened at the network
    assert channel.balance(card(pan, pin=pin)) == (result, balance)  # deterministic


@pytest.mark.parametrize(
    ("pin", "entry_mode", "code"),
    [
        (PIN, EntryMode.CHIP, "00"),
        ("654321", EntryMode.CHIP, "55"),
        (None, EntryMode.CHIP, "55"),  # a debit card needs its PIN …
        (None, EntryMode.MAGSTRIPE, "55"),
        (None, EntryMode.CONTACTLESS, "00"),  # … except contactless, as for ¥0.00 paid
        ("000000", EntryMode.CONTACTLESS, "55"),  # a PIN given must be right
    ],
)
def test_balance_checks_the_pin_like_an_authorisation(
    channel: SandboxChannel, pin: str | None, entry_mode: EntryMode, code: str
) -> None:
    result, balance = channel.balance(card(PAN_APPROVE_DEBIT, pin=pin, entry_mode=entry_mode))
    assert result.response_code == code
    assert (balance is not None) is (code == "00")
    credit, _ = channel.balance(card(PAN_APPROVE_CREDIT, pin="111111", entry_mode=entry_mode))
    assert credit.response_code == "55"  # a credit card needs none, but a wrong one is wrong


def test_balance_of_the_open_to_buy_card_is_what_remains(channel: SandboxChannel) -> None:
    assert sale(channel, PAN_OPEN_TO_BUY, 60_000, reference="OTB-1").approved
    assert channel.balance(card(PAN_OPEN_TO_BUY))[1] == 40_000
    channel.void("OTB-1")
    assert channel.balance(card(PAN_OPEN_TO_BUY))[1] == 100_000
    # other cards' balances are fixed: they do not move with sales
    sale(channel, PAN_APPROVE_DEBIT, 10_000)
    assert channel.balance(card(PAN_APPROVE_DEBIT))[1] == 100_000_000


def test_balance_of_the_expired_card_follows_the_clock(channel: SandboxChannel) -> None:
    result, balance = channel.balance(card(PAN_APPROVE_CREDIT, expiry="2610"))
    assert (result.response_code, balance) == ("54", None)


def test_balance_of_the_no_answer_card_times_out(channel: SandboxChannel) -> None:
    with pytest.raises(ChannelTimeout):
        channel.balance(card(PAN_NO_ANSWER))
    assert channel.store.records() == []  # nothing recorded


def test_balance_needs_card_data(channel: SandboxChannel) -> None:
    with pytest.raises(DomainError) as err:
        channel.balance("6222020000000000018")  # type: ignore[arg-type]
    assert err.value.code is ErrorCode.INVALID_INPUT


# -- refunds --------------------------------------------------------------------------------------
def test_refund_to_a_normal_card(channel: SandboxChannel) -> None:
    sale(channel, PAN_APPROVE_DEBIT, 10_000, reference="P1")
    first = channel.refund("P1", "RF1", 4_000)
    assert first.status is RefundStatus.SUCCEEDED and first.succeeded and first.reason is None
    # idempotent per refund reference: repeating it refunds nothing more
    assert channel.refund("P1", "RF1", 4_000).status is RefundStatus.SUCCEEDED
    assert channel.refund("P1", "RF2", 6_000).status is RefundStatus.SUCCEEDED
    over = channel.refund("P1", "RF3", 1)
    assert (over.status, over.reason) == (RefundStatus.FAILED_PERMANENT, "exceeds_captured")


def test_refund_to_a_closed_card_fails_permanently(channel: SandboxChannel) -> None:
    assert sale(channel, PAN_CARD_CLOSED, reference="P2").approved
    for _ in range(3):
        result = channel.refund("P2", "RF-closed", 5_000)
        assert result.status is RefundStatus.FAILED_PERMANENT
        assert result.reason == "card_closed"
    # a fresh refund reference fails the same way
    assert channel.refund("P2", "RF-closed-2", 1).reason == "card_closed"


def test_transient_refund_then_retry_succeeds(channel: SandboxChannel) -> None:
    assert sale(channel, PAN_FLAKY_REFUND, 10_000, reference="P3").approved
    first = channel.refund("P3", "RF-a", 3_000)
    assert first.status is RefundStatus.FAILED_TRANSIENT
    retry = channel.refund("P3", "RF-a", 3_000)
    assert retry.status is RefundStatus.SUCCEEDED
    assert channel.refund("P3", "RF-a", 3_000).status is RefundStatus.SUCCEEDED
    # each refund reference gets its own first failure
    assert channel.refund("P3", "RF-b", 7_000).status is RefundStatus.FAILED_TRANSIENT
    assert channel.refund("P3", "RF-b", 7_000).status is RefundStatus.SUCCEEDED
    assert channel.refund("P3", "RF-c", 1).reason == "exceeds_captured"


def test_query_refund_reports_without_refunding(channel: SandboxChannel) -> None:
    sale(channel, PAN_APPROVE_DEBIT, 10_000, reference="QP1")
    assert channel.query_refund("QP1", "RF") is None  # never seen
    assert channel.query_refund("unknown", "RF") is None
    done = channel.refund("QP1", "RF", 4_000)
    assert done.succeeded
    for _ in range(2):  # reading changes nothing
        assert channel.query_refund("QP1", "RF") == done
    # a refusal changes nothing and is not recorded; a reused reference keeps the first refund
    assert channel.refund("QP1", "RF-over", 6_001).reason == "exceeds_captured"
    assert channel.query_refund("QP1", "RF-over") is None
    assert channel.refund("QP1", "RF", 5_000).reason == "refund_reference_reused"
    assert channel.query_refund("QP1", "RF") == done
    # refund references belong to their transaction
    sale(channel, PAN_APPROVE_DEBIT, 10_000, reference="QP2")
    assert channel.query_refund("QP2", "RF") is None


def test_query_refund_never_retries_a_transient_failure(channel: SandboxChannel) -> None:
    assert sale(channel, PAN_FLAKY_REFUND, 10_000, reference="QP3").approved
    failed = channel.refund("QP3", "RF", 3_000)
    assert failed.status is RefundStatus.FAILED_TRANSIENT
    for _ in range(3):
        assert channel.query_refund("QP3", "RF") == RefundResult(
            RefundStatus.FAILED_TRANSIENT, "RF", 3_000, "issuer_unavailable", failed.message
        )
    retried = channel.refund("QP3", "RF", 3_000)  # only the caller's retry performs it
    assert retried.succeeded
    assert channel.query_refund("QP3", "RF") == retried


def test_query_refund_of_a_closed_card(channel: SandboxChannel) -> None:
    sale(channel, PAN_CARD_CLOSED, reference="QP4")
    failed = channel.refund("QP4", "RF", 100)
    queried = channel.query_refund("QP4", "RF")
    assert queried == failed
    assert queried is not None and queried.status is RefundStatus.FAILED_PERMANENT
    assert queried.reason == "card_closed"


def test_refund_refusals(channel: SandboxChannel) -> None:
    assert channel.refund("nope", "RF", 100).reason == "original_not_found"
    sale(channel, PAN_APPROVE_CREDIT, reference="PA", capture=False)
    assert channel.refund("PA", "RF", 100).reason == "not_captured"
    sale(channel, PAN_INSUFFICIENT_FUNDS, reference="DECL")
    assert channel.refund("DECL", "RF", 100).reason == "not_captured"
    sale(channel, PAN_APPROVE_CREDIT, reference="OK")
    assert channel.refund("OK", "RF", 100).succeeded
    assert channel.refund("OK", "RF", 200).reason == "refund_reference_reused"
    with pytest.raises(DomainError) as err:
        channel.refund("OK", "RF9", 0)
    assert err.value.code is ErrorCode.INVALID_AMOUNT


# -- open-to-buy ----------------------------------------------------------------------------------
def test_open_to_buy_runs_out_and_a_void_restores_it(channel: SandboxChannel) -> None:
    assert sale(channel, PAN_OPEN_TO_BUY, 60_000, reference="O1").approved
    assert sale(channel, PAN_OPEN_TO_BUY, 40_000, reference="O2").approved
    assert channel.open_to_buy_remaining() == 0
    refused = sale(channel, PAN_OPEN_TO_BUY, 1, reference="O3")
    assert refused.response_code == "51"
    assert channel.void("O1").approved
    assert channel.open_to_buy_remaining() == 60_000
    assert sale(channel, PAN_OPEN_TO_BUY, 60_000, reference="O4").approved
    assert sale(channel, PAN_OPEN_TO_BUY, 1, reference="O5").response_code == "51"
    assert channel.reverse("O2").approved
    assert channel.open_to_buy_remaining() == 40_000
    # a void or reversal is counted back once, however often it is repeated
    assert channel.void("O1").approved
    assert channel.reverse("O2").approved
    assert channel.open_to_buy_remaining() == 40_000


def test_open_to_buy_single_payment_above_the_limit(channel: SandboxChannel) -> None:
    assert sale(channel, PAN_OPEN_TO_BUY, 100_001).response_code == "51"
    assert sale(channel, PAN_OPEN_TO_BUY, 100_000).approved
    assert channel.open_to_buy_remaining() == 0


def test_open_to_buy_is_per_instance() -> None:
    first, second = SandboxChannel(clock=FixedClock(NOW)), SandboxChannel(clock=FixedClock(NOW))
    assert sale(first, PAN_OPEN_TO_BUY, 100_000).approved
    assert sale(second, PAN_OPEN_TO_BUY, 100_000).approved


def test_parallel_authorisations_never_exceed_open_to_buy(channel: SandboxChannel) -> None:
    """64 threads race ¥30.00-¥70.00 payments on the ¥1,000.00 card."""
    barrier = threading.Barrier(16)
    amounts = [3_000 + (i * 137) % 4_001 for i in range(64)]

    def attempt(i: int) -> tuple[int, bool]:
        if i < 16:
            barrier.wait(timeout=30)
        result = sale(channel, PAN_OPEN_TO_BUY, amounts[i], reference=f"PAR-{i}")
        assert result.response_code in {"00", "51"}
        return amounts[i], result.approved

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(attempt, range(64)))
    approved_total = sum(amount for amount, ok in outcomes if ok)
    assert approved_total <= 100_000
    assert approved_total == 100_000 - channel.open_to_buy_remaining()
    assert any(not ok for _, ok in outcomes)  # the 64 payments add up to far more than ¥1,000


# -- card rules -----------------------------------------------------------------------------------
def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid(PAN_APPROVE_DEBIT)
    assert not luhn_valid("4111111111111112")
    assert not luhn_valid("41111111111111a1")
    assert not luhn_valid("")
    assert not luhn_valid("0000000000")  # too short to be a card
    assert not luhn_valid("4" + "0" * 19)  # too long
    assert not luhn_valid("٤١١١١١١١١١١١١١١١")  # non-ASCII digits


def test_funding_and_network() -> None:
    assert card_funding(PAN_APPROVE_DEBIT) is Funding.DEBIT
    assert card_funding(PAN_APPROVE_CREDIT) is Funding.CREDIT
    assert card_funding(OTHER_VALID_PAN) is Funding.CREDIT
    assert card_network(PAN_APPROVE_DEBIT) is Network.UNIONPAY
    with pytest.raises(DomainError) as err:
        card_funding("not a pan")
    assert err.value.code is ErrorCode.INVALID_CARD


@pytest.mark.parametrize(
    ("expiry", "code"),
    [("2611", "00"), ("2612", "00"), ("3001", "00"), ("2610", "54"), ("2001", "54")],
)
def test_expiry_against_the_clock(channel: SandboxChannel, expiry: str, code: str) -> None:
    """The card is valid through the end of its expiry month (clock: 2026-11-23)."""
    assert sale(channel, PAN_APPROVE_CREDIT, expiry=expiry).response_code == code


def test_expiry_moves_with_the_clock() -> None:
    clock = FixedClock(datetime(2026, 11, 30, 15, 59, tzinfo=UTC))  # 23:59 in Shanghai
    channel = SandboxChannel(clock=clock)
    assert sale(channel, PAN_APPROVE_CREDIT, expiry="2611").approved
    clock.set(datetime(2026, 11, 30, 16, tzinfo=UTC))  # 2026-12-01 00:00 in Shanghai
    assert sale(channel, PAN_APPROVE_CREDIT, expiry="2611").response_code == "54"


@pytest.mark.parametrize("expiry", ["261", "2613", "2600", "26-1", "abcd"])
def test_malformed_expiry_is_refused(expiry: str) -> None:
    with pytest.raises(DomainError) as err:
        card(PAN_APPROVE_CREDIT, expiry=expiry)
    assert err.value.code is ErrorCode.INVALID_CARD


@pytest.mark.parametrize(
    ("pan", "pin", "entry_mode", "amount", "code"),
    [
        (PAN_APPROVE_DEBIT, PIN, EntryMode.CHIP, 10_000, "00"),
        (PAN_APPROVE_DEBIT, "654321", EntryMode.CHIP, 10_000, "55"),
        (PAN_APPROVE_DEBIT, None, EntryMode.CHIP, 10_000, "55"),
        (PAN_APPROVE_DEBIT, None, EntryMode.MAGSTRIPE, 10_000, "55"),
        # 小额免密: contactless debit up to ¥1,000.00 without a PIN
        (PAN_APPROVE_DEBIT, None, EntryMode.CONTACTLESS, 100_000, "00"),
        (PAN_APPROVE_DEBIT, None, EntryMode.CONTACTLESS, 100_001, "55"),
        (PAN_APPROVE_DEBIT, "000000", EntryMode.CONTACTLESS, 100, "55"),
        # credit cards need no PIN, but a PIN given must be right
        (PAN_APPROVE_CREDIT, None, EntryMode.CHIP, 10_000, "00"),
        (PAN_APPROVE_CREDIT, None, EntryMode.MAGSTRIPE, 5_000_000, "00"),
        (PAN_APPROVE_CREDIT, "111111", EntryMode.CHIP, 10_000, "55"),
        # the PIN is checked before the balance
        (PAN_INSUFFICIENT_FUNDS, None, EntryMode.CHIP, 10_000, "55"),
        (PAN_INSUFFICIENT_FUNDS, PIN, EntryMode.CHIP, 10_000, "51"),
    ],
)
def test_pin_rules(
    channel: SandboxChannel,
    pan: str,
    pin: str | None,
    entry_mode: EntryMode,
    amount: int,
    code: str,
) -> None:
    assert sale(channel, pan, amount, pin=pin, entry_mode=entry_mode).response_code == code


def test_card_data_never_shows_pan_or_pin() -> None:
    data = CardData(pan=PAN_APPROVE_DEBIT, expiry="2812", pin="987654", entry_mode=EntryMode.CHIP)
    request = AuthorizeRequest("R", 100, "CNY", data, None, True)
    for text in (repr(data), str(data), repr(request), str(request), f"{data!r} {[data]}"):
        assert PAN_APPROVE_DEBIT not in text
        assert "987654" not in text
        assert "0000000000" not in text
    assert "622202*********0018" in repr(data)
    assert data.masked_pan == "622202*********0018"


def test_card_data_validation() -> None:
    with pytest.raises(DomainError) as err:
        CardData(pan="1234", expiry="2812")
    assert err.value.code is ErrorCode.INVALID_CARD
    with pytest.raises(DomainError) as err:
        CardData(pan=PAN_APPROVE_DEBIT, expiry="2812", entry_mode="wave")  # type: ignore[arg-type]
    assert err.value.code is ErrorCode.INVALID_INPUT
    assert CardData(PAN_APPROVE_DEBIT, "2812", None, "contactless").entry_mode is (  # type: ignore[arg-type]
        EntryMode.CONTACTLESS
    )


# -- QR -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "method", "network"),
    [
        ("100000000000000000", PaymentMethod.WECHAT, Network.WECHAT),
        ("150000000000000000", PaymentMethod.WECHAT, Network.WECHAT),
        ("250000000000000000", PaymentMethod.ALIPAY, Network.ALIPAY),
        ("300000000000000000", PaymentMethod.ALIPAY, Network.ALIPAY),
        ("620000000000000000", PaymentMethod.UNIONPAY_QR, Network.UNIONPAY),
    ],
)
def test_qr_prefixes(code: str, method: PaymentMethod, network: Network) -> None:
    assert qr_method(code) is method
    assert qr_network(code) is network


@pytest.mark.parametrize(
    "code",
    [
        "090000000000000000",
        "160000000000000000",
        "240000000000000000",
        "310000000000000000",
        "610000000000000000",
        "630000000000000000",
        "13456789012345678",  # 17 digits
        "1345678901234567890",  # 19 digits
        "13456789012345678x",
        "",
    ],
)
def test_bad_qr_codes(code: str) -> None:
    with pytest.raises(DomainError) as err:
        qr_network(code)
    assert err.value.code is ErrorCode.INVALID_AUTH_CODE
    with pytest.raises(DomainError) as err:
        AuthorizeRequest("R", 100, "CNY", None, code, True)
    assert err.value.code is ErrorCode.INVALID_AUTH_CODE


@pytest.mark.parametrize(
    ("code", "network"),
    [
        (WECHAT_CODE, Network.WECHAT),
        (ALIPAY_CODE, Network.ALIPAY),
        (UNIONPAY_CODE, Network.UNIONPAY),
    ],
)
def test_qr_payments(channel: SandboxChannel, code: str, network: Network) -> None:
    approved = qr_sale(channel, code)
    assert approved.approved and approved.network is network
    declined = qr_sale(channel, code[:-2] + "51")
    assert declined.response_code == "51" and declined.network is network


def test_qr_request_method(channel: SandboxChannel) -> None:
    request = AuthorizeRequest("Q", 100, "CNY", None, ALIPAY_CODE, True)
    assert request.method is PaymentMethod.ALIPAY
    assert request.network is Network.ALIPAY
    card_request = AuthorizeRequest("C", 100, "CNY", card(PAN_APPROVE_CREDIT), None, True)
    assert card_request.method is PaymentMethod.CARD


# -- requests ---------------------------------------------------------------------------------
def test_request_validation() -> None:
    data = card(PAN_APPROVE_CREDIT)
    bad = [
        ({"card": None, "auth_code": None}, ErrorCode.INVALID_INPUT),
        ({"card": data, "auth_code": WECHAT_CODE}, ErrorCode.INVALID_INPUT),
        ({"amount": 0}, ErrorCode.INVALID_AMOUNT),
        ({"amount": 10.5}, ErrorCode.INVALID_AMOUNT),
        ({"currency": "USD"}, ErrorCode.INVALID_CURRENCY),
        ({"reference": ""}, ErrorCode.INVALID_INPUT),
    ]
    for overrides, code in bad:
        values: dict[str, object] = {
            "reference": "R",
            "amount": 100,
            "currency": "CNY",
            "card": data,
            "auth_code": None,
            "capture": True,
        }
        values.update(overrides)
        with pytest.raises(DomainError) as err:
            AuthorizeRequest(**values)  # type: ignore[arg-type]
        assert err.value.code is code, overrides


# -- the lifecycle ----------------------------------------------------------------------------
def test_authorize_is_idempotent_per_reference(channel: SandboxChannel) -> None:
    first = sale(channel, PAN_OPEN_TO_BUY, 50_000, reference="IDEM")
    again = sale(channel, PAN_OPEN_TO_BUY, 50_000, reference="IDEM")
    assert again == first
    assert channel.open_to_buy_remaining() == 50_000  # charged once
    clash = sale(channel, PAN_OPEN_TO_BUY, 40_000, reference="IDEM")
    assert clash.response_code == "94"
    declined = sale(channel, PAN_LOST, reference="IDEM-D")
    assert sale(channel, PAN_LOST, reference="IDEM-D") == declined


def test_pre_authorisation_and_completion(channel: SandboxChannel) -> None:
    auth = sale(channel, PAN_OPEN_TO_BUY, 50_000, reference="PRE", capture=False)
    assert auth.approved and auth.state is TxnState.AUTHORIZED
    assert channel.refund("PRE", "RF", 100).reason == "not_captured"
    assert channel.capture("PRE", 57_501).response_code == "13"  # above 115%
    captured = channel.capture("PRE", 57_500)
    assert captured.approved and captured.state is TxnState.CAPTURED
    assert captured.auth_code == auth.auth_code
    assert channel.open_to_buy_remaining() == 42_500
    assert channel.capture("PRE", 57_500).approved  # idempotent
    assert channel.capture("PRE", 10_000).response_code == "12"
    assert channel.capture("unknown", 100).response_code == "25"
    query = channel.query("PRE")
    assert query is not None and query.state is TxnState.CAPTURED


def test_completion_for_less_releases_the_rest(channel: SandboxChannel) -> None:
    sale(channel, PAN_OPEN_TO_BUY, 80_000, reference="PRE2", capture=False)
    assert channel.capture("PRE2", 30_000).approved
    assert channel.open_to_buy_remaining() == 70_000


def test_void(channel: SandboxChannel) -> None:
    sale(channel, PAN_APPROVE_CREDIT, reference="V1")
    voided = channel.void("V1")
    assert voided.approved and voided.state is TxnState.VOIDED
    assert channel.void("V1").approved  # idempotent
    assert channel.refund("V1", "RF", 100).reason == "not_captured"
    assert channel.capture("V1", 100).response_code == "12"
    assert channel.void("unknown").response_code == "25"
    sale(channel, PAN_LOST, reference="V2")
    assert channel.void("V2").response_code == "12"
    sale(channel, PAN_APPROVE_CREDIT, reference="V3")
    assert channel.refund("V3", "RF", 100).succeeded
    assert channel.void("V3").response_code == "12"  # refunded: no void any more


def test_reverse_void(channel: SandboxChannel) -> None:
    """撤销冲正: a voided transaction stands again as it was, once, with its open-to-buy."""
    sale(channel, PAN_APPROVE_CREDIT, reference="RV1")
    assert channel.void("RV1").approved
    restored = channel.reverse_void("RV1")
    assert restored.approved and restored.state is TxnState.CAPTURED
    assert channel.reverse_void("RV1").approved  # idempotent
    assert channel.void("RV1").approved  # and it can be voided again
    sale(channel, PAN_APPROVE_CREDIT, reference="RV2", capture=False)
    assert channel.void("RV2").approved
    assert channel.reverse_void("RV2").state is TxnState.AUTHORIZED  # as before the void
    assert channel.reverse_void("unknown").response_code == "25"
    sale(channel, PAN_APPROVE_CREDIT, reference="RV3")
    assert channel.reverse("RV3").approved
    assert channel.reverse_void("RV3").response_code == "12"  # no void to undo
    # the open-to-buy it gave back is spent meanwhile: 51, and it stays voided
    assert sale(channel, PAN_OPEN_TO_BUY, 100_000, reference="RV4").approved
    assert channel.void("RV4").approved
    assert sale(channel, PAN_OPEN_TO_BUY, 30_000, reference="RV5").approved
    refused = channel.reverse_void("RV4")
    assert refused.response_code == "51" and refused.state is TxnState.VOIDED
    assert channel.void("RV5").approved
    assert channel.reverse_void("RV4").approved and channel.open_to_buy_remaining() == 0


def test_reverse_completion(channel: SandboxChannel) -> None:
    """完成冲正: the pre-authorisation stands again with its authorised open-to-buy."""
    sale(channel, PAN_APPROVE_CREDIT, 20_000, reference="RC1", capture=False)
    assert channel.capture("RC1", 23_000).approved
    undone = channel.reverse_completion("RC1")
    assert undone.approved and undone.state is TxnState.AUTHORIZED
    assert channel.reverse_completion("RC1").approved  # idempotent
    assert channel.capture("RC1", 21_000).approved  # completed again
    sale(channel, PAN_APPROVE_CREDIT, reference="RC2")
    assert channel.reverse_completion("RC2").response_code == "12"  # a sale: no completion
    assert channel.reverse_completion("unknown").response_code == "25"
    assert sale(channel, PAN_OPEN_TO_BUY, 50_000, reference="RC3", capture=False).approved
    assert channel.capture("RC3", 40_000).approved
    assert sale(channel, PAN_OPEN_TO_BUY, 60_000, reference="RC4").approved
    assert channel.reverse_completion("RC3").response_code == "51"  # 50,000 no longer free


def test_reverse(channel: SandboxChannel) -> None:
    unknown = channel.reverse("never-seen")
    assert unknown.approved and unknown.network is None and unknown.state is TxnState.REVERSED
    assert channel.reverse("never-seen").approved
    # an original arriving after its reversal does not take effect
    late = sale(channel, PAN_APPROVE_CREDIT, reference="never-seen")
    assert not late.approved and late.response_code == "12"
    sale(channel, PAN_APPROVE_CREDIT, reference="RV1")
    reversed_ = channel.reverse("RV1")
    assert reversed_.approved and reversed_.state is TxnState.REVERSED
    assert channel.refund("RV1", "RF", 100).reason == "not_captured"
    sale(channel, PAN_EXPIRED, reference="RV2")
    assert channel.reverse("RV2").approved  # declined originals too
    query = channel.query("RV2")
    assert query is not None and query.state is TxnState.DECLINED


def test_query(channel: SandboxChannel) -> None:
    assert channel.query("nothing") is None
    approved = sale(channel, PAN_APPROVE_DEBIT, reference="Q1")
    query = channel.query("Q1")
    assert query is not None
    assert (query.approved, query.auth_code, query.state) == (
        True,
        approved.auth_code,
        TxnState.CAPTURED,
    )
    channel.void("Q1")
    after = channel.query("Q1")
    assert after is not None and after.state is TxnState.VOIDED


def test_latency_is_applied() -> None:
    channel = SandboxChannel(latency_seconds=0.02, clock=FixedClock(NOW))
    started = time.monotonic()
    sale(channel, PAN_APPROVE_CREDIT)
    assert time.monotonic() - started >= 0.02


def test_negative_delays_are_refused() -> None:
    with pytest.raises(DomainError):
        SandboxChannel(latency_seconds=-1)


def test_the_sandbox_keeps_no_pan_or_pin(channel: SandboxChannel) -> None:
    pans = (PAN_APPROVE_DEBIT, PAN_OPEN_TO_BUY, PAN_CARD_CLOSED, PAN_LOST)
    for i, pan in enumerate(pans):
        sale(channel, pan, pin=PIN, reference=f"KEEP-{i}")
    channel.refund("KEEP-0", "KEEP-RF", 100)
    dumped = repr(vars(channel)) + repr(channel.store.records())
    assert "KEEP-RF" in dumped  # the books are in the dump
    for pan in pans:
        assert pan not in dumped
        assert pan[-10:] not in dumped
    for quoted in (f"'{PIN}'", f'"{PIN}"'):
        assert quoted not in dumped  # no string value equal to the PIN
