"""A terminal simulator: a real ISO 8583 client built on the terminal spec, from the terminal's
side — its own PIN block encryption and MAC, its own batch, STAN and working keys.

State lives in a small JSON file (mode 0600): terminal and merchant ids, batch, last STAN,
working keys, this batch's journal (for voids, completions and the settlement totals) and a
pending reversal. Like a real terminal, it writes the reversal record *before* sending a
reversible request and clears it when a usable answer arrives; a pending reversal (no answer,
or an answer whose MAC fails) is sent before the next transaction. The journal keeps masked
card numbers only; a pending reversal keeps the request's card number until it is
acknowledged (a terminal must repeat field 2), then drops it.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from shoudan.channels.domain import EntryMode, mask_pan
from shoudan.core.clock import SHANGHAI
from shoudan.gateway.codec import (
    FIELDS,
    MAC_BYTES,
    MAC_FIELD,
    BatchTotals,
    Field60,
    Field61,
    FieldValue,
    Message,
    decode,
    encode,
    parse_48,
    parse_60,
    parse_61,
)
from shoudan.gateway.domain import (
    ENTRY_MODE_CODES,
    FIRST_BATCH,
    PENDING_REVIEW,
    REVERSAL_MTI,
    REVERSAL_REASONS,
    SALE_KINDS,
    TRANSACTIONS,
    Kind,
    Transaction,
    next_batch,
    next_stan,
)
from shoudan.gateway.framing import LENGTH_BYTES, frame_bytes, payload_length, split
from shoudan.gateway.keys import (
    SECURITY_CONTROL,
    WorkingKeys,
    encrypt_pin,
    read_key_data,
    retail_mac,
)

DEFAULT_TPDU: Final = bytes.fromhex("6000030000")
DEFAULT_HEADER: Final = bytes.fromhex("603100000000")
OPERATOR: Final = "001"
REVERSAL_FIELDS: Final = (2, 3, 4, 11, 22, 25, 41, 42, 49, 60)
BY_KIND: Final = {txn.kind: txn for txn in TRANSACTIONS}
# what names its original in 61; a reversal of one lets that original stand again (the host
# captures a voided sale again, authorises a voided or completed pre-auth again)
NAMING_AN_ORIGINAL: Final = (
    Kind.SALE_VOID, Kind.COMPLETION_VOID, Kind.PREAUTH_VOID, Kind.COMPLETION
)

MEANINGS: Final = {
    "00": "approved 交易成功", "03": "invalid merchant 商户无效", "05": "do not honour",
    "12": "invalid transaction 无效交易", "13": "invalid amount 金额无效",
    "14": "invalid card number 无效卡号", "22": "sign-on required 请重新签到",
    "25": "original not found 原交易不存在", "30": "format error 格式错误",
    "41": "lost card 挂失卡", "51": "insufficient funds 余额不足", "54": "expired card 过期卡",
    "55": "incorrect PIN 密码错", "61": "exceeds amount limit 超限额",
    "91": "issuer unavailable 发卡行不能操作", "94": "duplicate 重复交易",
    "96": "system malfunction 系统故障", "97": "terminal not registered 终端未登记",
    "98": "no response from issuer 发卡行超时", "A0": "MAC failed MAC校验错",
}  # fmt: skip
TITLES: Final = {
    Kind.SIGN_ON: "签到 SIGN-ON", Kind.BALANCE: "查询 BALANCE", Kind.PREAUTH: "预授权 PRE-AUTH",
    Kind.PREAUTH_VOID: "预授权撤销 PRE-AUTH VOID", Kind.COMPLETION: "预授权完成 COMPLETION",
    Kind.COMPLETION_VOID: "完成撤销 COMPLETION VOID", Kind.SALE: "消费 SALE",
    Kind.SALE_VOID: "消费撤销 VOID", Kind.REFUND: "退货 REFUND", Kind.REVERSAL: "冲正 REVERSAL",
    Kind.SETTLEMENT: "批结算 SETTLEMENT",
}  # fmt: skip


class SimulatorError(Exception):
    """The simulator cannot do what was asked (no keys, no such original, bad key data)."""


class NoResponse(SimulatorError):
    """The host did not answer in time, or closed the connection."""


# -- state ---------------------------------------------------------------------------------------
@dataclass
class JournalEntry:
    kind: str
    batch: str
    stan: str
    amount: int
    rrn: str
    auth_code: str
    date: str  # MMDD of the host's answer (61.3 of a later void or completion)
    card: str  # masked
    status: str = "approved"  # approved | voided | reversed | completed
    entry_mode: str = ""  # its field 22, which a reversal repeats ("": a state file before it)
    original_stan: str = ""  # a void's: what it voided (its reversal makes that stand again)


@dataclass
class TerminalState:
    terminal_id: str
    merchant_id: str
    batch: str = FIRST_BATCH
    stan: str = "000000"
    pik: str | None = None  # hex, working keys from the last sign-on
    mak: str | None = None
    journal: list[JournalEntry] = field(default_factory=list)
    pending_reversal: dict[str, Any] | None = None

    @property
    def keys(self) -> WorkingKeys:
        if self.pik is None or self.mak is None:
            raise SimulatorError("no working keys: sign on first (shoudan terminal signon)")
        return WorkingKeys(bytes.fromhex(self.pik), bytes.fromhex(self.mak))

    def next_stan(self) -> str:
        self.stan = next_stan(self.stan)
        return self.stan

    def find(self, stan: str | None, kinds: tuple[str, ...]) -> JournalEntry:
        """The journal entry with ``stan`` (default: the last approved one of ``kinds``)."""
        for entry in reversed(self.journal):
            if entry.kind in kinds and (stan == entry.stan if stan else entry.status == "approved"):
                return entry
        raise SimulatorError(f"no {'/'.join(kinds)} with STAN {stan or '(last)'} in this batch")

    @classmethod
    def load(cls, path: Path, terminal_id: str, merchant_id: str) -> TerminalState:
        if not path.exists():
            return cls(terminal_id, merchant_id)
        data = json.loads(path.read_text())
        journal = [JournalEntry(**entry) for entry in data.pop("journal", [])]
        state = cls(**data, journal=journal)
        if (state.terminal_id, state.merchant_id) != (terminal_id, merchant_id):
            return cls(terminal_id, merchant_id)  # another terminal: start afresh
        return state

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(self), handle, indent=2)
        temporary.replace(path)


# -- cards ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Card:
    pan: str = field(repr=False)
    expiry: str = "2912"
    pin: str | None = field(default=None, repr=False)
    entry_mode: EntryMode = EntryMode.CHIP

    def fields(self, pik: bytes) -> dict[int, FieldValue]:
        """2 (or 35 when swiped), 14, 22, and 52/53 when there is a PIN."""
        mode = ENTRY_MODE_CODES[self.entry_mode] + ("1" if self.pin else "2")
        fields: dict[int, FieldValue] = {22: mode}
        if self.entry_mode is EntryMode.MAGSTRIPE:
            fields[35] = f"{self.pan}D{self.expiry}101"
        else:
            fields |= {2: self.pan, 14: self.expiry}
        if self.pin:
            fields |= {52: encrypt_pin(pik, self.pin, self.pan), 53: SECURITY_CONTROL}
        return fields


@dataclass
class Reply:
    kind: Kind
    request: Message
    response: Message
    mac_ok: bool | None  # None: the response carries no MAC

    @property
    def code(self) -> str:
        return self.response.text(39) or "??"

    @property
    def approved(self) -> bool:
        return self.code == "00" and self.mac_ok is not False


# -- the client ----------------------------------------------------------------------------------
class TerminalClient:
    def __init__(
        self,
        host: str,
        port: int,
        state: TerminalState,
        *,
        timeout: float = 30.0,
        tpdu: bytes = DEFAULT_TPDU,
        header: bytes = DEFAULT_HEADER,
    ) -> None:
        self.host, self.port, self.state, self.timeout = host, port, state, timeout
        self.tpdu, self.header = tpdu, header
        self._socket: socket.socket | None = None

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> TerminalClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- wire -------------------------------------------------------------------------------------
    def exchange(self, body: bytes) -> bytes:
        """Send one message body, return the answer's body (``NoResponse`` if none)."""
        try:
            if self._socket is None:
                self._socket = socket.create_connection((self.host, self.port), self.timeout)
                self._socket.settimeout(self.timeout)
            self._socket.sendall(frame_bytes(self.tpdu, self.header, body))
            length = payload_length(self._read(LENGTH_BYTES))
            frame = split(self._read(length))
        except (OSError, ValueError) as error:
            self.close()
            raise NoResponse(f"no answer from {self.host}:{self.port}: {error}") from error
        return frame.body

    def _read(self, count: int) -> bytes:
        assert self._socket is not None
        chunks = bytearray()
        while len(chunks) < count:
            chunk = self._socket.recv(count - len(chunks))
            if not chunk:
                raise ConnectionError("connection closed by the host")
            chunks += chunk
        return bytes(chunks)

    def send(self, kind: Kind, message: Message, *, mac: bool = True) -> Reply:
        keys = self.state.keys if mac else None
        if keys is not None:
            message.fields[MAC_FIELD] = bytes(MAC_BYTES)
        body = encode(message)
        if keys is not None:
            body = body[:-MAC_BYTES] + retail_mac(keys.mak, body[:-MAC_BYTES])
            message.fields[MAC_FIELD] = body[-MAC_BYTES:]
        answer_body = self.exchange(body)
        response = decode(answer_body)
        mac_ok = None
        if response.has(MAC_FIELD):
            mac_ok = keys is not None and retail_mac(keys.mak, answer_body[:-MAC_BYTES]) == (
                response.binary(MAC_FIELD)
            )
        return Reply(kind, message, response, mac_ok)

    # -- helpers ------------------------------------------------------------------------------
    def base_message(self, txn: Transaction, stan: str) -> Message:
        """11, 41, 42, 60 (60.3 ``000`` on financial messages), 3 and 25 of ``txn``."""
        state = self.state
        f60 = Field60(txn.message_type, state.batch, txn.network_code or "000")
        fields: dict[int, FieldValue] = {
            11: stan, 41: state.terminal_id, 42: state.merchant_id, 60: f60.encode()
        }
        if txn.processing_code is not None:
            fields[3] = txn.processing_code
        if txn.condition is not None:
            fields[25] = txn.condition
        return Message(txn.mti, fields)

    def card_message(
        self, kind: Kind, card: Card, amount: int | None, extra: dict[int, FieldValue] | None = None
    ) -> Message:
        message = self.base_message(BY_KIND[kind], self.state.next_stan())
        message.fields |= card.fields(self.state.keys.pik) | {49: "156"} | (extra or {})
        if amount is not None:
            message.fields[4] = f"{amount:012d}"
        return message

    def _financial(self, kind: Kind, message: Message, card: Card) -> Reply:
        """Send a reversible request with its reversal record written first."""
        self.flush_reversal()
        state = self.state
        reversible = BY_KIND[kind].reversible
        if reversible:
            state.pending_reversal = {
                "reason": "98",
                "fields": {str(n): _dump(message.fields[n]) for n in REVERSAL_FIELDS
                           if n in message.fields},
            }  # fmt: skip
            if 2 not in message.fields:
                state.pending_reversal["fields"]["2"] = card.pan
        reply = self.send(kind, message)
        if reversible:
            if reply.mac_ok is False and reply.code == "00":
                state.pending_reversal = {**(state.pending_reversal or {}), "reason": "A0"}
            else:
                state.pending_reversal = None
        if reply.approved and kind is not Kind.BALANCE:
            self._journal(kind, message, reply, card)
        return reply

    def _journal(self, kind: Kind, message: Message, reply: Reply, card: Card) -> None:
        amount = int(message.text(4) or 0)
        stan = message.text(11) or ""
        entry = JournalEntry(
            kind.value, self.state.batch, stan, amount, reply.response.text(37) or "",
            reply.response.text(38) or "", reply.response.text(13) or "", mask_pan(card.pan),
            entry_mode=message.text(22) or "",
            original_stan=(
                parse_61(message.text(61) or "").stan if kind in NAMING_AN_ORIGINAL else ""
            ),
        )  # fmt: skip
        self.state.journal.append(entry)

    # -- transactions -----------------------------------------------------------------------------
    def sign_on(self, master_key: bytes) -> Reply:
        message = self.base_message(BY_KIND[Kind.SIGN_ON], self.state.next_stan())
        message.fields[63] = OPERATOR
        reply = self.send(Kind.SIGN_ON, message, mac=False)
        if reply.code == "00":
            key_data = reply.response.binary(62)
            if key_data is None:
                raise SimulatorError("the sign-on answer has no key data (62)")
            keys = read_key_data(master_key, key_data)
            self.state.pik, self.state.mak = keys.pik.hex(), keys.mak.hex()
            self.state.batch = parse_60(reply.response.text(60) or "").batch
        return reply

    def sale(self, card: Card, amount: int) -> Reply:
        return self._financial(Kind.SALE, self.card_message(Kind.SALE, card, amount), card)

    def preauth(self, card: Card, amount: int) -> Reply:
        return self._financial(Kind.PREAUTH, self.card_message(Kind.PREAUTH, card, amount), card)

    def balance(self, card: Card) -> Reply:
        return self._financial(Kind.BALANCE, self.card_message(Kind.BALANCE, card, None), card)

    def complete(self, card: Card, amount: int, original_stan: str | None = None) -> Reply:
        original = self.state.find(original_stan, (Kind.PREAUTH.value,))
        extra: dict[int, FieldValue] = {
            61: Field61(original.batch, original.stan, original.date).encode(),
            38: original.auth_code,
        }
        reply = self._financial(
            Kind.COMPLETION, self.card_message(Kind.COMPLETION, card, amount, extra), card
        )
        if reply.approved:
            original.status = "completed"
        return reply

    def void(self, card: Card, original_stan: str | None = None) -> Reply:
        """Void a sale, a completion or a pre-auth of this batch, by its STAN."""
        voidable = (Kind.SALE.value, Kind.COMPLETION.value, Kind.PREAUTH.value)
        original = self.state.find(original_stan, voidable)
        kind = {
            Kind.SALE.value: Kind.SALE_VOID, Kind.COMPLETION.value: Kind.COMPLETION_VOID,
            Kind.PREAUTH.value: Kind.PREAUTH_VOID,
        }[original.kind]  # fmt: skip
        extra: dict[int, FieldValue] = {
            61: Field61(original.batch, original.stan, original.date).encode(), 37: original.rrn,
        }
        message = self.card_message(kind, card, original.amount, extra)
        reply = self._financial(kind, message, card)
        if reply.approved:
            original.status = "voided"
        return reply

    def refund(self, card: Card, amount: int, rrn: str, date: str) -> Reply:
        """退货 (an advice, 0220) of the payment with RRN ``rrn`` made on ``date`` (MMDD):
        61.1/61.2 are unknown to the terminal for an earlier batch, so zeros."""
        extra: dict[int, FieldValue] = {61: Field61("000000", "000000", date).encode(), 37: rrn}
        return self._financial(
            Kind.REFUND, self.card_message(Kind.REFUND, card, amount, extra), card
        )

    def reverse(
        self, card: Card | None = None, original_stan: str | None = None, reason: str = "98"
    ) -> Reply:
        """Send the pending reversal; or, with ``original_stan`` and the card, reverse that
        transaction of this batch (as a terminal does when it could not use an answer)."""
        reason = reason.upper()
        if reason not in REVERSAL_REASONS:  # the host would answer 30, and it would be resent
            raise SimulatorError(f"a reversal's reason is 98, 96, A0 or 06, not {reason!r}")
        state = self.state
        if original_stan is not None:
            if card is None:
                raise SimulatorError("reversing a journal entry needs the card (--pan)")
            reversible = tuple(t.kind.value for t in TRANSACTIONS if t.reversible)
            entry = state.find(original_stan, reversible)
            txn = BY_KIND[Kind(entry.kind)]
            message = self.base_message(txn, entry.stan)
            message.fields |= card.fields(state.keys.pik) | {49: "156", 4: f"{entry.amount:012d}"}
            if entry.entry_mode:  # as the original sent it, whether or not a PIN is given now
                message.fields[22] = entry.entry_mode
            state.pending_reversal = {
                "reason": reason,
                "fields": {str(n): _dump(v) for n, v in message.fields.items()
                           if n in REVERSAL_FIELDS},
            }  # fmt: skip
            state.pending_reversal["fields"].setdefault("2", card.pan)
        reply = self.flush_reversal(reason)
        if reply is None:
            raise SimulatorError("nothing to reverse: no pending reversal (give --original-stan)")
        return reply

    def flush_reversal(self, reason: str | None = None) -> Reply | None:
        """Send the pending reversal (if any) until the host acknowledges it."""
        pending = self.state.pending_reversal
        if pending is None:
            return None
        fields = {int(n): _load(int(n), v) for n, v in pending["fields"].items()}
        fields[39] = reason or pending.get("reason", "98")
        reply = self.send(Kind.REVERSAL, Message(REVERSAL_MTI, fields))
        if reply.code == "00":
            self.state.pending_reversal = None
            stan = fields.get(11)
            for entry in self.state.journal:
                if entry.stan == stan and entry.batch == self.state.batch:
                    entry.status = "reversed"
                    if entry.original_stan:  # 撤销冲正, 完成冲正: the original stands again
                        self._restore(entry.original_stan)
        return reply

    def _restore(self, stan: str) -> None:
        for entry in self.state.journal:
            if entry.stan == stan and entry.kind in (*SALE_KINDS, Kind.PREAUTH.value):
                entry.status = "approved"

    def settle(self) -> Reply:
        self.flush_reversal()
        state = self.state
        totals = batch_totals(state.journal)
        message = self.base_message(BY_KIND[Kind.SETTLEMENT], state.next_stan())
        message.fields[48] = totals.encode()
        reply = self.send(Kind.SETTLEMENT, message)
        if reply.code == "00" and reply.mac_ok is not False:
            state.batch = next_batch(state.batch)
            state.journal = []
        return reply


def batch_totals(journal: list[JournalEntry]) -> BatchTotals:
    """Field 48 as the terminal counts it: approved sales and completions not voided or
    reversed; approved refunds (``PENDING REVIEW`` ones included: the host answered ``00``)."""
    sales = [e for e in journal if e.kind in SALE_KINDS and e.status == "approved"]
    refunds = [e for e in journal if e.kind == Kind.REFUND.value and e.status == "approved"]
    return BatchTotals(
        sum(e.amount for e in sales), len(sales), sum(e.amount for e in refunds), len(refunds)
    )


def _dump(value: FieldValue) -> str:
    return value.hex() if isinstance(value, bytes) else value


def _load(number: int, value: str) -> FieldValue:
    return bytes.fromhex(value) if FIELDS[number].kind == "b" else value


# -- receipt -------------------------------------------------------------------------------------
def receipt(reply: Reply, now: datetime) -> str:
    """The 签购单 (sales slip) a terminal prints: masked card, never the full number."""
    request, response = reply.request, reply.response
    pan = request.text(2) or (request.text(35) or "").partition("D")[0]
    amount = request.text(4)
    local = now.astimezone(SHANGHAI)
    lines = [
        "POS 签购单  TRANSACTION SLIP",
        "-" * 36,
        f"商户号 MERCHANT NO : {request.text(42)}",
        f"终端号 TERMINAL NO : {request.text(41)}",
        f"卡号   CARD NO     : {mask_pan(pan) if pan else '-'}",
        f"交易类型 TYPE      : {TITLES[reply.kind]}",
        f"批次号 BATCH NO    : {parse_60(request.text(60) or '').batch}",
        f"凭证号 VOUCHER NO  : {request.text(11)}",
        f"授权码 AUTH NO     : {response.text(38) or '-'}",
        f"参考号 REF NO      : {response.text(37) or '-'}",
        f"日期时间 DATE/TIME : {local:%Y/%m/%d %H:%M:%S}",
    ]
    if amount is not None:
        lines.append(f"金额 AMOUNT        : RMB {int(amount) / 100:,.2f}")
    if response.has(54):
        balance = response.text(54) or ""
        lines.append(f"余额 BALANCE       : RMB {int(balance[-12:]) / 100:,.2f}")
    if response.has(48):
        totals, flag = parse_48(response.text(48) or "")
        lines += [
            f"消费 SALES         : {totals.sales_count} / RMB {totals.sales_amount / 100:,.2f}",
            f"退货 REFUNDS       : {totals.refunds_count} / RMB {totals.refunds_amount / 100:,.2f}",
            f"对账 RECONCILED    : {'平 balanced' if flag == '1' else '不平 NOT balanced'}",
        ]
    if response.has(44):
        lines.append(f"备注 NOTE          : {response.text(44)}")
    if response.text(44) == PENDING_REVIEW:
        lines.append("退货待审核: the refund completes after the acquirer's review")
    lines += [
        f"应答码 RESPONSE    : {reply.code} {MEANINGS.get(reply.code, '')}",
        *(["MAC 校验失败: reversal pending"] if reply.mac_ok is False else []),
        "-" * 36,
        "持卡人签名 CARDHOLDER SIGNATURE",
        "",
        "本人确认以上交易, 同意将其记入本卡账户",
    ]
    return "\n".join(lines)
