"""A running gateway for tests: the payments world (merchants, terminals, sandbox network,
fixed clock) behind a real TCP server on an ephemeral port, and terminals that talk to it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import select, update

from shoudan.gateway.codec import MAC_BYTES, MAC_FIELD, Message, encode
from shoudan.gateway.framing import frame_bytes, payload_length
from shoudan.gateway.keys import retail_mac
from shoudan.gateway.models import GatewayCase
from shoudan.gateway.server import BackgroundGateway, GatewayServer
from shoudan.gateway.simulator import Card, TerminalClient, TerminalState
from shoudan.payments.models import Payment
from shoudan.terminals.service import load_master_key
from tests.payments_world import World

TPDU = bytes.fromhex("6000030000")
HEADER = bytes.fromhex("603100000000")


@dataclass
class Gateway:
    world: World
    port: int
    background: BackgroundGateway

    @property
    def server(self) -> GatewayServer:
        return self.background.server

    def master_key(self, terminal_id: str) -> bytes:
        with self.world.container.database.read() as session:
            return load_master_key(session, self.world.container.vault, terminal_id)

    def terminal(self, terminal_id: str | None = None, merchant_id: str | None = None) -> Terminal:
        terminal_id = terminal_id or self.world.terminal_a
        merchant_id = merchant_id or self.world.merchant_a
        state = TerminalState(terminal_id, merchant_id)
        return Terminal(TerminalClient("127.0.0.1", self.port, state, timeout=30.0), self)

    def signed_on(self, terminal_id: str | None = None) -> Terminal:
        terminal = self.terminal(terminal_id)
        reply = terminal.client.sign_on(self.master_key(terminal.client.state.terminal_id))
        assert reply.code == "00", reply.code
        return terminal

    def payments(self) -> list[Payment]:
        with self.world.container.database.read() as session:
            return list(session.scalars(select(Payment).order_by(Payment.created_at, Payment.rrn)))

    def payment(self, rrn: str) -> Payment:
        [found] = [p for p in self.payments() if p.rrn == rrn]
        return found

    def settle_payment(self, payment_id: str) -> None:
        """Mark a payment settled, as the settlement run will."""
        with self.world.container.database.transaction() as session:
            session.execute(
                update(Payment)
                .where(Payment.id == payment_id)
                .values(settled_at=self.world.clock.now())
            )

    def cases(self) -> list[GatewayCase]:
        with self.world.container.database.read() as session:
            return list(session.scalars(select(GatewayCase).order_by(GatewayCase.created_at)))


@dataclass
class Terminal:
    client: TerminalClient
    gateway: Gateway

    @property
    def state(self) -> TerminalState:
        return self.client.state

    def mac(self, message: Message) -> bytes:
        """Encode with a valid MAC (the terminal's MAK)."""
        message.fields[MAC_FIELD] = bytes(MAC_BYTES)
        body = encode(message)
        return body[:-MAC_BYTES] + retail_mac(self.state.keys.mak, body[:-MAC_BYTES])

    def card(self, pan: str, pin: str | None = "123456", **kwargs: object) -> Card:
        return Card(pan=pan, pin=pin, **kwargs)  # type: ignore[arg-type]


def exchange(port: int, body: bytes, *, tpdu: bytes = TPDU, header: bytes = HEADER) -> bytes | None:
    """One frame over a fresh connection: the reply's payload, or None when the host closed."""
    with connect(port) as sock:
        sock.sendall(frame_bytes(tpdu, header, body))
        return read_reply(sock)


@contextmanager
def connect(port: int) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        yield sock
    finally:
        sock.close()


def read_exactly(sock: socket.socket, count: int) -> bytes | None:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def read_reply(sock: socket.socket) -> bytes | None:
    prefix = read_exactly(sock, 2)
    if prefix is None:
        return None
    return read_exactly(sock, payload_length(prefix))


def start_gateway(world: World, **options: object) -> Gateway:
    server = GatewayServer(
        world.container.gateway.handle, "127.0.0.1", 0,
        **{"idle_timeout": 30.0, "workers": 8, "grace": 10.0, **options},  # type: ignore[arg-type]
    )  # fmt: skip
    background = BackgroundGateway(server)
    port = background.start()
    return Gateway(world, port, background)
