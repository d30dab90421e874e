"""Fuzzing the gateway over real sockets: 10,000+ random and mutated frames from a fixed seed.

Properties: the server stays up; every frame whose MTI can be read and answered gets an
answer (in the reply envelope: TPDU swapped, header echoed), every other frame closes its
connection; a well-behaved terminal working alongside gets every answer right; nothing is
left half-applied (the ledger verifies). The frames are mostly rejected before any write, so
the database engine does not matter here: SQLite only (the end-to-end tests cover both).
"""

from __future__ import annotations

import json
import random
import socket
import threading
from collections.abc import Callable
from importlib import resources

import pytest

from shoudan.channels.domain import EntryMode
from shoudan.gateway.codec import Message, encode
from shoudan.gateway.domain import Kind, response_mti
from shoudan.gateway.simulator import BY_KIND, Card
from tests.gateway_world import HEADER, TPDU, Gateway, Terminal, read_reply, start_gateway
from tests.payments_world import build_world, check_day_totals

CARDS = json.loads(
    resources.files("shoudan.channels").joinpath("fixtures/sandbox_cards.json").read_text()
)
FRAMES = 10_400
SENDERS = 4
SEED = 8583


@pytest.fixture
def gateway(sqlite_database, tmp_path):
    world = build_world(sqlite_database, tmp_path)
    gateway = start_gateway(world, workers=8, idle_timeout=10.0)
    try:
        yield gateway
    finally:
        gateway.background.stop()
    report = world.container.ledger.verify()
    assert report.ok, report.violations[:5]
    check_day_totals(world)


def answerable(payload: bytes) -> bool:
    """The host's promise: an envelope plus a BCD MTI that is a request, advice or
    notification gets an answer, whatever follows."""
    mti = payload[11:13].hex()
    return len(payload) >= 13 and mti.isdigit() and response_mti(mti) is not None


def seeds(terminal: Terminal) -> list[bytes]:
    """Well-formed, MACed message bodies of every kind, to mutate."""
    client = terminal.client
    debit = Card(pan=CARDS["approve_debit"], pin="123456")
    swiped = Card(pan=CARDS["approve_credit"], entry_mode=EntryMode.MAGSTRIPE)
    f61 = {61: f"{terminal.state.batch}0000011123", 37: "263270000001"}
    messages = [
        client.base_message(BY_KIND[Kind.SIGN_ON], "000001"),
        client.card_message(Kind.SALE, debit, 10_000),
        client.card_message(Kind.SALE, swiped, 2_000),
        client.card_message(Kind.PREAUTH, debit, 30_000),
        client.card_message(Kind.BALANCE, debit, None),
        client.card_message(Kind.SALE_VOID, debit, 10_000, f61),
        client.card_message(Kind.COMPLETION, debit, 20_000, f61),
        client.card_message(Kind.REFUND, debit, 1_000, f61),
    ]
    reversal = client.card_message(Kind.SALE, debit, 5_000)
    reversal.mti, reversal.fields[39] = "0400", "98"
    settlement = client.base_message(BY_KIND[Kind.SETTLEMENT], "000099")
    settlement.fields[48] = "0" * 30
    messages += [reversal, settlement]
    return [terminal.mac(m) if m.mti != "0800" else _plain(m) for m in messages]


def _plain(message: Message) -> bytes:
    return encode(message)


Mutation = Callable[[random.Random, bytearray], bytearray]


def _flip(rng: random.Random, body: bytearray) -> bytearray:
    for _ in range(rng.randint(1, 3)):
        index = rng.randrange(len(body))
        body[index] ^= 1 << rng.randrange(8)
    return body


def _byte(rng: random.Random, body: bytearray) -> bytearray:
    body[rng.randrange(len(body))] = rng.randrange(256)
    return body


def _truncate(rng: random.Random, body: bytearray) -> bytearray:
    return body[: rng.randrange(len(body))]


def _append(rng: random.Random, body: bytearray) -> bytearray:
    return body + rng.randbytes(rng.randint(1, 40))


def _delete(rng: random.Random, body: bytearray) -> bytearray:
    start = rng.randrange(len(body))
    return body[:start] + body[start + rng.randint(1, 12) :]


def _duplicate(rng: random.Random, body: bytearray) -> bytearray:
    start = rng.randrange(len(body))
    piece = body[start : start + rng.randint(1, 12)]
    return body[:start] + piece + body[start:]


def _bitmap(rng: random.Random, body: bytearray) -> bytearray:
    if len(body) >= 10:
        body[2 + rng.randrange(8)] ^= 1 << rng.randrange(8)
    return body


def _mti(rng: random.Random, body: bytearray) -> bytearray:
    digits = f"0{rng.randrange(10)}{rng.randrange(10)}0"  # any BCD MTI, known or not
    body[:2] = rng.choice([rng.randbytes(2), bytes.fromhex(digits)])
    return body


def _length_nibble(rng: random.Random, body: bytearray) -> bytearray:
    """Hit a BCD length or digit nibble with a non-decimal value."""
    index = rng.randrange(10, len(body)) if len(body) > 10 else 0
    body[index] = (body[index] & 0xF0) | rng.randrange(10, 16)
    return body


MUTATIONS: list[Mutation] = [
    _flip, _byte, _truncate, _append, _delete, _duplicate, _bitmap, _mti, _length_nibble,
]


def frames(rng: random.Random, bodies: list[bytes], count: int) -> list[bytes]:
    """Payloads (envelope + body) to send with a correct length prefix."""
    out = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.15:  # pure noise, any length, envelope included
            out.append(rng.randbytes(rng.randint(0, 300)))
            continue
        body = bytearray(rng.choice(bodies))
        for _ in range(rng.randint(1, 3)):
            if body:
                body = rng.choice(MUTATIONS)(rng, body)
        envelope = TPDU + HEADER
        if roll > 0.97:  # a damaged envelope or an oversized frame
            envelope = rng.randbytes(11)
            body += bytes(rng.choice([0, 2100]))
        out.append(envelope + bytes(body))
    return out


def send_all(port: int, payloads: list[bytes], failures: list[str]) -> None:
    sock: socket.socket | None = None
    try:
        for payload in payloads:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(len(payload).to_bytes(2, "big") + payload)
            try:
                reply = read_reply(sock)
            except ConnectionResetError:
                reply = None
            expected = answerable(payload)
            if expected and (reply is None or reply[5:11] != payload[5:11]):
                failures.append(f"no proper answer to {payload[:40].hex()}")
            elif expected and reply is not None and reply[1:5] != payload[3:5] + payload[1:3]:
                failures.append(f"TPDU not swapped for {payload[:40].hex()}")
            elif not expected and reply is not None:
                failures.append(f"answered an unanswerable frame {payload[:40].hex()}")
            if reply is None:
                sock.close()
                sock = None
    except Exception as error:  # a stalled or crashed server ends up here
        failures.append(f"{type(error).__name__}: {error}")
    finally:
        if sock is not None:
            sock.close()


def well_behaved(gateway: Gateway, stop: threading.Event, codes: list[str]) -> None:
    """Terminal B keeps selling (and voiding) on one connection while the fuzz runs."""
    try:
        terminal = gateway.terminal(gateway.world.terminal_b, gateway.world.merchant_b)
        terminal.client.sign_on(gateway.master_key(gateway.world.terminal_b))
        card = Card(pan=CARDS["approve_credit"])
        while not stop.is_set():
            sale = terminal.client.sale(card, 1_00)
            codes.append(sale.code if sale.mac_ok else "bad MAC")
            void = terminal.client.void(card, sale.request.text(11))
            codes.append(void.code if void.mac_ok else "bad MAC")
    except Exception as error:
        codes.append(f"{type(error).__name__}: {error}")


def test_fuzzed_frames_never_take_the_gateway_down(gateway: Gateway) -> None:
    rng = random.Random(SEED)
    fuzzer = gateway.signed_on()
    bodies = seeds(fuzzer)
    payloads = frames(rng, bodies, FRAMES)
    assert sum(map(answerable, payloads)) > FRAMES // 2  # most of them must be answered
    stop, codes, failures = threading.Event(), [], []
    bystander = threading.Thread(target=well_behaved, args=(gateway, stop, codes))
    bystander.start()
    senders = [
        threading.Thread(target=send_all, args=(gateway.port, payloads[i::SENDERS], failures))
        for i in range(SENDERS)
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    stop.set()
    bystander.join()
    assert failures == []
    assert codes and set(codes) == {"00"}, sorted(set(codes))

    # frames whose length prefix lies: the stream is out of step, the connection is closed
    for _ in range(200):
        payload = rng.choice(payloads)
        lie = max(0, len(payload) + rng.choice([-7, -1, 1, 9, 300]))
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
            sock.sendall(lie.to_bytes(2, "big") + payload)
            sock.shutdown(socket.SHUT_WR)
            while read_reply(sock) is not None:  # whatever was answerable, then the close
                pass

    # still up and correct
    after = gateway.terminal(gateway.world.terminal_b, gateway.world.merchant_b)
    after.state.stan = "500000"  # past the bystander's STANs in this batch
    assert after.client.sign_on(gateway.master_key(gateway.world.terminal_b)).code == "00"
    sale = after.client.sale(Card(pan=CARDS["approve_debit"], pin="123456"), 10_000)
    assert sale.code == "00" and sale.mac_ok
