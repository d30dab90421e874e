"""The demo's back-office story after the sales (``shoudan.demo.seed`` calls these).

- a fruit shop onboarded end to end through the public path: application, SMS code from the
  development inbox, sandbox KYC, staff approval, contract accepted; two devices imported
  into stock, one allocated, shipped, delivered and activated (its deposit charged as debt),
  the other still in stock with its anti-counterfeit code;
- a second application waiting in the staff review queue;
- yesterday's T+1 settlement, its payout batch played through the sandbox bank and the
  confirmation imported — the stall's payout stays blocked because its account is in the
  owner's name, not the stall's (一清);
- yesterday's card-network statement reconciled: the network's file agrees with our books
  except for two lines written into it on purpose — one sale with another amount and one
  sale we never took (长款) — which wait in the reconciliation exceptions queue.

Everything goes through the same services as the API, on the demo's past clock.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from shoudan.auth.domain import SYSTEM, Principal, Role
from shoudan.container import Container
from shoudan.core.clock import SHANGHAI, FixedClock
from shoudan.merchants.service import verify_settlement_account
from shoudan.onboarding import service as onboarding
from shoudan.payments.models import Payment
from shoudan.reconciliation.domain import Channel, ChannelStatus, RecordKind, parse_period
from shoudan.reconciliation.generate import ChannelTxn, write_statement
from shoudan.reconciliation.service import ImportResult, ReconciliationService, StatementUpload
from shoudan.refunds.models import Refund
from shoudan.settlement.bankfile import parse_confirmations, write_batch
from shoudan.settlement.payouts import PayoutService
from shoudan.settlement.service import SettlementService
from shoudan.settlement.simulator import simulate
from shoudan.terminals import stock
from shoudan.terminals.service import (
    activate_on_sign_on,
    allocate_device,
    deliver_device,
    ship_device,
)
from shoudan.web.service import WebAccounts

FRUIT_SHOP = onboarding.ApplicationInput(
    applicant_name="李秀兰", phone="13812345678", province="广东", city="深圳", product="epos",
    merchant_type="individual", id_number="440305199003071236",
    bank_card="6217000010012345677", business_name="鲜果园水果店",
    business_address="深圳市南山区科技园路 1 号",
)  # fmt: skip
WAITING = onboarding.ApplicationInput(
    applicant_name="王磊", phone="13912345678", province="广东", city="广州", product="smart",
    merchant_type="individual", id_number="440305199003071236",
    bank_card="6217000010012345677", business_name="王记粥铺",
    business_address="广州市天河区体育西路 2 号",
)  # fmt: skip
DEVICES = "serial_number,product\nDEMO-EPOS-0101,epos\nDEMO-EPOS-0102,epos\n"


@dataclass(frozen=True)
class Onboarded:
    merchant_id: str
    contract_id: str
    terminal_id: str
    application_token: str
    labels: dict[str, str]  # serial number → printed verification code


def _sms_code(container: Container, phone: str) -> str:
    inbox = container.sms.list_inbox(phone, 1)  # type: ignore[attr-defined]
    found = re.search(r"\d{6}", inbox[0].text)
    assert found is not None, "the development inbox holds the verification text"
    return found.group()


def _apply_and_verify(
    container: Container, clock: FixedClock, data: onboarding.ApplicationInput
) -> onboarding.SubmittedApplication:
    submitted = onboarding.submit_application(
        container.database, container.vault, container.sms, data, clock=clock
    )
    onboarding.verify_phone(
        container.database, container.vault, container.real_name_verifier,
        submitted.application.id, submitted.application_token,
        _sms_code(container, data.phone), clock=clock,
    )  # fmt: skip
    return submitted


def onboard_fruit_shop(container: Container, clock: FixedClock) -> Onboarded:
    """Apply → verify → KYC → approve → contract → stock → ship → deliver → activate."""
    submitted = _apply_and_verify(container, clock, FRUIT_SHOP)
    token = submitted.application_token
    clock.set(clock.now() + timedelta(hours=3))  # a reviewer looks at it that afternoon
    with container.database.transaction() as session:
        approved = onboarding.approve_application(
            session, container.vault, container.ledger, submitted.application.id,
            actor="demo:reviewer", clock=clock,
        )  # fmt: skip
    assert approved.merchant_id is not None and approved.contract_id is not None
    with container.database.transaction() as session:
        onboarding.accept_contract_as_applicant(
            session, approved.contract_id, token, ip="127.0.0.1",
            user_agent="shoudan demo", clock=clock,
        )  # fmt: skip
        imported = stock.import_devices(
            session, container.vault, DEVICES, actor="demo:warehouse", clock=clock
        )
        allocation = allocate_device(
            session, container.vault, "DEMO-EPOS-0101", merchant_id=approved.merchant_id,
            contract_id=approved.contract_id, actor="demo:warehouse", clock=clock,
        )  # fmt: skip
        ship_device(
            session, "DEMO-EPOS-0101", carrier="SF", tracking_number="SF1000000101",
            actor="demo:warehouse", clock=clock,
        )  # fmt: skip
    terminal_id = allocation.device.terminal_id
    assert terminal_id is not None
    clock.set(clock.now() + timedelta(days=2))
    with container.database.transaction() as session:
        deliver_device(session, "DEMO-EPOS-0101", actor="demo:courier", clock=clock)
    clock.set(clock.now() + timedelta(hours=1))
    with container.database.transaction() as session:
        activate_on_sign_on(session, terminal_id, clock=clock)  # the first sign-on
    # the worker would charge the deposit from the terminal.activated event; the demo does it
    # now (the handler is idempotent, so the event changes nothing when it arrives)
    container.deposits.activated_under_contract(
        merchant_id=approved.merchant_id, serial_number="DEMO-EPOS-0101",
        terminal_id=terminal_id, contract_id=approved.contract_id, activated_at=clock.now(),
    )  # fmt: skip
    return Onboarded(
        approved.merchant_id, approved.contract_id, terminal_id, token,
        {label.serial_number: label.verification_code for label in imported.labels},
    )  # fmt: skip


def application_waiting_for_review(container: Container, clock: FixedClock) -> str:
    """An application with its phone verified and KYC passed, in the staff queue."""
    return _apply_and_verify(container, clock, WAITING).application.id


def settle_yesterday(container: Container, end: datetime, merchant_ids: list[str]) -> None:
    """Staff verify the merchants' settlement accounts; then yesterday's settlement, its payout
    batch through the sandbox bank, and the bank's confirmation imported."""
    today = end.astimezone(SHANGHAI).date()
    run_date = today - timedelta(days=1)
    clock = FixedClock(datetime(today.year, today.month, today.day, 0, 30, tzinfo=SHANGHAI))
    with container.database.transaction() as session:
        for merchant_id in merchant_ids:
            verify_settlement_account(session, merchant_id, actor="demo:finance", clock=clock)
    settlement = SettlementService(container.database, container.ledger, container.vault, clock)
    settlement.run_t1(run_date, actor=SYSTEM.id)
    payouts = PayoutService(container.database, container.ledger, container.vault, clock)
    batch = payouts.export_batch("demo:finance")
    if batch is None:
        return
    with tempfile.TemporaryDirectory() as scratch:
        batch_path, answer_path = Path(scratch, "batch.csv"), Path(scratch, "answer.csv")
        with batch_path.open("w", encoding="utf-8", newline="") as stream:
            write_batch(batch.lines, stream)
        simulate(batch_path, answer_path)
        rows = parse_confirmations(answer_path.name, answer_path.read_text(encoding="utf-8"))
    payouts.import_confirmations(answer_path.name, rows, "demo:finance")


FINANCE = Principal("demo:finance", Role.FINANCE)
STRANGER_RRN = "999999999999"  # the network's line that matches nothing of ours


def reconcile_yesterday(container: Container, end: datetime) -> ImportResult | None:
    """The card network's statement of yesterday, as the network would send it for our card
    payments and refunds of that day, with two differences written in; then imported."""
    day = end.astimezone(SHANGHAI).date() - timedelta(days=1)
    start = datetime.combine(day, datetime.min.time(), tzinfo=SHANGHAI)
    txns: list[ChannelTxn] = []
    with container.database.read() as session:
        for p in session.scalars(select(Payment).where(
            Payment.network == Channel.UNIONPAY.value, Payment.business_date == day.isoformat(),
            Payment.status.in_(("captured", "voided", "reversed")),
        ).order_by(Payment.created_at)):  # fmt: skip
            captured = p.status == "captured"
            txns.append(ChannelTxn(
                RecordKind.PAYMENT, ChannelStatus.SUCCESS if captured else ChannelStatus.VOIDED,
                p.captured_amount if captured else p.amount, p.created_at, p.rrn, p.id,
            ))  # fmt: skip
        rrn_of = {p.id: p.rrn for p in session.scalars(select(Payment).where(
            Payment.network == Channel.UNIONPAY.value))}  # fmt: skip
        for r in session.scalars(select(Refund).where(
            Refund.network == Channel.UNIONPAY.value, Refund.status == "succeeded",
            Refund.completed_at >= start, Refund.completed_at < start + timedelta(days=1),
        )):  # fmt: skip
            assert r.completed_at is not None
            txns.append(ChannelTxn(RecordKind.REFUND, ChannelStatus.SUCCESS, r.amount,
                                   r.completed_at, r.id, r.payment_id, rrn_of[r.payment_id]))
    if not txns:
        return None
    first = txns[0]
    txns[0] = replace(first, amount=first.amount + 100)  # the network says ¥1.00 more
    txns.append(ChannelTxn(RecordKind.PAYMENT, ChannelStatus.SUCCESS, 8_800,
                           start + timedelta(hours=12), STRANGER_RRN))  # fmt: skip
    service = ReconciliationService(container.database, container.ledger, container.clock)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch, f"unionpay-{day:%Y%m%d}.csv")
        with path.open("w", encoding="utf-8", newline="") as out:
            write_statement(Channel.UNIONPAY, txns, out)
        upload = StatementUpload(path, path.name, Channel.UNIONPAY, parse_period(day.isoformat()))
        return service.import_statement(FINANCE, upload)


def web_logins(container: Container, merchant_id: str, phone: str) -> dict[str, object]:
    """The console logins: the stall's owner, a reviewer, an approver and an admin (staff
    sign in with a password and a TOTP code from the secret)."""
    accounts = WebAccounts(container.database, container.vault, container.clock)
    merchant = accounts.create_merchant_user(merchant_id, phone, actor="demo")
    staff = {
        name: accounts.create_staff_user(name, (role,), actor="demo")
        for name, role in (("reviewer", Role.REVIEWER), ("approver", Role.APPROVER),
                           ("admin", Role.ADMIN))
    }  # fmt: skip
    return {
        "merchant": {"phone": phone, "password": merchant.password},
        "staff": {
            name: {"password": user.password, "totp_secret": user.totp_secret}
            for name, user in staff.items()
        },
    }
