"""Demo data for a first look (``shoudan demo seed``, run by ``make demo``).

Three merchants — a street-food stall (individual), a convenience shop (small business) and a
restaurant (enterprise) — with terminals of each product, the default fee plans, and about
500 payments over the last 30 days taken through the real payment service against the
sandbox network: debit and credit cards, contactless taps, WeChat / Alipay / UnionPay QR,
declines (insufficient funds, expired card, wrong PIN), pre-authorisations with completions,
same-day voids and a few reversals. Every fen is posted to the ledger, which verifies. Then
the back office (``demo_backoffice``): a fruit shop onboarded end to end with an activated
terminal and its deposit, an application waiting for review, and yesterday's settlement paid
out through the sandbox bank.

Seeding happens once per database (an audit record ``demo.seeded`` marks it). It prints a
merchant API key and a staff admin key and writes them to ``<data dir>/demo-credentials.json``
— keys are stored hashed, so that file is the only place they can be read again.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, text

from shoudan.audit.service import record
from shoudan.auth.domain import SYSTEM, Principal, Role
from shoudan.auth.service import create_api_key
from shoudan.bootstrap import bootstrap
from shoudan.channels.sandbox import (
    PAN_APPROVE_CREDIT,
    PAN_APPROVE_DEBIT,
    PAN_EXPIRED,
    PAN_INSUFFICIENT_FUNDS,
    SandboxChannel,
)
from shoudan.container import Container
from shoudan.core.clock import SHANGHAI, FixedClock
from shoudan.core.errors import DomainError
from shoudan.demo_backoffice import (
    application_waiting_for_review,
    onboard_fruit_shop,
    reconcile_yesterday,
    settle_yesterday,
    web_logins,
)
from shoudan.merchants.service import MerchantInput, SettlementAccountInput, create_merchant
from shoudan.payments.domain import EntryMode, Method, PaymentStatus
from shoudan.payments.models import Payment
from shoudan.payments.service import CardInput, PaymentRequest, PaymentService
from shoudan.refunds.domain import RefundStatus
from shoudan.refunds.service import RefundRequest, RefundService
from shoudan.terminals.service import TerminalInput, create_terminal

SEEDED_ACTION = "demo.seeded"
PAYMENTS = 500
REFUNDS = 24  # partial and full refunds of earlier payments, a few in review
REFUND_REASONS = ("customer_request", "product_return", "duplicate", "payment_error")
DAYS = 30
DEBIT, CREDIT = PAN_APPROVE_DEBIT, PAN_APPROVE_CREDIT
DECLINING = (PAN_INSUFFICIENT_FUNDS, PAN_EXPIRED)  # 51 insufficient funds, 54 expired


@dataclass(frozen=True)
class _Shop:
    key: str
    merchant: MerchantInput
    terminals: tuple[tuple[str, str, str], ...]  # serial, terminal id, product
    amounts: tuple[int, int]  # typical ticket range, fen


SHOPS = (
    _Shop(
        "stall",
        MerchantInput(
            "老张煎饼摊", "individual", "5814", "3100", "13800138000",
            settlement_account=SettlementAccountInput("张建国", "中国工商银行", DEBIT),
        ),
        (("DEMO-EPOS-0001", "DM000001", "epos"),),
        (600, 3_000),
    ),
    _Shop(
        "shop",
        MerchantInput(
            "惠民便利店", "small_business", "5411", "4401", "13900139000",
            settlement_account=SettlementAccountInput("惠民便利店", "招商银行", CREDIT),
        ),
        (("DEMO-SMART-0001", "DM000002", "smart"), ("DEMO-EPOS-0002", "DM000003", "epos")),
        (300, 20_000),
    ),
    _Shop(
        "restaurant",
        MerchantInput(
            "川味小馆餐饮有限公司", "enterprise", "5812", "1100", "13700137000",
            settlement_account=SettlementAccountInput(
                "川味小馆餐饮有限公司", "中国建设银行", DEBIT
            ),
        ),
        (("DEMO-TRAD-0001", "DM000004", "traditional"), ("DEMO-SMART-0002", "DM000005",
                                                          "smart")),
        (5_000, 80_000),
    ),
)  # fmt: skip


def is_seeded(container: Container) -> bool:
    with container.database.read() as session:
        found = session.execute(
            text("SELECT 1 FROM audit_log WHERE action = :action"), {"action": SEEDED_ACTION}
        ).first()
    return found is not None


def seed(container: Container, now: datetime | None = None) -> dict[str, Any] | None:
    """Seed once; returns the credentials when it seeded, ``None`` when already seeded."""
    bootstrap(container.database)
    if is_seeded(container):
        return None
    end = now or container.clock.now()
    clock = FixedClock(end - timedelta(days=DAYS))
    # the demo's past clock (for expiry), over the shared sandbox books: the worker can
    # refund these payments later
    shared = container.channel.store if isinstance(container.channel, SandboxChannel) else None
    channel = SandboxChannel(latency_seconds=0.0, timeout_seconds=0.05, clock=clock, store=shared)
    payments = PaymentService(container.database, container.ledger, container.vault, channel, clock)
    merchants: dict[str, str] = {}
    terminals: dict[str, list[str]] = {}
    with container.database.transaction() as session:
        for shop in SHOPS:
            view = create_merchant(
                session, container.vault, container.ledger, shop.merchant,
                actor=SYSTEM.id, clock=clock,
            )  # fmt: skip
            merchants[shop.key] = view.merchant_id
            terminals[shop.key] = []
            for serial, terminal_id, product in shop.terminals:
                create_terminal(
                    session, container.vault,
                    TerminalInput(serial, terminal_id, product, view.merchant_id, None),
                    actor=SYSTEM.id, clock=clock,
                )  # fmt: skip
                terminals[shop.key].append(terminal_id)
        admin_key = create_api_key(session, role=Role.ADMIN, name="demo admin")[1]
        merchant_key = create_api_key(
            session, role=Role.MERCHANT, merchant_id=merchants["stall"], name="demo stall"
        )[1]
    _take_payments(payments, clock, end, terminals)
    _take_refunds(container, channel, clock, end)
    _banquet_refund_in_review(container, payments, channel, clock, end, terminals["restaurant"][0])
    clock.set(end - timedelta(days=5, hours=6))
    fruit_shop = onboard_fruit_shop(container, clock)
    waiting_application = application_waiting_for_review(container, clock)
    settle_yesterday(container, end, list(merchants.values()))
    reconciled = reconcile_yesterday(container, end)
    logins = web_logins(container, merchants["stall"], SHOPS[0].merchant.contact_phone)
    with container.database.transaction() as session:
        record(
            session, actor=SYSTEM.id, action=SEEDED_ACTION, subject_type="system",
            subject_id="demo", after={"merchants": merchants},
        )  # fmt: skip
    credentials = {
        "base_url": f"http://{container.settings.host}:{container.settings.port}",
        "admin_api_key": admin_key,
        "merchant_api_key": merchant_key,
        "merchant_id": merchants["stall"],
        "merchants": merchants,
        "onboarded_merchant_id": fruit_shop.merchant_id,
        "onboarded_terminal_id": fruit_shop.terminal_id,
        "onboarded_contract_id": fruit_shop.contract_id,
        "onboarded_application_token": fruit_shop.application_token,
        "application_in_review": waiting_application,
        "reconciliation_run": reconciled.run.id if reconciled is not None else None,
        "verification_codes": fruit_shop.labels,
        "console_url": f"http://{container.settings.host}:{container.settings.port}/",
        "console_logins": logins,
    }
    path = credentials_path(container)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(credentials, ensure_ascii=False, indent=2) + "\n")
    path.chmod(0o600)
    return credentials


def credentials_path(container: Container) -> Path:
    return container.settings.data_dir / "demo-credentials.json"


def _take_payments(
    payments: PaymentService, clock: FixedClock, end: datetime, terminals: dict[str, list[str]]
) -> None:
    rng = random.Random(20261123)
    start = clock.now().astimezone(SHANGHAI).replace(hour=0, minute=0, second=0, microsecond=0)
    # shops open 08:00-22:00: spread the payments over the opening hours of DAYS days
    moments = sorted(
        start + timedelta(days=n * DAYS // PAYMENTS, hours=8, seconds=rng.randint(0, 14 * 3600))
        for n in range(PAYMENTS)
    )
    shops = {shop.key: shop for shop in SHOPS}
    for n, moment in enumerate(moments):
        if moment >= end:
            break
        clock.set(moment)
        key = rng.choices(("stall", "shop", "restaurant"), weights=(5, 3, 2))[0]
        low, high = shops[key].amounts
        amount = rng.randint(low, high)
        terminal = rng.choice(terminals[key])
        request = _request(rng, terminal, amount, key, n)
        payment = payments.create(SYSTEM, request)
        if payment.status == PaymentStatus.AUTHORIZED.value:
            payments.capture(SYSTEM, payment.id, min(int(amount * 1.1), amount + 20_000))
        elif payment.status == PaymentStatus.CAPTURED.value and rng.random() < 0.03:
            payments.void(SYSTEM, payment.id)
        elif payment.status == PaymentStatus.CAPTURED.value and rng.random() < 0.01:
            payments.reverse(SYSTEM, payment.id)


def _take_refunds(
    container: Container, channel: SandboxChannel, clock: FixedClock, end: datetime
) -> None:
    """Refunds the shops asked for in the days after their sales: most sent and refunded at
    once, the large ones waiting in the staff review queue (the worker does the rest)."""
    assert container.bank is not None
    refunds = RefundService(
        container.database, container.ledger, container.vault, channel, container.bank, clock,
        container.settings,
    )  # fmt: skip
    rng = random.Random(20261124)
    with container.database.read() as session:
        captured = list(session.scalars(
            select(Payment)
            .where(Payment.status == PaymentStatus.CAPTURED.value)
            .order_by(Payment.created_at, Payment.id)
        ))  # fmt: skip
    for payment in sorted(rng.sample(captured, min(REFUNDS, len(captured))),
                          key=lambda p: p.created_at):  # fmt: skip
        assert payment.captured_at is not None
        moment = payment.captured_at + timedelta(days=rng.randint(1, 3), hours=rng.randint(0, 5))
        if moment >= end:
            continue
        clock.set(moment)
        full = rng.random() < 0.4
        amount = payment.captured_amount if full else max(1, payment.captured_amount // 2)
        shop = Principal(f"demo:{payment.merchant_id}", Role.MERCHANT, payment.merchant_id)
        request = RefundRequest(payment.id, amount, rng.choice(REFUND_REASONS))
        try:
            refund = refunds.request(shop, request)
        except DomainError:
            continue  # a rule refused it (e.g. the shop's balance): the demo moves on
        if refund.status == RefundStatus.APPROVED.value:
            refunds.execute(refund.id)


BANQUET = 680_000  # ¥6,800: above the review threshold


def _banquet_refund_in_review(
    container: Container,
    payments: PaymentService,
    channel: SandboxChannel,
    clock: FixedClock,
    end: datetime,
    terminal_id: str,
) -> None:
    """A canceled banquet, paid by credit card two days ago and refunded in full yesterday:
    large enough to wait in the staff review queue for an approver."""
    assert container.bank is not None
    clock.set(end - timedelta(days=2))
    card = CardInput(CREDIT, "2812", EntryMode.CHIP)
    payment = payments.create(SYSTEM, PaymentRequest(terminal_id, BANQUET, Method.CARD, card=card))
    clock.set(end - timedelta(days=1))
    refunds = RefundService(
        container.database, container.ledger, container.vault, channel, container.bank, clock,
        container.settings,
    )  # fmt: skip
    shop = Principal(f"demo:{payment.merchant_id}", Role.MERCHANT, payment.merchant_id)
    refunds.request(shop, RefundRequest(
        payment.id, BANQUET, "customer_request", reason_text="宴席取消 banquet canceled",
        out_refund_no="DEMO-BANQUET-1", consumer_phone="13800138000",
    ))  # fmt: skip


def _request(rng: random.Random, terminal: str, amount: int, shop: str, n: int) -> PaymentRequest:
    roll = rng.random()
    if roll < 0.35:  # QR: the customer's payment code
        method, prefix = rng.choice(
            ((Method.WECHAT, "13"), (Method.ALIPAY, "28"), (Method.UNIONPAY_QR, "62"))
        )
        tail = "51" if rng.random() < 0.03 else f"{rng.randint(0, 98):02d}".replace("51", "52")
        code = f"{prefix}{rng.randint(0, 10**14 - 1):014d}{tail}"
        return PaymentRequest(terminal, amount, method, auth_code=code)
    if roll < 0.5 and amount <= 100_000:  # a contactless tap, no PIN (小额免密)
        return PaymentRequest(
            terminal, amount, Method.CARD, card=CardInput(DEBIT, "2912", EntryMode.CONTACTLESS)
        )
    if roll < 0.55:
        pan = rng.choice(DECLINING)
        return PaymentRequest(
            terminal, amount, Method.CARD,
            card=CardInput(pan, "2912" if pan.startswith("6222") else "2412", EntryMode.CHIP,
                           "123456" if pan.startswith("6222") else None),
        )  # fmt: skip
    preauth = shop == "restaurant" and rng.random() < 0.3
    if rng.random() < 0.5:
        card = CardInput(DEBIT, "2912", EntryMode.CHIP, "123456" if n % 40 else "000000")
    else:
        card = CardInput(CREDIT, "2812", EntryMode.CHIP)
    return PaymentRequest(terminal, amount, Method.CARD, card=card, capture=not preauth)
