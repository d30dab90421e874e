"""``shoudan terminal …``: a terminal simulator talking ISO 8583 to a gateway.

    shoudan terminal signon --terminal-id TA000001 --merchant-id 898… --master-key <32 hex>
    shoudan terminal sale --terminal-id TA000001 --merchant-id 898… --pan … --amount 1280

Amounts are in fen (分): ``--amount 1280`` is ¥12.80. The simulator keeps its batch, STAN,
working keys and this batch's journal in a state file (``--state``, default
``<data dir>/terminals/<terminal id>.json``). Exit status: 0 approved, 3 declined or refused,
4 no answer (a reversal is then pending and goes out before the next transaction).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from shoudan.channels.domain import EntryMode
from shoudan.cli.common import settings
from shoudan.core.clock import SystemClock
from shoudan.gateway.keys import KeyMaterialError
from shoudan.gateway.simulator import (
    Card,
    NoResponse,
    Reply,
    SimulatorError,
    TerminalClient,
    TerminalState,
    receipt,
)

app = typer.Typer(no_args_is_help=True)

EXIT_DECLINED = 3
EXIT_NO_ANSWER = 4

Host = Annotated[str | None, typer.Option("--host", help="Gateway address [SHOUDAN_ISO_HOST].")]
Port = Annotated[int | None, typer.Option("--port", help="Gateway port [SHOUDAN_ISO_PORT].")]
TerminalId = Annotated[str, typer.Option("--terminal-id", help="Field 41 (8 characters).")]
MerchantId = Annotated[str, typer.Option("--merchant-id", help="Field 42 (15 digits).")]
StatePath = Annotated[Path | None, typer.Option("--state", help="The simulator's state file.")]
Timeout = Annotated[float, typer.Option("--timeout", help="Seconds to wait for an answer.")]
Pan = Annotated[str, typer.Option("--pan", help="Card number.")]
Amount = Annotated[int, typer.Option("--amount", min=1, help="Amount in fen (1280 = ¥12.80).")]
Pin = Annotated[str | None, typer.Option("--pin", help="PIN (sent as a format 0 PIN block).")]
Expiry = Annotated[str, typer.Option("--expiry", help="Card expiry YYMM.")]
Mode = Annotated[EntryMode, typer.Option("--entry-mode", help="How the card is read.")]
MasterKey = Annotated[
    str,
    typer.Option(
        "--master-key", envvar="SHOUDAN_TERMINAL_MASTER_KEY",
        help="The terminal master key (32 hex), as returned by POST /v1/terminals.",
    ),
]  # fmt: skip
OriginalStan = Annotated[
    str | None, typer.Option("--original-stan", help="The original's STAN (default: the last).")
]


@contextmanager
def _terminal(
    host: str | None,
    port: int | None,
    terminal_id: str,
    merchant_id: str,
    state_path: Path | None,
    timeout: float,
) -> Iterator[TerminalClient]:
    """A client on the saved state; the state is saved again whatever happens."""
    config = settings()
    path = state_path or config.data_dir / "terminals" / f"{terminal_id}.json"
    state = TerminalState.load(path, terminal_id, merchant_id)
    address = (host or config.iso_host, port or config.iso_port)
    client = TerminalClient(*address, state, timeout=timeout)
    try:
        yield client
    except NoResponse as error:
        typer.echo(f"no answer: {error}", err=True)
        if state.pending_reversal is not None:
            typer.echo("a reversal (冲正) is pending: it is sent before the next transaction")
        raise typer.Exit(EXIT_NO_ANSWER) from None
    except (SimulatorError, KeyMaterialError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    finally:
        client.close()
        state.save(path)


def _print(reply: Reply) -> None:
    typer.echo(receipt(reply, SystemClock().now()))
    if not reply.approved:
        raise typer.Exit(EXIT_DECLINED)


def _flush(client: TerminalClient) -> None:
    reversal = client.flush_reversal()
    if reversal is not None:
        typer.echo(receipt(reversal, SystemClock().now()) + "\n")


def _card(pan: str, pin: str | None, expiry: str, mode: EntryMode) -> Card:
    return Card(pan=pan, expiry=expiry, pin=pin, entry_mode=mode)


@app.command("signon")
def signon(
    terminal_id: TerminalId, merchant_id: MerchantId, master_key: MasterKey,
    host: Host = None, port: Port = None, state: StatePath = None, timeout: Timeout = 30.0,
) -> None:  # fmt: skip
    """签到: get fresh working keys (PIK, MAK) and the open batch."""
    try:
        tmk = bytes.fromhex(master_key)
    except ValueError:
        tmk = b""
    if len(tmk) != 16:
        typer.echo("error: the master key is 32 hex digits", err=True)
        raise typer.Exit(1)
    with _terminal(host, port, terminal_id, merchant_id, state, timeout) as client:
        reply = client.sign_on(tmk)
        if reply.code == "00":
            typer.echo(f"signed on: batch {client.state.batch}, working keys loaded (KCV checked)")
        _print(reply)


@app.command("sale")
def sale(
    terminal_id: TerminalId, merchant_id: MerchantId, pan: Pan, amount: Amount,
    pin: Pin = None, expiry: Expiry = "2912", entry_mode: Mode = EntryMode.CHIP,
    host: Host = None, port: Port = None, state: StatePath = None, timeout: Timeout = 30.0,
) -> None:  # fmt: skip
    """消费: a sale."""
    with _terminal(host, port, terminal_id, merchant_id, state, timeout) as client:
        _flush(client)
        _print(client.sale(_card(pan, pin, expiry, entry_mode), amount))


@app.command("preauth")
def preauth(
    terminal_id: TerminalId, merchant_id: MerchantId, pan: Pan, amount: Amount,
    pin: Pin = None, expiry: Expiry = "2912", entry_mode: Mode = EntryMode.CHIP,
    host: Host = None, port: Port = None, state: StatePath = None, timeout: Timeout = 30.0,
) -> None:  # fmt: skip
    """预授权: reserve an amount on the card."""
    with _terminal(host, port, terminal_id, merchant_id, state, timeout) as client:
        _flush(client)
        _print(client.preauth(_card(pan, pin, expiry, entry_mode), amount))


@app.command("complete")
def complete(
    terminal_id: TerminalId, merchant_id: MerchantId, pan: Pan, amount: Amount,
    original_stan: OriginalStan = None, pin: Pin = None, expiry: Expiry = "2912",
    entry_mode: Mode = EntryMode.CHIP,
    host: Host = None, port: Port = None, state: StatePath = None, timeout: Timeout = 30.0,
) -> None:  # fmt: skip
    """预授权完成: capture a pre-authorisation (up to 115 % of it)."""
    with _terminal(host, port, terminal_id, merchant_id, state, timeout) as client:
        _flush(client)
        card = _card(pan, pin, expiry, entry_mode)
        _print(client.complete(card, amount, original_stan))


@app.command("void")
def void(
    terminal_id: TerminalId, merchant_id: MerchantId, pan: Pan,
    original_stan: OriginalStan = None, pin: Pin = None, expiry: Expiry = "2912",
    entry_mode: Mode = EntryMode.CHIP,
    host: Host = None, port: Port = None, state: StatePath = None, timeout: Timeout = 30.0,
) -> None:  # fmt: skip
    """撤销: void a sale, completion or pre-auth of the open batch, in full."""
    with _terminal(host, port, terminal_id, merchant_id, state, timeout) as client:
        _flush(client)
        _print(client.void(_card(pan, pin, expiry, entry_mode), original_stan))


@app.command("refund")
def refund(
    terminal_id: TerminalId, merchant_id: MerchantId, pan: Pan, amount: Amount,
    rrn: Annotated[str, typer.Option("--rrn", help="The original's RRN (参考号, field 37).")],
    date: Annotated[
        str, typer.Option("--date", help="The original's date MMDD, as on its slip (61.3).")
    ],
    expiry: Expiry = "2912", entry_mode: Mode = EntryMode.CHIP,
    host: Host = None, port: Port = None, state: StatePath = None, timeout: Timeout = 30.0,
) -> None:  # fmt: skip
    """退货: refund (an advice, 0220), partial or full. A refund the acquirer reviews first
    is approved with the note PENDING REVIEW (退货待审核) and completes later."""
    with _terminal(host, port, terminal_id, merchant_id, state, timeout) as client:
        _flush(client)
        _print(client.refund(_card(pan, None, expiry, entry_mode), amount, rrn, date))


@app.command("reverse")
def reverse(
    terminal_id: TerminalId, merchant_id: MerchantId,
    pan: Annotated[str | None, typer.Option("--pan", help="Card, to reverse by STAN.")] = None,
    original_stan: OriginalStan = None,
    reason: Annotated[str, typer.Option("--reason", help="Field 39: 98, 96, A0 or 06.")] = "98",
    expiry: Expiry = "2912", entry_mode: Mode = EntryMode.CHIP,
    host: Host = None, port: Port = None, state: StatePath = None, timeout: Timeout = 30.0,
) -> None:  # fmt: skip
    """冲正: send the pending reversal, or reverse a transaction of this batch by STAN."""
    with _terminal(host, port, terminal_id, merchant_id, state, timeout) as client:
        card = _card(pan, None, expiry, entry_mode) if pan else None
        _print(client.reverse(card, original_stan, reason))


@app.command("balance")
def balance(
    terminal_id: TerminalId, merchant_id: MerchantId, pan: Pan,
    pin: Pin = None, expiry: Expiry = "2912", entry_mode: Mode = EntryMode.CHIP,
    host: Host = None, port: Port = None, state: StatePath = None, timeout: Timeout = 30.0,
) -> None:  # fmt: skip
    """查询: the card's available balance."""
    with _terminal(host, port, terminal_id, merchant_id, state, timeout) as client:
        _flush(client)
        _print(client.balance(_card(pan, pin, expiry, entry_mode)))


@app.command("settle")
def settle(
    terminal_id: TerminalId, merchant_id: MerchantId,
    host: Host = None, port: Port = None, state: StatePath = None, timeout: Timeout = 30.0,
) -> None:  # fmt: skip
    """批结算: send this batch's totals, then start the next batch."""
    with _terminal(host, port, terminal_id, merchant_id, state, timeout) as client:
        _print(client.settle())
