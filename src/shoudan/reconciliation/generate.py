"""Writing statements in the three layouts: what a channel would send us for a list of its
transactions. The tests and the benchmark generate statements with it (then inject
differences); it is also the executable description of each layout in docs/reconciliation.md.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, TextIO

from shoudan.core.clock import SHANGHAI
from shoudan.reconciliation.domain import Channel, ChannelStatus, RecordKind
from shoudan.reconciliation.layouts import AlipayLayout, UnionPayLayout, WeChatLayout

MASKED_CARD: Final = "622202******0018"


@dataclass(frozen=True, slots=True)
class ChannelTxn:
    """One transaction as the channel saw it. ``reference`` is what the match key uses: the
    RRN of a card sale, the channel's own id of a QR sale, our refund id for a refund;
    ``original`` is, for a refund, the RRN / channel id of the payment it returns."""

    kind: RecordKind
    status: ChannelStatus
    amount: int  # fen
    at: datetime  # aware
    reference: str
    order_ref: str = ""  # our payment id (商户订单号)
    original: str = ""
    merchant_id: str = ""
    terminal_id: str = ""


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def _local(moment: datetime) -> datetime:
    return moment.astimezone(SHANGHAI)


# -- card network ------------------------------------------------------------------------------
_CARD_TYPES: Final = {
    (RecordKind.PAYMENT, ChannelStatus.SUCCESS): ("sale", "00"),
    (RecordKind.PAYMENT, ChannelStatus.VOIDED): ("void", "00"),
    (RecordKind.PAYMENT, ChannelStatus.DECLINED): ("sale", "05"),
    (RecordKind.REFUND, ChannelStatus.SUCCESS): ("refund", "00"),
    (RecordKind.REFUND, ChannelStatus.FAILED): ("refund", "05"),
}


def write_unionpay(txns: Iterable[ChannelTxn], out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(UnionPayLayout.columns)
    for t in txns:
        kind, code = _CARD_TYPES[(t.kind, t.status)]
        local = _local(t.at)
        refund = t.kind is RecordKind.REFUND
        writer.writerow((
            f"{local + timedelta(days=1):%Y%m%d}", f"{local:%Y%m%d}", f"{local:%H%M%S}",
            t.merchant_id, t.terminal_id, t.original if refund else t.reference, kind, t.amount,
            code, MASKED_CARD, t.reference if refund else "",
        ))  # fmt: skip


# -- WeChat-like --------------------------------------------------------------------------------
_WECHAT_TRADE: Final = {
    ChannelStatus.SUCCESS: "SUCCESS", ChannelStatus.VOIDED: "REVOKED",
    ChannelStatus.DECLINED: "PAYERROR",
}  # fmt: skip
_WECHAT_REFUND: Final = {
    ChannelStatus.SUCCESS: "SUCCESS", ChannelStatus.PROCESSING: "PROCESSING",
    ChannelStatus.FAILED: "CHANGE",
}  # fmt: skip


def write_wechat(txns: Iterable[ChannelTxn], out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(WeChatLayout.columns)
    rows = refunded = ordered = 0
    for t in txns:
        refund = t.kind is RecordKind.REFUND
        state = "REFUND" if refund else _WECHAT_TRADE[t.status]
        order = 0 if refund else t.amount
        back = t.amount if refund else 0
        values = (
            f"{_local(t.at):%Y-%m-%d %H:%M:%S}", "wx2421b1c4370ec43b", "1900000109", "",
            t.terminal_id, t.original if refund else t.reference, t.order_ref, "oUpF8uMuAJO_M2p",
            "MICROPAY", state, "OTHERS", "CNY", _yuan(order), "0.00",
            f"50{t.reference[-12:]}" if refund else "", t.reference if refund else "",
            _yuan(back), "0.00", "ORIGINAL" if refund else "",
            _WECHAT_REFUND[t.status] if refund else "", "收单商品", "", "0.00", "0.38%",
            _yuan(order), _yuan(back), "",
        )  # fmt: skip
        writer.writerow("`" + value for value in values)
        rows += 1
        refunded += back
        ordered += order
    writer.writerow(WeChatLayout.FOOTER)
    totals = (str(rows), _yuan(ordered), _yuan(refunded), "0.00", "0.00", _yuan(ordered),
              _yuan(refunded))  # fmt: skip
    writer.writerow("`" + value for value in totals)


# -- Alipay-like --------------------------------------------------------------------------------
def write_alipay(txns: Iterable[ChannelTxn], out: TextIO) -> None:
    out.write("#支付宝业务明细查询\n#账号：[20880000000000000156]\n")
    out.write("#" + "-" * 41 + "业务明细列表" + "-" * 40 + "\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(AlipayLayout.columns)
    counts = {"交易": [0, 0], "退款": [0, 0]}
    for t in txns:
        refund = t.kind is RecordKind.REFUND
        kind = "退款" if refund else {ChannelStatus.SUCCESS: "交易"}.get(t.status, "撤销")
        amount = -t.amount if refund else t.amount
        received = 0 if kind == "撤销" else amount
        local = f"{_local(t.at):%Y-%m-%d %H:%M:%S}"
        writer.writerow((
            t.original if refund else t.reference, t.order_ref, kind, "收单商品", local, local,
            t.merchant_id, "", "", t.terminal_id, "", _yuan(amount), _yuan(received),
            "0.00", "0.00", "0.00", "0.00", "0.00", "", "0.00", "0.00",
            t.reference if refund else "", "0.00", "", "",
        ))  # fmt: skip
        tally = counts["退款" if refund else "交易"]
        tally[0] += 1
        tally[1] += received
    out.write("#" + "-" * 41 + "业务明细列表结束" + "-" * 36 + "\n")
    for what, (count, received) in counts.items():
        out.write(f"#{what}合计：{count}笔，商家实收共{_yuan(received)}元，商家优惠共0.00元\n")
    out.write("#导出时间：[2026年11月24日 09:00:00]\n")


WRITERS: Final[dict[Channel, Callable[[Iterable[ChannelTxn], TextIO], None]]] = {
    Channel.UNIONPAY: write_unionpay,
    Channel.WECHAT: write_wechat,
    Channel.ALIPAY: write_alipay,
}


def write_statement(channel: Channel, txns: Iterable[ChannelTxn], out: TextIO) -> None:
    WRITERS[channel](txns, out)
