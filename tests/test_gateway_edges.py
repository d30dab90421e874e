"""Edges of the ISO 8583 gateway end to end, over real sockets on SQLite and PostgreSQL:
terminal refunds (0220) to the sandbox's card-closed and flaky-refund cards carried through
the worker, a void of a refunded sale, and the simulator's command line for pre-auth,
completion, balance inquiry and reversal. The ledger is verified after every scenario."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner, Result

from shoudan.channels.domain import EntryMode
from shoudan.channels.sandbox import SandboxChannel
from shoudan.cli.main import app as cli
from shoudan.core.config import Settings
from shoudan.core.db import Database
from shoudan.gateway.codec import Message
from shoudan.gateway.domain import Kind
from shoudan.gateway.simulator import Card, Reply, TerminalClient
from shoudan.ledger import chart
from shoudan.notifications.service import stats as outbox_stats
from shoudan.payments.domain import PaymentStatus
from shoudan.payments.models import Payment
from shoudan.payments.service import upstream_reference_of
from shoudan.refunds.models import Refund
from tests.gateway_world import Gateway, Terminal, start_gateway
from tests.payments_world import check_day_totals
from tests.refunds_world import RefundWorld, build_refund_world, check_refund_day_totals

CARDS: dict[str, str] = json.loads(
    resources.files("shoudan.channels").joinpath("fixtures/sandbox_cards.json").read_text()
)
DEBIT, CREDIT = CARDS["approve_debit"], CARDS["approve_credit"]
CARD_CLOSED, FLAKY_REFUND = CARDS["card_closed"], CARDS["flaky_refund"]
PIN = "123456"
BANK_ACCOUNT = "6217000010012345677"  # the sandbox bank's account that succeeds


@dataclass
class Edge:
    """The running gateway and, on the same container, the refunds worker (the outbox relay
    with the real handlers) and staff keys."""

    gw: Gateway
    rw: RefundWorld

    def later(self, **delta: float) -> None:
        self.rw.world.clock.advance(timedelta(**delta))

    def refunds(self) -> list[Refund]:
        with self.rw.world.container.database.read() as session:
            return list(session.scalars(select(Refund).order_by(Refund.created_at, Refund.id)))

    def holds(self, account_id: str) -> tuple[int, int, int]:
        """(posted credit balance, pending debits, pending credits) of an account."""
        view = self.rw.world.container.ledger.account(account_id)
        return view.credit_balance, view.debits_pending, view.credits_pending

    def only_payment(self) -> Payment:
        [payment] = self.gw.payments()
        return payment


@pytest.fixture
def edge(db_url: str, tmp_path: Path) -> Iterator[Edge]:
    # as `shoudan gateway` opens it: on SQLite with group commit, so with the baton
    database = Database(db_url, group_commit=Settings().sqlite_group_commit)
    rw = build_refund_world(database, tmp_path)
    gateway = start_gateway(rw.world)
    try:
        yield Edge(gateway, rw)
    finally:
        gateway.background.stop()
    try:
        rw.run_worker()  # whatever is still due (webhooks, SMS) is delivered
        report = rw.world.container.ledger.verify()
        assert report.ok, report.violations[:5]
        check_day_totals(rw.world)
        check_refund_day_totals(rw.world)
        with database.read() as session:
            assert outbox_stats(session)["dead"] == 0  # every event had a handler that took it
    finally:
        database.dispose()


def card(pan: str = DEBIT, pin: str | None = PIN) -> Card:
    return Card(pan=pan, pin=pin, entry_mode=EntryMode.CHIP)


def refund_of(terminal: Terminal, sale: Reply, amount: int, pan: str) -> Reply:
    """The 0220 a terminal sends for ``sale``: its RRN (37) and date (61.3) from the slip."""
    rrn, day = sale.response.text(37) or "", sale.response.text(13) or ""
    return terminal.client.refund(card(pan, None), amount, rrn, day)


# -- refunds the worker carries out --------------------------------------------------------------
def test_refund_to_a_closed_card_ends_abnormal_with_the_money_held(edge: Edge) -> None:
    gw, rw = edge.gw, edge.rw
    terminal = gw.signed_on()
    sale = terminal.client.sale(card(CARD_CLOSED), 20_000)
    assert sale.code == "00" and sale.mac_ok
    payment = gw.payment(sale.response.text(37) or "")
    assert payment.status == PaymentStatus.CAPTURED.value
    merchant = chart.merchant_unsettled(rw.world.merchant_a)
    before, pending, _ = edge.holds(merchant)
    assert pending == 0
    edge.later(hours=1)

    # ¥50.00, a quarter of the day's sales, an hour later: the policy approves it at once
    advice = refund_of(terminal, sale, 5_000, CARD_CLOSED)
    assert (advice.request.mti, advice.response.mti, advice.code) == ("0220", "0230", "00")
    assert advice.mac_ok and not advice.response.has(44)  # not PENDING REVIEW
    assert advice.response.text(37) == sale.response.text(37)
    [refund] = edge.refunds()
    assert (refund.payment_id, refund.amount, refund.status) == (payment.id, 5_000, "approved")
    assert refund.requester_kind == "terminal"
    assert edge.holds(merchant)[:2] == (before, 5_000)  # held at once, not yet gone

    assert rw.run_worker() > 0
    abnormal = rw.get(refund.id)
    assert (abnormal["status"], abnormal["failure_reason"]) == ("abnormal", "card_closed")
    assert abnormal["attempts"] == 1
    assert [step["status"] for step in abnormal["timeline"]] == [
        "requested", "approved", "processing", "abnormal",
    ]  # fmt: skip
    # docs/refunds.md: abnormal posts nothing yet, the money stays held
    assert edge.holds(merchant)[:2] == (before, 5_000)
    assert edge.holds(chart.channel_payable("unionpay"))[2] == 5_000
    assert gw.payment(payment.rrn).refunded_amount == 0
    assert gw.payment(payment.rrn).status == PaymentStatus.CAPTURED.value
    rw.run_worker()  # nothing more is due: it stays abnormal, sent once
    assert (rw.get(refund.id)["status"], rw.get(refund.id)["attempts"]) == ("abnormal", 1)
    report = rw.world.container.ledger.verify()
    assert report.ok, report.violations[:5]

    # the rest of the refundable amount is still refused beyond the captured one: 13
    assert refund_of(terminal, sale, 15_001, CARD_CLOSED).code == "13"

    # staff re-route it to the consumer's bank account; the worker pays it from our bank
    rerouted = rw.act(refund.id, "reroute", "cs", account_number=BANK_ACCOUNT,
                      holder_name="张三", bank_name="工商银行")  # fmt: skip
    assert (rerouted["status"], rerouted["route"]) == ("processing", "bank_transfer")
    bank_before = rw.world.container.ledger.account(chart.BANK_SETTLEMENT).balance
    rw.run_worker()
    assert rw.get(refund.id)["status"] == "succeeded"
    assert edge.holds(merchant) == (before - 5_000, 0, 0)
    assert edge.holds(chart.channel_payable("unionpay"))[1:] == (0, 0)
    assert rw.world.container.ledger.account(chart.BANK_SETTLEMENT).balance == (bank_before - 5_000)
    assert gw.payment(payment.rrn).refunded_amount == 5_000


def test_refund_to_a_flaky_card_fails_once_then_succeeds_on_retry(edge: Edge) -> None:
    gw, rw = edge.gw, edge.rw
    terminal = gw.signed_on()
    sale = terminal.client.sale(card(FLAKY_REFUND, None), 20_000)
    assert sale.code == "00"
    payment = gw.payment(sale.response.text(37) or "")
    merchant = chart.merchant_unsettled(rw.world.merchant_a)
    before = edge.holds(merchant)[0]
    edge.later(hours=1)

    advice = refund_of(terminal, sale, 5_000, FLAKY_REFUND)
    assert advice.code == "00" and advice.mac_ok and not advice.response.has(44)
    [refund] = edge.refunds()
    assert refund.status == "approved"

    rw.run_worker()
    waiting = rw.get(refund.id)
    assert waiting["status"] == "processing"
    assert (waiting["attempts"], waiting["failure_reason"]) == (1, "issuer_unavailable")
    assert edge.holds(merchant)[:2] == (before, 5_000)  # still held, not yet paid
    rw.run_worker()  # the retry is not due yet (15 s): nothing is sent again
    assert rw.get(refund.id)["attempts"] == 1

    edge.later(seconds=15)
    rw.run_worker()
    done = rw.get(refund.id)
    assert (done["status"], done["attempts"], done["failure_reason"]) == ("succeeded", 2, None)
    assert edge.holds(merchant) == (before - 5_000, 0, 0)
    assert gw.payment(payment.rrn).refunded_amount == 5_000
    assert gw.payment(payment.rrn).status == PaymentStatus.CAPTURED.value
    # the network paid the card once, under the refund's id
    channel = rw.world.container.channel
    assert isinstance(channel, SandboxChannel)
    upstream = channel.query_refund(upstream_reference_of(payment), refund.id)
    assert upstream is not None and upstream.succeeded and upstream.amount == 5_000


# -- voids ---------------------------------------------------------------------------------------
def test_void_of_a_refunded_sale_is_refused_and_changes_nothing(edge: Edge) -> None:
    gw, rw = edge.gw, edge.rw
    terminal = gw.signed_on()
    sale = terminal.client.sale(card(), 20_000)
    assert sale.code == "00"
    stan = sale.request.text(11)
    payment = gw.payment(sale.response.text(37) or "")
    edge.later(hours=1)
    assert refund_of(terminal, sale, 3_000, DEBIT).code == "00"  # partial, same day: allowed
    merchant = chart.merchant_unsettled(rw.world.merchant_a)

    def snapshot() -> tuple[object, ...]:
        paid = gw.payment(payment.rrn)
        refunds = [(r.id, r.amount, r.status) for r in edge.refunds()]
        money = edge.holds(merchant)
        return paid.status, paid.captured_amount, paid.refunded_amount, refunds, money

    for executed in (False, True):  # the refund still approved, then carried out
        if executed:
            rw.run_worker()
            assert [r.status for r in edge.refunds()] == ["succeeded"]
        before = snapshot()
        void = terminal.client.void(card(), stan)  # the simulator's own 消费撤销
        assert (void.request.mti, void.code) == ("0200", "12")
        assert void.mac_ok and not void.response.has(38)
        assert snapshot() == before
        assert gw.cases() == []
    assert gw.payment(payment.rrn).status == PaymentStatus.CAPTURED.value
    # the terminal still counts the sale and the refund, as the host does
    settlement = terminal.client.settle()
    assert settlement.code == "00"
    assert settlement.response.text(48) == "000000020000001" + "000000003000001" + "1"


# -- the simulator's command line ----------------------------------------------------------------
class Cli:
    def __init__(self, gw: Gateway, state: Path) -> None:
        self.gw, self.state, self.runner = gw, state, CliRunner()
        world = gw.world
        self.common = [
            "--terminal-id", world.terminal_a, "--merchant-id", world.merchant_a,
            "--host", "127.0.0.1", "--port", str(gw.port), "--state", str(state),
        ]  # fmt: skip

    def __call__(self, command: str, *args: str) -> Result:
        return self.runner.invoke(cli, ["terminal", command, *self.common, *args])

    def sign_on(self) -> None:
        key = self.gw.master_key(self.gw.world.terminal_a).hex().upper()
        signed = self("signon", "--master-key", key)
        assert signed.exit_code == 0, signed.output

    def journal(self) -> list[dict[str, object]]:
        entries: list[dict[str, object]] = json.loads(self.state.read_text())["journal"]
        return entries


def slip_value(output: str, label: str) -> str:
    """A line of the printed slip, e.g. ``参考号 REF NO      : 263270000001`` → the value."""
    [line] = [line for line in output.splitlines() if line.startswith(label)]
    return line.partition(": ")[2]


def test_cli_preauth_then_completion(edge: Edge, tmp_path: Path) -> None:
    gw = edge.gw
    run = Cli(gw, tmp_path / "t.json")
    run.sign_on()
    held = run("preauth", "--pan", CREDIT, "--amount", "5000")
    assert held.exit_code == 0, held.output
    assert "预授权 PRE-AUTH" in held.output and "RMB 50.00" in held.output
    assert "625807******0017" in held.output and CREDIT not in held.output
    assert "应答码 RESPONSE    : 00" in held.output
    rrn = slip_value(held.output, "参考号 REF NO")
    payment = gw.payment(rrn)
    assert (payment.status, payment.amount) == (PaymentStatus.AUTHORIZED.value, 5_000)
    assert payment.auth_code == slip_value(held.output, "授权码 AUTH NO")

    too_much = run("complete", "--pan", CREDIT, "--amount", "5751")  # over 115 %
    assert too_much.exit_code == 3 and "13 invalid amount" in too_much.output
    assert gw.payment(rrn).status == PaymentStatus.AUTHORIZED.value

    done = run("complete", "--pan", CREDIT, "--amount", "5500")
    assert done.exit_code == 0, done.output
    assert "预授权完成 COMPLETION" in done.output and "RMB 55.00" in done.output
    assert "625807******0017" in done.output and CREDIT not in done.output
    assert slip_value(done.output, "参考号 REF NO") == rrn
    payment = gw.payment(rrn)
    assert (payment.status, payment.captured_amount) == (PaymentStatus.CAPTURED.value, 5_500)
    assert [(e["kind"], e["status"]) for e in run.journal()] == [
        ("preauth", "completed"), ("completion", "approved"),
    ]  # fmt: skip
    again = run("complete", "--pan", CREDIT, "--amount", "100")  # nothing left to complete
    assert again.exit_code == 1 and "no preauth" in again.output
    settled = run("settle")
    assert settled.exit_code == 0 and "平 balanced" in settled.output
    assert "消费 SALES         : 1 / RMB 55.00" in settled.output
    assert CREDIT not in run.state.read_text()
    assert len(gw.payments()) == 1


def test_cli_balance_inquiry(edge: Edge, tmp_path: Path) -> None:
    gw = edge.gw
    run = Cli(gw, tmp_path / "t.json")
    run.sign_on()
    debit = run("balance", "--pan", DEBIT, "--pin", PIN)
    assert debit.exit_code == 0, debit.output
    assert "查询 BALANCE" in debit.output
    assert slip_value(debit.output, "余额 BALANCE") == "RMB 1,000,000.00"  # docs/sandbox.md
    assert "622202*********0018" in debit.output and DEBIT not in debit.output
    credit = run("balance", "--pan", CREDIT)
    assert credit.exit_code == 0, credit.output
    assert slip_value(credit.output, "余额 BALANCE") == "RMB 50,000.00"
    wrong_pin = run("balance", "--pan", DEBIT, "--pin", "000000")
    assert wrong_pin.exit_code == 3 and "55 incorrect PIN" in wrong_pin.output
    assert "余额 BALANCE" not in wrong_pin.output
    assert gw.payments() == []  # an inquiry makes no payment …
    assert run.journal() == []  # … and is not in the terminal's batch
    state = json.loads(run.state.read_text())
    assert state["pending_reversal"] is None  # not reversible
    assert DEBIT not in run.state.read_text()


def test_cli_reverse_by_stan_undoes_the_sale(edge: Edge, tmp_path: Path) -> None:
    gw = edge.gw
    run = Cli(gw, tmp_path / "t.json")
    run.sign_on()
    kept = run("sale", "--pan", DEBIT, "--amount", "1000", "--pin", PIN)
    assert kept.exit_code == 0, kept.output
    sold = run("sale", "--pan", CREDIT, "--amount", "2500")
    assert sold.exit_code == 0, sold.output
    rrn = slip_value(sold.output, "参考号 REF NO")
    stan = slip_value(sold.output, "凭证号 VOUCHER NO")
    assert gw.payment(rrn).status == PaymentStatus.CAPTURED.value

    nothing = run("reverse")  # no pending reversal and no STAN given
    assert nothing.exit_code == 1 and "nothing to reverse" in nothing.output
    odd = run("reverse", "--pan", CREDIT, "--original-stan", stan, "--reason", "68")
    assert odd.exit_code == 1 and "98, 96, A0 or 06" in odd.output  # never sent nor kept
    assert gw.payment(rrn).status == PaymentStatus.CAPTURED.value

    reversed_ = run("reverse", "--pan", CREDIT, "--original-stan", stan)
    assert reversed_.exit_code == 0, reversed_.output
    assert "冲正 REVERSAL" in reversed_.output and "RMB 25.00" in reversed_.output
    assert "625807******0017" in reversed_.output and CREDIT not in reversed_.output
    assert slip_value(reversed_.output, "凭证号 VOUCHER NO") == stan  # the original's STAN
    assert gw.payment(rrn).status == PaymentStatus.REVERSED.value
    assert [e["status"] for e in run.journal()] == ["approved", "reversed"]
    kept_rrn = slip_value(kept.output, "参考号 REF NO")
    assert gw.payment(kept_rrn).status == PaymentStatus.CAPTURED.value  # the other one stays
    settled = run("settle")  # the reversed sale is out of both sides' totals
    assert settled.exit_code == 0 and "平 balanced" in settled.output
    assert "消费 SALES         : 1 / RMB 10.00" in settled.output
    assert gw.cases() == []


def test_cli_pending_reversal_after_no_answer_undoes_the_sale(edge: Edge, tmp_path: Path) -> None:
    """The terminal gives up waiting (--timeout) while the network is slow: the reversal it
    wrote before sending is pending, `reverse` sends it, and the sale the host did make is
    undone."""
    gw = edge.gw
    channel = gw.world.container.channel
    assert isinstance(channel, SandboxChannel)
    run = Cli(gw, tmp_path / "t.json")
    run.sign_on()
    channel.latency_seconds = 1.5
    try:
        lost = run("sale", "--pan", CREDIT, "--amount", "4200", "--timeout", "0.3")
    finally:
        channel.latency_seconds = 0.0
    assert lost.exit_code == 4, lost.output
    assert "a reversal (冲正) is pending" in lost.output
    pending = json.loads(run.state.read_text())["pending_reversal"]
    assert pending is not None and pending["reason"] == "98"
    assert run.journal() == []

    sent = run("reverse")  # waits for the original if it is still at the network
    assert sent.exit_code == 0, sent.output
    assert "冲正 REVERSAL" in sent.output and "RMB 42.00" in sent.output
    assert "625807******0017" in sent.output
    payment = edge.only_payment()
    assert (payment.status, payment.amount) == (PaymentStatus.REVERSED.value, 4_200)
    state_text = run.state.read_text()
    assert json.loads(state_text)["pending_reversal"] is None
    assert CREDIT not in state_text  # the card number went with the acknowledged reversal
    assert run("reverse").exit_code == 1  # nothing left to send
    assert gw.cases() == []


def test_cli_reversal_by_stan_repeats_the_originals_entry_mode(
    edge: Edge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[Kind, Message]] = []
    real_send: Callable[..., Reply] = TerminalClient.send

    def recording(self: TerminalClient, kind: Kind, message: Message, *, mac: bool = True) -> Reply:
        sent.append((kind, message))
        return real_send(self, kind, message, mac=mac)

    monkeypatch.setattr(TerminalClient, "send", recording)
    run = Cli(edge.gw, tmp_path / "t.json")
    run.sign_on()
    sold = run("sale", "--pan", DEBIT, "--amount", "1000", "--pin", PIN)
    assert sold.exit_code == 0, sold.output
    stan = slip_value(sold.output, "凭证号 VOUCHER NO")
    reversed_ = run("reverse", "--pan", DEBIT, "--original-stan", stan)
    assert reversed_.exit_code == 0, reversed_.output
    [sale] = [m for k, m in sent if k is Kind.SALE]
    [reversal] = [m for k, m in sent if k is Kind.REVERSAL]
    kept = (2, 3, 4, 11, 22, 25, 41, 42, 49, 60)
    assert {n: reversal.fields.get(n) for n in kept} == {n: sale.fields.get(n) for n in kept}
