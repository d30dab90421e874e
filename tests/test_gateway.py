"""The ISO 8583 gateway end to end over real sockets, on SQLite and PostgreSQL: every
transaction of the terminal spec, every sandbox card, exactly-once (replay and 94), reversals
(applied, unknown, settled), voids after settlement, MAC, sign-on, terminal and merchant
checks, batch totals, bad input — and the ledger verified after every scenario."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import replace
from datetime import timedelta
from importlib import resources
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import delete, event, func, select
from typer.testing import CliRunner

from shoudan.api.app import create_app
from shoudan.auth.domain import Principal, Role
from shoudan.channels.domain import CardData, ChannelResult, EntryMode
from shoudan.channels.sandbox import SandboxChannel
from shoudan.cli.main import app as cli
from shoudan.cli.serve import _serve_with_gateway
from shoudan.core.config import Settings
from shoudan.core.db import Database
from shoudan.gateway import keys, repository
from shoudan.gateway.codec import MAC_FIELD, BatchTotals, Message, decode, encode
from shoudan.gateway.domain import Kind, next_stan
from shoudan.gateway.models import GatewayRequest, TerminalSession
from shoudan.gateway.simulator import BY_KIND, Card, Reply
from shoudan.ledger.models import LedgerEntry
from shoudan.payments.domain import PaymentStatus
from shoudan.payments.service import upstream_reference_of
from shoudan.refunds.models import Refund
from shoudan.terminals.service import set_terminal_status
from tests.gateway_world import (
    HEADER,
    TPDU,
    Gateway,
    Terminal,
    connect,
    exchange,
    read_reply,
    start_gateway,
)
from tests.payments_world import build_world, check_day_totals
from tests.ports import free_port

CARDS: dict[str, str] = json.loads(
    resources.files("shoudan.channels").joinpath("fixtures/sandbox_cards.json").read_text()
)
DEBIT, CREDIT = CARDS["approve_debit"], CARDS["approve_credit"]
PIN = "123456"


@pytest.fixture
def gw(db_url, tmp_path):
    # as `shoudan gateway` opens it: on SQLite with group commit, so with the baton
    database = Database(db_url, group_commit=Settings().sqlite_group_commit)
    world = build_world(database, tmp_path)
    gateway = start_gateway(world)
    try:
        yield gateway
    finally:
        gateway.background.stop()
        database.dispose()
    report = world.container.ledger.verify()
    assert report.ok, report.violations[:5]
    check_day_totals(world)


def card(pan: str = DEBIT, pin: str | None = PIN, mode: EntryMode = EntryMode.CHIP) -> Card:
    return Card(pan=pan, pin=pin, entry_mode=mode)


def fields_without_mac(reply: bytes) -> dict:
    message = decode(reply[11:])
    return {n: v for n, v in message.fields.items() if n != MAC_FIELD}


def mac_ok(terminal: Terminal, reply: bytes) -> bool:
    body = reply[11:]
    return keys.mac_matches(terminal.state.keys.mak, body[:-8], decode(body).binary(MAC_FIELD))


def reversal_of(request: Message, reason: str = "98") -> Message:
    """The 0400 a terminal sends for ``request``: its 2, 3, 4, 11, 22, 25, 41, 42, 49, 60."""
    kept = (2, 3, 4, 11, 22, 25, 41, 42, 49, 60)
    return Message("0400", {n: v for n, v in request.fields.items() if n in kept} | {39: reason})


def journal_count(gw: Gateway) -> int:
    with gw.world.container.database.read() as session:
        return session.scalar(select(func.count()).select_from(GatewayRequest)) or 0


# -- sign-on -------------------------------------------------------------------------------------
def test_sign_on_issues_fresh_keys_under_the_master_key(gw: Gateway, monkeypatch) -> None:
    world = gw.world
    tmk = gw.master_key(world.terminal_a)
    pik, mak = bytes.fromhex("0123456789ABCDEF" * 2), bytes.fromhex("FEDCBA9876543210" * 2)
    monkeypatch.setattr(
        "shoudan.gateway.service.issue_working_keys", lambda: keys.WorkingKeys(pik, mak)
    )
    request = encode(Message("0800", {
        11: "000001", 41: world.terminal_a, 42: world.merchant_a, 60: "00000000003", 63: "001",
    }))  # fmt: skip
    reply = exchange(gw.port, request)
    assert reply is not None

    def des3(key: bytes, data: bytes) -> bytes:  # E(K, data), 3DES-ECB, written out here
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
        from cryptography.hazmat.primitives.ciphers import Cipher, modes

        encryptor = Cipher(TripleDES(key + key[:8]), modes.ECB()).encryptor()
        return encryptor.update(data) + encryptor.finalize()

    key_data = des3(tmk, pik) + des3(pik, bytes(8))[:4] + des3(tmk, mak) + des3(mak, bytes(8))[:4]
    expected = bytes.fromhex(
        "60 0000 0003"  # TPDU: id, destination and source swapped
        "60 31 00 00 00 00"  # header echoed
        "08 10"  # MTI
        "00 3A 00 01 02 C0 00 14"  # 11 12 13 15 | 32 | 39 | 41 42 | 60 62
        "00 00 01"  # 11 echoed
        "10 00 00"  # 12: 10:00:00 in Shanghai (the world's clock)
        "11 23 11 23"  # 13, 15: 23 November
        "03 89 80"  # 32 acquirer 898
        "30 30"  # 39 "00"
        + world.terminal_a.encode().hex()
        + world.merchant_a.encode().hex()
        + "00 11 00 00 00 01 00 30"  # 60: the open batch 000001 (the terminal had none)
        + "00 40"  # 62: 40 bytes
        + key_data.hex()
    )
    assert reply == expected
    with world.container.database.read() as session:
        row = session.get(TerminalSession, world.terminal_a)
        assert row is not None
        assert (row.pik_kcv, row.mak_kcv) == (key_data[16:20].hex(), key_data[36:].hex())
        assert pik not in row.pik_enc and mak not in row.mak_enc  # only ciphertexts stored


def test_new_sign_on_retires_the_old_keys(gw: Gateway) -> None:
    terminal = gw.signed_on()
    state = terminal.state
    old = (state.pik, state.mak)
    assert terminal.client.sale(card(), 1_000).code == "00"
    assert terminal.client.sign_on(gw.master_key(state.terminal_id)).code == "00"
    new = (state.pik, state.mak)
    assert new != old
    state.pik, state.mak = old  # a request still MACed with the old MAK
    stale = terminal.client.sale(card(), 1_000)
    assert stale.code == "A0" and not stale.response.has(MAC_FIELD)
    state.pik, state.mak = new
    assert terminal.client.sale(card(), 1_000).code == "00"


def test_decrypted_keys_are_held_for_a_bounded_number_of_sessions(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shoudan.gateway import service

    monkeypatch.setattr(service, "KEY_CACHE_SIZE", 1)  # every other terminal clears it
    first, second = gw.signed_on(), gw.signed_on(gw.world.terminal_a2)
    for _ in range(2):
        assert first.client.sale(card(), 1_000).code == "00"
        assert second.client.sale(card(), 1_000).code == "00"
    assert len(gw.world.container.gateway._clear_keys) == 1
    # a re-sign-on's keys are new ciphertexts: the old clear keys are never found again
    assert first.client.sign_on(gw.master_key(first.client.state.terminal_id)).code == "00"
    assert first.client.sale(card(), 1_000).code == "00"


# -- every sandbox card --------------------------------------------------------------------------
SANDBOX_SALES = [
    ("approve_debit", PIN, 10_000, "00", PaymentStatus.CAPTURED),
    ("approve_credit", None, 10_000, "00", PaymentStatus.CAPTURED),
    ("insufficient_funds", PIN, 10_000, "51", PaymentStatus.DECLINED),
    ("expired", None, 10_000, "54", PaymentStatus.DECLINED),
    ("lost", PIN, 10_000, "41", PaymentStatus.DECLINED),
    ("issuer_unavailable", None, 10_000, "91", PaymentStatus.DECLINED),
    ("no_answer", PIN, 10_000, "98", PaymentStatus.DECLINED),
    ("card_closed", PIN, 10_000, "00", PaymentStatus.CAPTURED),
    ("flaky_refund", None, 10_000, "00", PaymentStatus.CAPTURED),
    ("open_to_buy", None, 60_000, "00", PaymentStatus.CAPTURED),
    ("open_to_buy", None, 50_000, "51", PaymentStatus.DECLINED),  # over the ¥1,000 open-to-buy
]


def test_sale_with_every_sandbox_card(gw: Gateway) -> None:
    terminal = gw.signed_on()
    for name, pin, amount, code, status in SANDBOX_SALES:
        reply = terminal.client.sale(card(CARDS[name], pin), amount)
        assert (name, reply.code) == (name, code)
        assert reply.mac_ok, name
        rrn = reply.response.text(37)
        assert rrn is not None and len(rrn) == 12
        assert reply.response.has(38) == (code == "00"), name
        payment = gw.payment(rrn)
        assert (name, payment.status) == (name, status.value)
        assert payment.amount == amount and payment.terminal_id == gw.world.terminal_a
        assert payment.description.endswith(f"STAN {reply.request.text(11)}")
        if code == "98":
            assert payment.decline_code == "98"  # timed out upstream, reversed there
            # the terminal gave up waiting before that answer: its reversal is acknowledged
            answer = exchange(gw.port, terminal.mac(reversal_of(reply.request)))
            assert answer is not None and decode(answer[11:]).text(39) == "00"
            assert mac_ok(terminal, answer)
            assert gw.payment(rrn).status == PaymentStatus.DECLINED.value


def test_the_no_answer_wait_does_not_hold_up_another_terminal(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sandbox network runs in this process and is called holding the baton (its work
    is microseconds); its simulated wait puts the baton down (core/baton.py), so another
    terminal's sale is answered while the no-answer card's sale still waits."""
    channel = gw.world.container.channel
    assert isinstance(channel, SandboxChannel)
    channel.timeout_seconds = 2.0  # long enough for the other sale to go first
    asleep, wait = threading.Event(), channel._answer_or_time_out

    def at_the_network(card: CardData, what: str) -> None:
        asleep.set()
        wait(card, what)

    monkeypatch.setattr(channel, "_answer_or_time_out", at_the_network)
    waiting, other = gw.signed_on(), gw.signed_on(gw.world.terminal_a2)
    answered: list[tuple[str, str]] = []

    def no_answer() -> None:
        answered.append(("no_answer", waiting.client.sale(card(CARDS["no_answer"]), 10_000).code))

    thread = threading.Thread(target=no_answer, daemon=True)
    thread.start()
    assert asleep.wait(30)  # the no-answer sale waits at the network
    answered.append(("other", other.client.sale(card(), 10_000).code))
    thread.join(30)
    assert answered == [("other", "00"), ("no_answer", "98")]


def test_wrong_pin_luhn_failure_and_contactless_without_pin(gw: Gateway) -> None:
    terminal = gw.signed_on()
    assert terminal.client.sale(card(pin="654321"), 10_000).code == "55"
    bad_luhn = DEBIT[:-1] + str((int(DEBIT[-1]) + 1) % 10)
    assert terminal.client.sale(card(bad_luhn), 10_000).code == "14"
    tap = card(pin=None, mode=EntryMode.CONTACTLESS)
    assert terminal.client.sale(tap, 5_000).code == "00"  # 小额免密
    assert terminal.client.sale(card(pin=None), 5_000).code == "55"  # debit chip needs a PIN
    assert terminal.client.sale(card(), 5_000_001).code == "61"  # over ¥50,000 a transaction


def test_garbage_pin_block_is_an_incorrect_pin(gw: Gateway) -> None:
    terminal = gw.signed_on()
    message = terminal.client.card_message(Kind.SALE, card(), 10_000)
    message.fields[52] = bytes(8)  # decrypts to no format 0 block
    reply = decode(exchange(gw.port, terminal.mac(message))[11:])  # type: ignore[index]
    assert reply.text(39) == "55"
    assert gw.payments() == []


# -- exactly-once --------------------------------------------------------------------------------
def test_repeat_is_replayed_and_a_different_request_gets_94(gw: Gateway) -> None:
    terminal = gw.signed_on()
    message = terminal.client.card_message(Kind.SALE, card(), 10_000)
    request = terminal.mac(message)
    first = exchange(gw.port, request)
    again = exchange(gw.port, request)
    assert first is not None and first == again  # byte for byte: same 37, 38, 12, 13, MAC
    assert len(gw.payments()) == 1
    # another TPDU: the reply follows the new envelope, the message is the stored one
    other = exchange(gw.port, request, tpdu=bytes.fromhex("6000070005"))
    assert other is not None and other[:5] == bytes.fromhex("6000050007") and other[5:] == first[5:]
    # after a new sign-on the replay is MACed with the new key, nothing else changes
    terminal.client.sign_on(gw.master_key(terminal.state.terminal_id))
    replay = exchange(gw.port, terminal.mac(message))
    assert replay is not None and replay[:-8] == first[:-8] and mac_ok(terminal, replay)
    # same identity (MTI, 41, 42, 60.2, 11), another amount: 94, nothing charged
    message.fields[4] = "000000020000"
    duplicate = exchange(gw.port, terminal.mac(message))
    assert duplicate is not None
    assert decode(duplicate[11:]).text(39) == "94" and mac_ok(terminal, duplicate)
    assert len(gw.payments()) == 1


def test_concurrent_copies_of_one_request_make_one_payment(gw: Gateway) -> None:
    terminal = gw.signed_on()
    request = terminal.mac(terminal.client.card_message(Kind.SALE, card(), 10_000))
    replies: list[bytes | None] = []
    threads = [
        threading.Thread(target=lambda: replies.append(exchange(gw.port, request)))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(replies)) == 1 and replies[0] is not None
    assert decode(replies[0][11:]).text(39) == "00"
    assert len(gw.payments()) == 1 and journal_count(gw) == 1  # sign-ons are not journaled


def test_concurrent_sales_share_commits_and_each_keeps_its_own_result(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Eight terminals' worth of ¥50,000 sales at once, on a card allowed ¥200,000 a day, over
    eight connections (SQLite, as `shoudan gateway` runs: group commit). The day's limit is
    checked again at the write, under the write lock, so the sales that all passed the first
    check are refused there one by one — inside groups whose other members commit: four
    answered 00, four 61, and fewer commits than sales."""
    database = Database(sqlite_url, group_commit=Settings().sqlite_group_commit)
    world = build_world(database, tmp_path)
    gateway = start_gateway(world)
    commits: list[int] = []
    event.listen(database.engine, "commit", lambda _connection: commits.append(1))
    try:
        terminal = gateway.signed_on()
        requests = [
            terminal.mac(terminal.client.card_message(Kind.SALE, card(), 5_000_000))
            for _ in range(8)
        ]
        commits.clear()
        start = threading.Barrier(len(requests))
        replies: dict[int, bytes | None] = {}

        def send(index: int) -> None:
            start.wait()
            replies[index] = exchange(gateway.port, requests[index])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        codes = sorted(decode(reply[11:]).text(39) or "" for reply in replies.values() if reply)
        assert codes == ["00"] * 4 + ["61"] * 4
        assert len(commits) < len(requests)  # groups, not one commit per sale
        payments = gateway.payments()
        assert sorted(p.status for p in payments) == ["captured"] * 4 + ["declined"] * 4
        assert sum(p.captured_amount for p in payments) == 20_000_000
        assert journal_count(gateway) == 8  # every answer journaled, refusals included
    finally:
        gateway.background.stop()
        database.dispose()
    assert world.container.ledger.verify().ok
    check_day_totals(world)


# -- reversal ------------------------------------------------------------------------------------
def test_reversal_of_an_applied_sale_undoes_it_once(gw: Gateway) -> None:
    terminal = gw.signed_on()
    sale = terminal.client.sale(card(), 10_000)
    assert sale.code == "00"
    stan = sale.request.text(11)
    reversal = terminal.client.reverse(card(), stan)
    assert reversal.code == "00" and reversal.mac_ok
    assert reversal.response.text(37) == sale.response.text(37)
    payment = gw.payment(sale.response.text(37) or "")
    assert payment.status == PaymentStatus.REVERSED.value
    again = terminal.client.reverse(card(), stan)  # the terminal resends it
    assert again.code == "00" and again.response.fields == reversal.response.fields
    other_reason = terminal.client.reverse(card(), stan, reason="06")  # still acknowledged
    assert other_reason.code == "00" and other_reason.response.fields == reversal.response.fields
    assert gw.payment(payment.rrn).status == PaymentStatus.REVERSED.value


def test_reversal_of_an_unknown_original_is_acknowledged_and_blocks_it(gw: Gateway) -> None:
    terminal = gw.signed_on()
    original = terminal.client.card_message(Kind.SALE, card(), 10_000)
    answer = exchange(gw.port, terminal.mac(reversal_of(original)))
    assert answer is not None and decode(answer[11:]).text(39) == "00"
    late = exchange(gw.port, terminal.mac(original))  # the original arrives after all
    assert late is not None and decode(late[11:]).text(39) == "12"
    assert gw.payments() == []


def test_reversal_finds_a_sale_whose_journal_row_was_lost(gw: Gateway) -> None:
    """A process that dies between a sale's payment and its journal row: the terminal got no
    answer and reverses; the payment carries the request's identity, so it is undone."""
    terminal = gw.signed_on()
    sale = terminal.client.sale(card(), 10_000)
    with gw.world.container.database.transaction() as session:
        session.execute(delete(GatewayRequest).where(GatewayRequest.kind == Kind.SALE.value))
    reversal = terminal.client.reverse(card(), sale.request.text(11))
    assert reversal.code == "00" and reversal.response.text(37) == sale.response.text(37)
    assert gw.payment(sale.response.text(37) or "").status == PaymentStatus.REVERSED.value
    late = exchange(gw.port, encode(sale.request))  # the sale again: it must not come back
    assert late is not None and decode(late[11:]).text(39) == "12"
    assert len(gw.payments()) == 1


def test_a_sale_no_batch_counted_is_undone_even_after_its_batch_closed(gw: Gateway) -> None:
    """Its journal row lost, the sale is in nobody's totals (the terminal never got its
    answer): its reversal after the 0500 still undoes it."""
    terminal = gw.signed_on()
    sale = terminal.client.sale(card(), 10_000)
    with gw.world.container.database.transaction() as session:
        session.execute(delete(GatewayRequest).where(GatewayRequest.kind == Kind.SALE.value))
    terminal.state.journal.clear()  # the terminal never got the answer either
    assert terminal.client.settle().response.text(48) == "0" * 30 + "1"  # balanced, without it
    answer = exchange(gw.port, terminal.mac(reversal_of(sale.request)))
    assert answer is not None and decode(answer[11:]).text(39) == "00"
    assert gw.payment(sale.response.text(37) or "").status == PaymentStatus.REVERSED.value
    assert gw.cases() == []


def test_reversal_after_settlement_is_recorded_and_acknowledged(gw: Gateway) -> None:
    terminal = gw.signed_on()
    sale = terminal.client.sale(card(), 10_000)
    payment = gw.payment(sale.response.text(37) or "")
    gw.settle_payment(payment.id)
    reversal = terminal.client.reverse(card(), sale.request.text(11))
    assert reversal.code == "00"
    assert gw.payment(payment.rrn).status == PaymentStatus.CAPTURED.value  # untouched
    [case] = gw.cases()
    assert (case.kind, case.payment_id, case.stan) == (
        "settled_reversal", payment.id, sale.request.text(11),
    )  # fmt: skip


def test_reversal_after_the_terminal_settled_its_batch_is_recorded_for_staff(gw: Gateway) -> None:
    """The batch's totals counted the sale: undoing it now would unbalance a closed batch. A
    pre-auth (not counted) of a closed batch is still undone."""
    terminal = gw.signed_on()
    sale = terminal.client.sale(card(), 10_000)
    preauth = terminal.client.preauth(card(), 20_000)
    assert terminal.client.settle().code == "00"
    for original in (sale, preauth):
        answer = exchange(gw.port, terminal.mac(reversal_of(original.request)))
        assert answer is not None and decode(answer[11:]).text(39) == "00"
    assert gw.payment(sale.response.text(37) or "").status == PaymentStatus.CAPTURED.value
    assert gw.payment(preauth.response.text(37) or "").status == PaymentStatus.REVERSED.value
    [case] = gw.cases()
    assert (case.kind, case.stan) == ("settled_reversal", sale.request.text(11))


def test_reversal_of_a_preauth_completed_in_a_closed_batch_is_recorded_for_staff(
    gw: Gateway,
) -> None:
    terminal = gw.signed_on()
    preauth = terminal.client.preauth(card(), 30_000)
    assert terminal.client.complete(card(), 25_000, preauth.request.text(11)).code == "00"
    assert terminal.client.settle().response.text(48) == "000000025000001" + "0" * 15 + "1"
    answer = exchange(gw.port, terminal.mac(reversal_of(preauth.request)))
    assert answer is not None and decode(answer[11:]).text(39) == "00"
    payment = gw.payment(preauth.response.text(37) or "")
    assert payment.status == PaymentStatus.CAPTURED.value  # counted by the closed batch
    assert [case.kind for case in gw.cases()] == ["settled_reversal"]


def test_reversal_of_a_refunded_sale_is_recorded_for_staff_and_acknowledged(gw: Gateway) -> None:
    terminal = gw.signed_on()
    sale = terminal.client.sale(card(), 10_000)
    assert refund_of(terminal, sale, 2_000).code == "00"
    reversal = terminal.client.reverse(card(), sale.request.text(11))
    assert reversal.code == "00"
    payment = gw.payment(sale.response.text(37) or "")
    assert payment.status == PaymentStatus.CAPTURED.value  # the refund stands; nothing twice
    [case] = gw.cases()
    assert (case.kind, case.payment_id) == ("refunded_reversal", payment.id)


def ledger_ids(gw: Gateway, payment_id: str) -> set[str]:
    with gw.world.container.database.read() as session:
        return set(
            session.scalars(select(LedgerEntry.id).where(LedgerEntry.id.like(f"pay:{payment_id}:%")))
        )


def test_reversal_of_a_completion_lets_the_preauth_stand_again(gw: Gateway) -> None:
    """完成冲正: the terminal never saw the completion's answer, so the pre-auth stands, its
    amount held again under a new hold; completed again, the capture has its own entries."""
    terminal = gw.signed_on()
    preauth = terminal.client.preauth(card(), 30_000)
    done = terminal.client.complete(card(), 25_000, preauth.request.text(11))
    assert done.code == "00"
    assert terminal.client.reverse(card(), done.request.text(11)).code == "00"
    payment = gw.payment(preauth.response.text(37) or "")
    assert (payment.status, payment.captured_amount, payment.fee) == ("authorized", 0, 0)
    network = gw.world.container.payments.channel.query(upstream_reference_of(payment))
    assert network is not None and network.state == "authorized"
    assert gw.cases() == []
    assert terminal.client.reverse(card(), done.request.text(11)).code == "00"  # resent: once
    assert gw.payment(payment.rrn).status == PaymentStatus.AUTHORIZED.value
    assert [e.status for e in terminal.state.journal] == ["approved", "reversed"]
    again = terminal.client.complete(card(), 28_000, preauth.request.text(11))
    assert again.code == "00" and gw.payment(payment.rrn).captured_amount == 28_000
    entries = ledger_ids(gw, payment.id)
    assert entries == {f"pay:{payment.id}:{name}" for name in (
        "auth", "auth-release", "capture", "completion-reversal",
        "auth-2", "auth-2-release", "capture-2",
    )}  # fmt: skip
    settled = terminal.client.settle()  # both sides count the second completion only
    assert settled.response.text(48) == "000000028000001" + "0" * 15 + "1"
    check_day_totals(gw.world)


def test_a_completion_reversed_before_a_settlement_can_be_redone_and_reversed_after_it(
    gw: Gateway,
) -> None:
    """Batch 1: completed, reversed (the pre-auth stands), settled without it. Batch 2:
    completed again and that completion reversed: undone, not mistaken for batch 1's."""
    terminal = gw.signed_on()
    preauth = terminal.client.preauth(card(), 30_000)
    first = terminal.client.complete(card(), 25_000, preauth.request.text(11))
    assert terminal.client.reverse(card(), first.request.text(11)).code == "00"
    assert terminal.client.settle().response.text(48) == "0" * 30 + "1"
    # the terminal's journal started afresh with batch 2: the completion names batch 1's
    second = terminal.client.card_message(
        Kind.COMPLETION, card(), 20_000, {61: f"000001{preauth.request.text(11)}"}
    )
    answer = exchange(gw.port, terminal.mac(second))
    assert answer is not None and decode(answer[11:]).text(39) == "00"
    assert gw.payment(preauth.response.text(37) or "").captured_amount == 20_000
    reversal = exchange(gw.port, terminal.mac(reversal_of(second)))
    assert reversal is not None and decode(reversal[11:]).text(39) == "00"
    assert gw.payment(preauth.response.text(37) or "").status == PaymentStatus.AUTHORIZED.value
    assert gw.cases() == []


def test_a_refunded_completion_is_not_undone_by_its_reversal(gw: Gateway) -> None:
    terminal = gw.signed_on()
    preauth = terminal.client.preauth(card(), 30_000)
    done = terminal.client.complete(card(), 25_000, preauth.request.text(11))
    assert refund_of(terminal, done, 5_000).code == "00"
    assert terminal.client.reverse(card(), done.request.text(11)).code == "00"
    assert gw.payment(preauth.response.text(37) or "").status == PaymentStatus.CAPTURED.value
    [case] = gw.cases()
    assert case.kind == "completion_reversal" and "refund" in case.detail


def test_reversal_of_a_preauth_and_of_a_void(gw: Gateway) -> None:
    terminal = gw.signed_on()
    preauth = terminal.client.preauth(card(), 30_000)
    assert terminal.client.reverse(card(), preauth.request.text(11)).code == "00"
    assert gw.payment(preauth.response.text(37) or "").status == PaymentStatus.REVERSED.value
    assert gw.cases() == []


def test_reversal_of_a_void_captures_the_payment_again(gw: Gateway) -> None:
    """撤销冲正: the terminal never saw the void's answer, so the sale stands — upstream, in
    the books and in the batch's totals; it can then be voided again, once more in full."""
    terminal = gw.signed_on()
    sale = terminal.client.sale(card(), 10_000)
    rrn = sale.response.text(37) or ""
    void = terminal.client.void(card(), sale.request.text(11))
    assert void.code == "00" and gw.payment(rrn).status == PaymentStatus.VOIDED.value
    assert terminal.client.reverse(card(), void.request.text(11)).code == "00"
    payment = gw.payment(rrn)
    assert payment.status == PaymentStatus.CAPTURED.value and payment.voided_at is None
    network = gw.world.container.payments.channel.query(upstream_reference_of(payment))
    assert network is not None and network.state == "captured"
    assert terminal.client.reverse(card(), void.request.text(11)).code == "00"  # resent: once
    assert gw.payment(rrn).status == PaymentStatus.CAPTURED.value
    again = terminal.client.void(card(), sale.request.text(11))  # a new void, a new STAN
    assert again.code == "00" and gw.payment(rrn).status == PaymentStatus.VOIDED.value
    entries = ledger_ids(gw, payment.id)
    assert entries == {f"pay:{payment.id}:{verb}" for verb in (
        "capture", "void", "void-reversal", "void-2",
    )}  # fmt: skip
    assert terminal.client.settle().response.text(48) == "0" * 30 + "1"  # voided: not counted
    assert gw.cases() == []
    check_day_totals(gw.world)


def test_a_sale_whose_void_was_reversed_is_in_both_sides_totals(gw: Gateway) -> None:
    terminal = gw.signed_on()
    sale = terminal.client.sale(card(), 10_000)
    void = terminal.client.void(card(), sale.request.text(11))
    assert terminal.client.reverse(card(), void.request.text(11)).code == "00"
    assert [e.status for e in terminal.state.journal] == ["approved", "reversed"]
    settled = terminal.client.settle()
    assert settled.response.text(48) == "000000010000001" + "0" * 15 + "1"  # balanced
    assert gw.cases() == []


def test_reversal_of_a_preauth_void_restores_it_and_of_a_closed_batchs_void_is_a_case(
    gw: Gateway,
) -> None:
    terminal = gw.signed_on()
    preauth = terminal.client.preauth(card(), 30_000)
    cancel = terminal.client.void(card(), preauth.request.text(11))
    assert cancel.code == "00"
    assert terminal.client.reverse(card(), cancel.request.text(11)).code == "00"
    # the pre-auth stands again, under a new hold, and can be completed
    restored = gw.payment(preauth.response.text(37) or "")
    assert restored.status == PaymentStatus.AUTHORIZED.value
    assert terminal.client.complete(card(), 30_000, preauth.request.text(11)).code == "00"
    sale = terminal.client.sale(card(), 10_000)
    void = terminal.client.void(card(), sale.request.text(11))
    assert terminal.client.settle().code == "00"  # the batch closes without the voided sale
    answer = exchange(gw.port, terminal.mac(reversal_of(void.request)))
    assert answer is not None and decode(answer[11:]).text(39) == "00"
    assert gw.payment(sale.response.text(37) or "").status == PaymentStatus.VOIDED.value
    assert [case.kind for case in gw.cases()] == ["void_reversal"]


# -- voids ---------------------------------------------------------------------------------------
def void_of(terminal: Terminal, sale: Reply, **changes: str) -> str:
    """Send a sale void naming ``sale`` (fields overridden by ``changes``); field 39."""
    extra = {
        61: changes.get("f61", f"{terminal.state.batch}{sale.request.text(11)}1123"),
        37: changes.get("rrn", sale.response.text(37) or ""),
    }
    amount = int(changes.get("amount", sale.request.text(4) or "0"))
    message = terminal.client.card_message(Kind.SALE_VOID, card(), amount, extra)  # type: ignore[arg-type]
    if "batch" in changes:
        message.fields[60] = f"23{changes['batch']}000"
    reply = exchange(terminal.gateway.port, terminal.mac(message))
    assert reply is not None
    return decode(reply[11:]).text(39) or ""


def test_void_rules(gw: Gateway) -> None:
    terminal = gw.signed_on()
    first = terminal.client.sale(card(), 10_000)
    assert void_of(terminal, first, rrn="269999999999") == "25"  # RRN does not match
    assert void_of(terminal, first, amount="5000") == "13"  # a void is for the full amount
    assert void_of(terminal, first, f61=f"{terminal.state.batch}9999991123") == "25"  # unknown
    void = terminal.client.void(card(), first.request.text(11))
    assert void.code == "00" and void.mac_ok
    assert gw.payment(first.response.text(37) or "").status == PaymentStatus.VOIDED.value
    assert void_of(terminal, first) == "12"  # already voided
    settled = terminal.client.sale(card(), 20_000)
    gw.settle_payment(gw.payment(settled.response.text(37) or "").id)
    assert void_of(terminal, settled) == "12"  # settled: refund instead
    declined = terminal.client.sale(card(CARDS["insufficient_funds"]), 10_000)
    assert void_of(terminal, declined) == "12"  # nothing to void


def test_void_after_batch_settlement_is_refused(gw: Gateway) -> None:
    terminal = gw.signed_on()
    sale = terminal.client.sale(card(), 10_000)
    old_batch = terminal.state.batch
    assert terminal.client.settle().code == "00"
    assert terminal.state.batch != old_batch
    assert void_of(terminal, sale, f61=f"{old_batch}{sale.request.text(11)}1123") == "12"
    assert gw.payment(sale.response.text(37) or "").status == PaymentStatus.CAPTURED.value
    # and a request still numbered in the closed batch is out of step
    assert void_of(terminal, sale, batch=old_batch) == "22"


def test_a_void_whose_identity_another_request_took_meanwhile_still_follows_the_network(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another gateway process journals a different request under the void's identity while
    the network voids: the void is recorded all the same (our books follow the network), the
    terminal gets that identity's answer (94: another request), and staff get a case."""
    terminal = gw.signed_on()
    sale = terminal.client.sale(card(), 10_000)
    container, void_stan = gw.world.container, next_stan(terminal.state.stan)
    network_void = container.payments.channel.void

    def meanwhile_another_request(reference: str) -> ChannelResult:
        result = network_void(reference)
        with container.database.transaction() as session:
            session.add(GatewayRequest(
                terminal_id=terminal.state.terminal_id, merchant_id=terminal.state.merchant_id,
                mti="0200", batch=terminal.state.batch, stan=void_stan, kind="balance",
                request_hash="0" * 64, response_code="00", response=b"",
                created_at=gw.world.clock.now(),
            ))  # fmt: skip
        return result

    monkeypatch.setattr(container.payments.channel, "void", meanwhile_another_request)
    void = terminal.client.void(card(), sale.request.text(11))
    assert void.request.text(11) == void_stan and void.code == "94"
    payment = gw.payment(sale.response.text(37) or "")
    assert payment.status == PaymentStatus.VOIDED.value
    [case] = gw.cases()
    assert (case.kind, case.payment_id, case.stan) == ("answered_elsewhere", payment.id, void_stan)


# -- pre-authorisation ---------------------------------------------------------------------------
def test_a_completion_the_network_refuses_gets_the_networks_code(gw: Gateway) -> None:
    """Within our 115 % but beyond the open-to-buy card's ¥1,000.00: the network's 51, not
    a generic 12; the pre-auth stays as it was and can still be completed within it."""
    terminal, limited = gw.signed_on(), card(CARDS["open_to_buy"], None)
    preauth = terminal.client.preauth(limited, 90_000)
    assert preauth.code == "00"
    over = terminal.client.complete(limited, 103_000, preauth.request.text(11))
    assert over.code == "51"
    rrn = preauth.response.text(37) or ""
    assert gw.payment(rrn).status == PaymentStatus.AUTHORIZED.value
    assert terminal.client.complete(limited, 95_000, preauth.request.text(11)).code == "00"
    assert gw.payment(rrn).captured_amount == 95_000


def test_preauth_completion_and_their_voids(gw: Gateway) -> None:
    terminal = gw.signed_on()
    preauth = terminal.client.preauth(card(), 50_000)
    assert preauth.code == "00" and preauth.response.text(38)
    rrn = preauth.response.text(37) or ""
    assert gw.payment(rrn).status == PaymentStatus.AUTHORIZED.value
    too_much = terminal.client.complete(card(), 57_501, preauth.request.text(11))  # > 115 %
    assert too_much.code == "13"
    done = terminal.client.complete(card(), 57_500, preauth.request.text(11))
    assert done.code == "00" and done.response.text(37) == rrn
    assert gw.payment(rrn).captured_amount == 57_500
    assert terminal.client.complete(card(), 100, preauth.request.text(11)).code == "12"  # again
    void = terminal.client.void(card(), done.request.text(11))  # 完成撤销
    assert void.code == "00" and void.request.text(60).startswith("21")  # type: ignore[union-attr]
    assert gw.payment(rrn).status == PaymentStatus.VOIDED.value
    second = terminal.client.preauth(card(CREDIT, None), 20_000)
    cancel = terminal.client.void(card(CREDIT, None), second.request.text(11))  # 预授权撤销
    assert cancel.code == "00" and cancel.request.mti == "0100"
    assert gw.payment(second.response.text(37) or "").status == PaymentStatus.VOIDED.value
    unknown = terminal.client.card_message(
        Kind.COMPLETION, card(), 1_000, {61: f"{terminal.state.batch}9999991123"}
    )
    reply = exchange(gw.port, terminal.mac(unknown))
    assert reply is not None and decode(reply[11:]).text(39) == "25"


# -- balance inquiry (查询) -----------------------------------------------------------------------
def balance_field(fen: int) -> str:
    """Field 54 written out: account type 00, amount type 02 (available), 156, C, n12."""
    return "00" + "02" + "156" + "C" + f"{fen:012d}"


def test_balance_inquiry_through_the_sandbox(gw: Gateway) -> None:
    terminal = gw.signed_on()
    reply = terminal.client.balance(card())
    assert reply.code == "00" and reply.mac_ok and reply.request.mti == "0200"
    assert reply.response.text(54) == balance_field(100_000_000)  # ¥1,000,000.00 (docs/sandbox.md)
    credit = terminal.client.balance(card(CREDIT, None))
    assert credit.response.text(54) == balance_field(5_000_000)
    assert terminal.client.balance(card(pin="000000")).code == "55"
    assert terminal.client.balance(card(pin=None)).code == "55"  # a debit chip card needs its PIN
    for name, pin, code in [
        ("insufficient_funds", PIN, "51"), ("expired", None, "54"), ("lost", PIN, "41"),
        ("issuer_unavailable", None, "91"), ("no_answer", PIN, "98"),
    ]:  # fmt: skip
        declined = terminal.client.balance(card(CARDS[name], pin))
        assert (name, declined.code, declined.response.has(54)) == (name, code, False)
    # the open-to-buy card answers what it can still spend
    assert terminal.client.sale(card(CARDS["open_to_buy"], None), 60_000).code == "00"
    remaining = terminal.client.balance(card(CARDS["open_to_buy"], None))
    assert remaining.response.text(54) == balance_field(40_000)
    assert len(gw.payments()) == 1  # an inquiry makes no payment


def test_balance_inquiry_through_a_channel_without_one(gw: Gateway) -> None:
    terminal = gw.signed_on()
    gw.world.container.gateway.channel = object()  # type: ignore[assignment]
    assert terminal.client.balance(card()).code == "12"


# -- refund advice (退货) -------------------------------------------------------------------------
def refund_of(terminal: Terminal, sale: Reply, amount: int, pan: str = DEBIT) -> Reply:
    """The 0220 a terminal sends for ``sale``: its RRN (37) and date (61.3) from the receipt."""
    rrn, day = sale.response.text(37) or "", sale.response.text(13) or ""
    return terminal.client.refund(card(pan, None), amount, rrn, day)


def refunds_of(gw: Gateway) -> list[Refund]:
    with gw.world.container.database.read() as session:
        return list(session.scalars(select(Refund).order_by(Refund.created_at, Refund.id)))


def later(gw: Gateway, **delta: float) -> None:
    """Move the clock on: a refund 10 minutes after its payment is a risk signal."""
    gw.world.clock.advance(timedelta(**delta))


def test_refund_advices_approved_partial_and_repeated(gw: Gateway) -> None:
    terminal = gw.signed_on()
    sale = terminal.client.sale(card(), 10_000)
    assert terminal.client.sale(card(CREDIT, None), 20_000).code == "00"
    later(gw, hours=1)
    first = refund_of(terminal, sale, 2_000)
    assert (first.request.mti, first.response.mti, first.code) == ("0220", "0230", "00")
    assert first.mac_ok and not first.response.has(44)
    assert first.response.text(37) == sale.response.text(37)  # the original's RRN and auth code
    assert first.response.text(38) == sale.response.text(38)
    [refund] = refunds_of(gw)
    payment = gw.payment(sale.response.text(37) or "")
    stan = first.request.text(11)
    assert (refund.payment_id, refund.amount, refund.status) == (payment.id, 2_000, "approved")
    assert refund.requester_kind == "terminal" and refund.requested_by == "terminal:TA000001"
    assert refund.out_refund_no == f"iso8583:0220:TA000001:000001:{stan}"
    assert refund_of(terminal, sale, 3_000).code == "00"  # partial and repeated
    # the rest is 5,000: more is refused 13 and changes nothing
    assert refund_of(terminal, sale, 5_001).code == "13"
    assert [r.amount for r in refunds_of(gw)] == [2_000, 3_000]
    # a repeated advice gets the stored answer again, byte for byte; no second refund
    again = exchange(gw.port, encode(first.request))
    assert again is not None and decode(again[11:]).fields == first.response.fields
    # the same identity with another amount is a different request: 94
    other = Message("0220", {**first.request.fields, 4: "000000001000"})
    duplicate = exchange(gw.port, terminal.mac(other))
    assert duplicate is not None and decode(duplicate[11:]).text(39) == "94"
    assert [r.amount for r in refunds_of(gw)] == [2_000, 3_000]


def test_repeated_advice_after_a_lost_journal_row_refunds_once(gw: Gateway) -> None:
    """The refund's out_refund_no is the advice's identity: even if the answer's journal row
    never committed (a crash), the repeat finds the same refund."""
    terminal = gw.signed_on()
    sale = terminal.client.sale(card(), 10_000)
    later(gw, hours=1)
    advice = refund_of(terminal, sale, 4_000)
    assert advice.code == "00"
    with gw.world.container.database.transaction() as session:
        session.execute(delete(GatewayRequest).where(GatewayRequest.kind == Kind.REFUND.value))
    again = exchange(gw.port, encode(advice.request))
    assert again is not None and decode(again[11:]).text(39) == "00"
    assert decode(again[11:]).text(37) == sale.response.text(37)
    assert [r.amount for r in refunds_of(gw)] == [4_000]


def test_refund_advices_the_policy_sends_to_review(gw: Gateway) -> None:
    terminal = gw.signed_on()
    big = terminal.client.sale(card(), 600_000)  # ¥6,000.00
    later(gw, hours=1)
    review = refund_of(terminal, big, 500_000)  # ¥5,000.00: review (REFUND_REVIEW_AMOUNT)
    assert review.code == "00" and review.mac_ok
    assert review.response.text(44) == "PENDING REVIEW"
    assert [(r.amount, r.status) for r in refunds_of(gw)] == [(500_000, "in_review")]
    # the merchant's balance is short: the refund waits for funds, answered the same way
    small = terminal.client.sale(card(CREDIT, None), 10_000)
    later(gw, days=1)  # a full refund on another day is a refund, not a void
    assert refund_of(terminal, small, 10_000, CREDIT).code == "00"  # funded from the balance
    short = refund_of(terminal, big, 100_000)
    assert short.code == "00" and short.response.text(44) == "PENDING REVIEW"
    assert refunds_of(gw)[-1].status == "pending_funds"


def test_refund_advices_refused(gw: Gateway) -> None:
    terminal = gw.signed_on()
    sale = terminal.client.sale(card(), 10_000)
    later(gw, hours=1)
    rrn = sale.response.text(37) or ""
    client = terminal.client
    assert client.refund(card(pin=None), 1_000, "269999999999", "1123").code == "25"  # no such RRN
    assert client.refund(card(pin=None), 1_000, rrn, "1124").code == "25"  # not that day's
    assert client.refund(card(CREDIT, None), 1_000, rrn, "1123").code == "25"  # not that card
    other = gw.terminal(gw.world.terminal_a2)  # same merchant, another terminal
    other.client.sign_on(gw.master_key(gw.world.terminal_a2))
    assert other.client.refund(card(pin=None), 1_000, rrn, "1123").code == "25"
    assert refund_of(terminal, sale, 10_000).code == "12"  # in full on its own day: void it
    declined = client.sale(card(CARDS["insufficient_funds"]), 10_000)
    assert refund_of(terminal, declined, 1_000, CARDS["insufficient_funds"]).code == "12"
    voided = client.sale(card(), 5_000)
    assert client.void(card(), voided.request.text(11)).code == "00"
    assert refund_of(terminal, voided, 1_000).code == "12"
    no_date = client.card_message(Kind.REFUND, card(pin=None), 1_000, {37: rrn, 61: "0" * 12})
    answer = exchange(gw.port, terminal.mac(no_date))
    assert answer is not None and decode(answer[11:]).text(39) == "30"  # 61.3 is required
    assert refunds_of(gw) == []


def test_batch_totals_count_refunds(gw: Gateway) -> None:
    terminal = gw.signed_on()
    client = terminal.client
    first = client.sale(card(), 10_000)
    second = client.sale(card(CREDIT, None), 20_000)
    later(gw, hours=1)
    assert refund_of(terminal, first, 2_000).code == "00"
    assert refund_of(terminal, second, 3_000, CREDIT).code == "00"
    assert refund_of(terminal, second, 30_000, CREDIT).code == "13"  # counted by neither side
    settlement = client.settle()
    assert settlement.code == "00" and settlement.mac_ok
    # 30,000 in 2 sales, 5,000 in 2 refunds; 1 = balanced
    assert settlement.response.text(48) == "000000030000002" + "000000005000002" + "1"
    assert gw.cases() == []

    # batch 2: a refund of a sale of batch 1, which the terminal forgets to count
    assert terminal.state.batch == "000002"
    assert refund_of(terminal, first, 1_000).code == "00"
    claim = client.base_message(BY_KIND[Kind.SETTLEMENT], client.state.next_stan())
    claim.fields[48] = "0" * 30
    reply = exchange(gw.port, terminal.mac(claim))
    assert reply is not None
    assert decode(reply[11:]).text(48) == "000000000000000" + "000000001000001" + "2"
    [case] = gw.cases()
    assert case.kind == "unbalanced_batch" and case.batch == "000002"


def test_a_batch_beyond_field_48_is_closed_unbalanced_with_its_full_totals_in_a_case(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,000 sales do not fit 48's n3 count: the host answers its totals capped (never equal to
    a terminal's), closes the batch, and the case has the real figures. The host's totals are
    widened here (1,000 sales through sockets would take the suite seconds); the path from
    them on is the real one."""
    terminal = gw.signed_on()
    assert terminal.client.sale(card(), 1_000).code == "00"
    real = repository.batch_totals

    def a_thousand_sales(session: object, terminal_id: str, batch: str) -> BatchTotals:
        one = real(session, terminal_id, batch)  # type: ignore[arg-type]
        return replace(one, sales_count=1_000, sales_amount=1_000 * one.sales_amount)

    monkeypatch.setattr(repository, "batch_totals", a_thousand_sales)
    settlement = terminal.client.settle()
    assert settlement.code == "00"
    assert settlement.response.text(48) == "000001000000999" + "000000000000000" + "2"
    assert terminal.state.batch == "000002"  # closed
    [case] = gw.cases()
    assert case.kind == "unbalanced_batch"
    assert "host: sales 1000 for 1000000 fen" in case.detail


def test_batch_totals_leave_out_a_refund_rejected_in_review(gw: Gateway) -> None:
    terminal = gw.signed_on()
    big = terminal.client.sale(card(), 600_000)
    later(gw, hours=1)
    review = refund_of(terminal, big, 500_000)
    assert review.response.text(44) == "PENDING REVIEW"
    [refund] = refunds_of(gw)
    reviewer = Principal("staff:reviewer", Role.REVIEWER)
    gw.world.container.refunds.reject(reviewer, refund.id, "no goods returned")
    settlement = terminal.client.settle()  # the terminal counted the refund it printed
    assert settlement.response.text(48) == "000000600000001" + "000000000000000" + "2"
    assert [case.kind for case in gw.cases()] == ["unbalanced_batch"]


# -- MAC, sign-on, terminal and merchant checks --------------------------------------------------
def test_wrong_or_missing_mac_gets_a0_and_changes_nothing(gw: Gateway) -> None:
    terminal = gw.signed_on()
    message = terminal.client.card_message(Kind.SALE, card(), 10_000)
    request = bytearray(terminal.mac(message))
    request[-1] ^= 0x01
    reply = exchange(gw.port, bytes(request))
    assert reply is not None
    answer = decode(reply[11:])
    assert answer.mti == "0210" and answer.text(39) == "A0" and not answer.has(MAC_FIELD)
    assert answer.text(11) == message.text(11)
    message.fields.pop(MAC_FIELD)
    unsigned = exchange(gw.port, encode(message))
    assert unsigned is not None and decode(unsigned[11:]).text(39) == "A0"
    tampered = bytearray(terminal.mac(message))
    tampered[tampered.index(b"\x00\x00\x01\x00\x00")] = 0x01  # amount changed after MACing
    tampered_reply = exchange(gw.port, bytes(tampered))
    assert tampered_reply is not None and decode(tampered_reply[11:]).text(39) == "A0"
    assert gw.payments() == [] and journal_count(gw) == 0


def test_sign_on_required_unknown_terminal_and_wrong_merchant(gw: Gateway) -> None:
    world = gw.world
    never = gw.terminal(world.terminal_a2)
    never.state.pik = never.state.mak = "11" * 16  # keys it never received from us
    assert never.client.sale(card(), 10_000).code == "22"
    stranger = gw.terminal("TZ999999", world.merchant_a)
    assert stranger.client.sign_on(bytes(16)).code == "97"
    wrong_merchant = gw.terminal(world.terminal_a, world.merchant_b)
    assert wrong_merchant.client.sign_on(gw.master_key(world.terminal_a)).code == "03"
    signed = gw.signed_on()
    signed.state.merchant_id = world.merchant_b
    assert signed.client.sale(card(), 10_000).code == "03"
    with world.container.database.transaction() as session:
        set_terminal_status(
            session, world.terminal_a, "suspended", actor="test", clock=world.clock
        )
    assert gw.terminal().client.sign_on(gw.master_key(world.terminal_a)).code == "97"
    assert gw.payments() == []


# -- batch settlement ----------------------------------------------------------------------------
def test_batch_settlement_balanced_then_unbalanced(gw: Gateway) -> None:
    terminal = gw.signed_on()
    client = terminal.client
    assert client.sale(card(), 10_000).code == "00"
    assert client.sale(card(CREDIT, None), 20_000).code == "00"
    voided = client.sale(card(), 5_000)
    assert client.void(card(), voided.request.text(11)).code == "00"
    reversed_ = client.sale(card(), 7_000)
    assert client.reverse(card(), reversed_.request.text(11)).code == "00"
    assert client.sale(card(CARDS["insufficient_funds"]), 10_000).code == "51"
    preauth = client.preauth(card(), 30_000)
    assert client.complete(card(), 25_000, preauth.request.text(11)).code == "00"
    settlement = client.settle()
    assert settlement.code == "00" and settlement.mac_ok
    # ours: 10,000 + 20,000 + 25,000 in 3 sales; no refunds; 1 = balanced
    assert settlement.response.text(48) == "000000055000003000000000000000" + "1"
    assert settlement.response.text(60) == "00000001201"  # the settled batch, echoed
    assert terminal.state.batch == "000002"
    with gw.world.container.database.read() as session:
        assert session.get(TerminalSession, gw.world.terminal_a).batch == "000002"  # type: ignore[union-attr]
    assert gw.cases() == []

    assert client.sale(card(), 1_000).code == "00"
    claim = client.base_message(BY_KIND[Kind.SETTLEMENT], client.state.next_stan())
    claim.fields[48] = "000000002000002000000000000000"  # the terminal thinks 2 × ¥10
    reply = exchange(gw.port, terminal.mac(claim))
    assert reply is not None
    answer = decode(reply[11:])
    assert answer.text(39) == "00" and answer.text(48) == "000000001000001000000000000000" + "2"
    [case] = gw.cases()
    assert case.kind == "unbalanced_batch" and case.batch == "000002"
    with gw.world.container.database.read() as session:
        assert session.get(TerminalSession, gw.world.terminal_a).batch == "000003"  # type: ignore[union-attr]
    again = exchange(gw.port, terminal.mac(claim))  # a repeated settlement is replayed
    assert again == reply


# -- bad input -----------------------------------------------------------------------------------
def raw(port: int, data: bytes, *, half_close: bool = False) -> bytes | None:
    with connect(port) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(1)
        return read_reply(sock)


def envelope(body: bytes) -> bytes:
    return TPDU + HEADER + body


def answered(port: int, body: bytes, frame: bytes | None = None) -> Message:
    payload = frame or len(envelope(body)).to_bytes(2, "big") + envelope(body)
    reply = raw(port, payload)
    assert reply is not None, "expected an answer"
    assert reply[:11] == bytes.fromhex("6000000003") + HEADER
    return decode(reply[11:])


def test_bad_input_is_answered_where_possible_and_closed_otherwise(gw: Gateway) -> None:
    terminal = gw.signed_on()
    good = terminal.mac(terminal.client.card_message(Kind.SALE, card(), 10_000))
    # cannot be answered: the connection is closed
    assert raw(gw.port, b"\x00\x64" + envelope(good)[:50], half_close=True) is None  # truncated
    assert raw(gw.port, b"\x00\x05" + b"\x60\x00\x03\x00\x00") is None  # no room for an MTI
    assert raw(gw.port, b"\x00\x00") is None  # empty frame
    assert raw(gw.port, b"\x00\x0d" + envelope(b"\x0a\x00")) is None  # MTI not BCD
    assert raw(gw.port, b"\x00\x0d" + envelope(b"\x02\x10")) is None  # a response: nobody to answer
    # answered 30, without a MAC, echoing what could be read
    oversized = envelope(good + bytes(2100))
    assert answered(gw.port, good, len(oversized).to_bytes(2, "big") + oversized).text(39) == "30"
    cut = (len(envelope(good)) - 3).to_bytes(2, "big") + envelope(good)[:-3]
    assert answered(gw.port, good, cut).text(39) == "30"  # length does not match the message
    secondary = good[:2] + bytes([good[2] | 0x80]) + good[3:]
    assert answered(gw.port, secondary).text(39) == "30"
    non_bcd = bytearray(good)
    non_bcd[good.index(b"\x00\x00\x02\x29\x12") + 2] = 0x0A  # STAN 00000A
    reply = answered(gw.port, bytes(non_bcd))
    assert reply.mti == "0210" and reply.text(39) == "30" and not reply.has(MAC_FIELD)
    assert reply.text(41) == gw.world.terminal_a  # read cleanly before the fault, echoed
    for mti, answer in (("0300", "0310"), ("0160", "0170"), ("0280", "0290")):
        unknown_mti = encode(Message(mti, {11: "000001", 41: gw.world.terminal_a}))
        reply = answered(gw.port, unknown_mti)
        assert (reply.mti, reply.text(39)) == (answer, "30")
    base = terminal.client.card_message(Kind.SALE, card(), 10_000)
    odd_code = Message("0200", {**base.fields, 3: "990000"})
    assert answered(gw.port, terminal.mac(odd_code)).text(39) == "12"
    no_stan = Message("0200", {n: v for n, v in base.fields.items() if n != 11})
    assert answered(gw.port, terminal.mac(no_stan)).text(39) == "30"
    dollars = Message("0200", {**base.fields, 49: "840"})
    assert answered(gw.port, terminal.mac(dollars)).text(39) == "30"
    no_card = Message("0200", {n: v for n, v in base.fields.items() if n not in (2, 14, 52, 53)})
    assert answered(gw.port, terminal.mac(no_card)).text(39) == "30"
    assert base.has(52)
    other_security = Message("0200", {**base.fields, 53: "2610000000000000"})  # §4: 26000…
    assert answered(gw.port, terminal.mac(other_security)).text(39) == "30"
    reversal = reversal_of(base).fields
    for wrong in (
        {**reversal, 39: "99"},  # not a reason of §3
        {n: v for n, v in reversal.items() if n != 4},  # the original's amount left out
        {n: v for n, v in reversal.items() if n != 2},  # and its card
    ):
        assert answered(gw.port, terminal.mac(Message("0400", wrong))).text(39) == "30"
    assert answered(gw.port, terminal.mac(Message("0400", reversal))).text(39) == "00"
    assert gw.payments() == []
    assert answered(gw.port, good).text(39) == "00"  # and a good request still goes through
    assert len(gw.payments()) == 1


def test_many_messages_on_one_connection(gw: Gateway) -> None:
    terminal = gw.signed_on()
    for amount in (100, 200, 300):
        assert terminal.client.sale(card(), amount).code == "00"
    assert len(gw.payments()) == 3


# -- the server ----------------------------------------------------------------------------------
@pytest.fixture
def world(sqlite_database, tmp_path):
    return build_world(sqlite_database, tmp_path)


def test_idle_connections_are_closed(world) -> None:
    gateway = start_gateway(world, idle_timeout=0.2)
    try:
        with connect(gateway.port) as sock:
            assert sock.recv(1) == b""  # closed by the host after 0.2 s of silence
    finally:
        gateway.background.stop()


def test_only_waiting_for_a_frame_counts_as_idle(world) -> None:
    """The idle clock runs while a connection waits for a whole frame, from its last answer:
    requests closer together than the timeout keep it open however long it lives, and so does
    an answer that takes longer than the timeout (the no-answer card's wait)."""
    gateway = start_gateway(world, idle_timeout=0.4)
    channel = world.container.channel
    assert isinstance(channel, SandboxChannel)
    channel.timeout_seconds = 0.8  # twice the idle timeout, with the request in hand
    try:
        terminal = gateway.signed_on()
        for _ in range(6):  # 1.2 s and more of one connection, 0.2 s apart
            time.sleep(0.2)
            assert terminal.client.sale(card(), 1_000).code == "00"
        assert terminal.client.sale(card(CARDS["no_answer"]), 10_000).code == "98"
        connection = terminal.client._socket
        assert terminal.client.sale(card(), 1_000).code == "00"
        assert terminal.client._socket is connection  # the same connection all along
        assert connection is not None
        connection.settimeout(5)
        started = time.monotonic()
        assert connection.recv(1) == b""  # then silence: closed by the host
        assert 0.3 < time.monotonic() - started < 3
    finally:
        gateway.background.stop()


def test_connections_over_the_maximum_are_closed(world) -> None:
    gateway = start_gateway(world, max_connections=1)
    try:
        terminal = gateway.signed_on()  # holds the one connection allowed
        with connect(gateway.port) as second:
            assert second.recv(1) == b""  # closed on arrival
        assert terminal.client.sale(card(), 1_000).code == "00"  # the first one still works
    finally:
        gateway.background.stop()


def test_graceful_shutdown_answers_in_flight_requests(world) -> None:
    gateway = start_gateway(world)
    terminal = gateway.signed_on()
    terminal.client.close()
    payments = world.container.payments
    inner = payments.channel
    entered, release = threading.Event(), threading.Event()

    class Gate:  # holds the network call until the test says so
        def __getattr__(self, name: str):
            return getattr(inner, name)

        def authorize(self, request):
            entered.set()
            release.wait(30)
            return inner.authorize(request)

    payments.channel = Gate()  # type: ignore[assignment]
    replies: list[Reply] = []
    sale = threading.Thread(target=lambda: replies.append(terminal.client.sale(card(), 10_000)))
    sale.start()
    assert entered.wait(30)
    stopper = threading.Thread(target=gateway.background.stop)
    stopper.start()
    with pytest.raises(OSError):  # no longer accepting
        while True:
            with connect(gateway.port):
                pass
    release.set()
    sale.join(30)
    stopper.join(30)
    assert not stopper.is_alive()
    assert [reply.code for reply in replies] == ["00"]  # answered before the exit
    assert len(gateway.payments()) == 1


def test_serve_runs_http_and_the_gateway_in_one_process(world) -> None:
    """`shoudan serve --iso-port`: one event loop, one container; stopping HTTP stops both."""
    app = create_app(container=world.container)
    http_port, iso_port = free_port(), free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=http_port, log_level="warning")
    )
    job = _serve_with_gateway(server, world.container, "127.0.0.1", iso_port)
    thread = threading.Thread(target=asyncio.run, args=(job,))
    thread.start()
    try:
        ready = threading.Event()
        for _ in range(600):  # wait for both listeners (not a timing assertion)
            if server.started and _accepts(iso_port):
                ready.set()
                break
            ready.wait(0.05)
        assert ready.is_set()
        terminal = Gateway(world, iso_port, None).signed_on()  # type: ignore[arg-type]
        assert terminal.client.sale(card(), 10_000).code == "00"
        metrics = httpx.get(f"http://127.0.0.1:{http_port}/metrics", timeout=10).text
        assert 'shoudan_gateway_responses_total{code="00",mti="0200"}' in metrics
    finally:
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive() and not _accepts(iso_port)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_metrics_are_exported_by_the_http_app(gw: Gateway) -> None:
    terminal = gw.signed_on()
    terminal.client.sale(card(), 10_000)
    terminal.client.sale(card(CARDS["insufficient_funds"]), 10_000)
    text = gw.world.client.get("/metrics").text
    assert 'shoudan_gateway_requests_total{mti="0200"}' in text
    assert 'shoudan_gateway_responses_total{code="51",mti="0200"}' in text
    assert 'shoudan_gateway_request_seconds_bucket{le="0.1",mti="0800"}' in text


def test_logs_carry_no_card_data(gw: Gateway, caplog) -> None:
    caplog.set_level("DEBUG")
    terminal = gw.signed_on()
    terminal.client.sale(card(), 10_000)
    terminal.client.sale(Card(pan=DEBIT, pin=PIN, entry_mode=EntryMode.MAGSTRIPE), 10_000)
    terminal.client.sale(card(pin="999999"), 10_000)
    text = caplog.text
    assert "iso8583 mti=0200 kind=sale" in text
    assert DEBIT not in text and "999999" not in text and PIN not in text


# -- the simulator's command line ----------------------------------------------------------------
def test_terminal_simulator_cli(gw: Gateway, tmp_path: Path) -> None:
    runner = CliRunner()
    world = gw.world
    common = [
        "--terminal-id", world.terminal_a, "--merchant-id", world.merchant_a,
        "--host", "127.0.0.1", "--port", str(gw.port), "--state", str(tmp_path / "t.json"),
    ]  # fmt: skip
    key = gw.master_key(world.terminal_a).hex().upper()
    result = runner.invoke(cli, ["terminal", "signon", *common, "--master-key", key])
    assert result.exit_code == 0, result.output
    assert "batch 000001" in result.output
    result = runner.invoke(
        cli, ["terminal", "sale", *common, "--pan", DEBIT, "--amount", "1280", "--pin", PIN]
    )
    assert result.exit_code == 0, result.output
    assert "622202*********0018" in result.output and DEBIT not in result.output
    assert "RMB 12.80" in result.output and "签购单" in result.output
    declined = runner.invoke(
        cli, ["terminal", "sale", *common, "--pan", CARDS["lost"], "--amount", "100", "--pin", PIN]
    )
    assert declined.exit_code == 3 and "41" in declined.output
    voided = runner.invoke(cli, ["terminal", "void", *common, "--pan", DEBIT, "--pin", PIN])
    assert voided.exit_code == 0, voided.output
    settled = runner.invoke(cli, ["terminal", "settle", *common])
    assert settled.exit_code == 0 and "平 balanced" in settled.output
    state = json.loads((tmp_path / "t.json").read_text())
    assert state["batch"] == "000002" and state["journal"] == []
    assert DEBIT not in (tmp_path / "t.json").read_text()


def test_terminal_simulator_cli_refund(gw: Gateway, tmp_path: Path) -> None:
    runner = CliRunner()
    world = gw.world
    common = [
        "--terminal-id", world.terminal_a, "--merchant-id", world.merchant_a,
        "--host", "127.0.0.1", "--port", str(gw.port), "--state", str(tmp_path / "t.json"),
    ]  # fmt: skip
    key = gw.master_key(world.terminal_a).hex().upper()
    assert runner.invoke(cli, ["terminal", "signon", *common, "--master-key", key]).exit_code == 0
    for amount in ("10000", "600000"):
        sold = runner.invoke(
            cli, ["terminal", "sale", *common, "--pan", DEBIT, "--amount", amount, "--pin", PIN]
        )
        assert sold.exit_code == 0, sold.output
    small, big = (p.rrn for p in gw.payments())
    later(gw, hours=1)

    def refund(rrn: str, amount: str):  # type: ignore[no-untyped-def]
        args = ["--pan", DEBIT, "--amount", amount, "--rrn", rrn, "--date", "1123"]
        return runner.invoke(cli, ["terminal", "refund", *common, *args])

    approved = refund(small, "2500")
    assert approved.exit_code == 0, approved.output
    assert "退货 REFUND" in approved.output and "RMB 25.00" in approved.output
    assert f"参考号 REF NO      : {small}" in approved.output and "PENDING" not in approved.output
    assert "622202*********0018" in approved.output and DEBIT not in approved.output
    pending = refund(big, "500000")
    assert pending.exit_code == 0, pending.output
    assert "备注 NOTE          : PENDING REVIEW" in pending.output
    assert "退货待审核" in pending.output
    refused = refund(small, "9000")  # more than the 7,500 left
    assert refused.exit_code == 3 and "13 invalid amount" in refused.output
    settled = runner.invoke(cli, ["terminal", "settle", *common])
    assert settled.exit_code == 0 and "平 balanced" in settled.output
    assert "退货 REFUNDS       : 2 / RMB 5,025.00" in settled.output
