"""The three statement layouts (docs/reconciliation.md), pure. Each layout states its rules
twice, side by side: as SQL over a line's values (``sql_*``: how ``statement.py`` validates and
normalises a million lines in DuckDB) and in Python (``parse``: run on the first line the SQL
refuses, to name its column and say why). The two must agree (tests check both on bad input).

- ``unionpay``: the card network's daily file — ASCII header, one line per transaction in
  its final state, amounts in integer fen, dates ``YYYYMMDD``.
- ``wechat``: shaped like WeChat Pay's merchant trade bill — Chinese column names, every
  value prefixed with a backtick, amounts in yuan with two decimals, a totals block at the end.
- ``alipay``: shaped like Alipay's business detail bill (业务明细) — ``#`` comment lines
  around the table, refunds as negative amounts, totals in the closing comments.

A line's match key says which record of ours it is: ``P|<rrn>|<date>`` (card sales),
``P|<channel reference>|<date>`` (QR sales) or ``R|<our refund id>`` (refunds, every layout).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import ClassVar, Final, NamedTuple

from shoudan.reconciliation.domain import (
    Channel,
    ChannelStatus,
    Period,
    RecordKind,
    StatementError,
)


class StatementLine(NamedTuple):
    line: int
    kind: str  # RecordKind value
    key: str
    day: str  # YYYY-MM-DD
    amount: int  # fen, positive
    status: str  # ChannelStatus value


PAYMENT_KEY: Final = "P|"  # + reference + KEY_SEPARATOR + day
REFUND_KEY: Final = "R|"  # + our refund id
KEY_SEPARATOR: Final = "|"


def payment_key(reference: str, day: str) -> str:
    return f"{PAYMENT_KEY}{reference}{KEY_SEPARATOR}{day}"


def refund_key(refund_id: str) -> str:
    return f"{REFUND_KEY}{refund_id}"


# -- field parsers ------------------------------------------------------------------------------
class FieldError(ValueError):
    """A value refused; the reader adds the file, line and column."""


MAX_FEN_DIGITS: Final = 15


def parse_fen(text: str) -> int:
    if text.isascii() and text.isdigit():
        if len(text) > MAX_FEN_DIGITS:
            raise FieldError(f"amount {text!r} has more than {MAX_FEN_DIGITS} digits")
        return int(text)
    if text.startswith("-") and text[1:].isdigit():
        raise FieldError(f"negative amount {text!r}: amounts are positive, the type says the way")
    raise FieldError(f"amount {text!r} is not a whole number of fen")


_YUAN: Final = re.compile(r"(-?)(\d{1,13})\.(\d\d)", re.ASCII)
_ISO_MOMENT: Final = re.compile(r"\d{4}-\d\d-\d\d .{8}", re.ASCII)


def parse_signed_yuan(text: str) -> int:
    match = _YUAN.fullmatch(text)
    if match is None:
        raise FieldError(f"amount {text!r} is not yuan with two decimals (e.g. 100.00)")
    sign, whole, cents = match.groups()
    value = int(whole) * 100 + int(cents)
    return -value if sign else value


def parse_yuan(text: str) -> int:
    value = parse_signed_yuan(text)
    if value < 0 or text.startswith("-"):
        raise FieldError(f"negative amount {text!r}: amounts are positive, the type says the way")
    return value


class _Days:
    """Date text → ISO date, checked against the run's period; cached, since a statement
    repeats a handful of dates a million times."""

    def __init__(self, period: Period | None) -> None:
        self.period = period
        self._seen: dict[str, str] = {}

    def __call__(self, text: str, shape: str) -> str:
        found = self._seen.get(text)
        if found is not None:
            return found
        day = self._parse(text, shape)
        if self.period is not None and day not in self.period:
            raise FieldError(
                f"date {day.isoformat()} is outside the run "
                f"({self.period.start.isoformat()} to {self.period.end.isoformat()})"
            )
        self._seen[text] = day.isoformat()
        return self._seen[text]

    def span(self) -> tuple[str | None, str | None]:
        """The first and last dates seen."""
        days = sorted(set(self._seen.values()))
        return (days[0], days[-1]) if days else (None, None)

    @staticmethod
    def _parse(text: str, shape: str) -> date:
        try:
            if shape == "YYYYMMDD" and len(text) == 8 and text.isascii() and text.isdigit():
                return date(int(text[:4]), int(text[4:6]), int(text[6:]))
            if shape == "YYYY-MM-DD hh:mm:ss" and _ISO_MOMENT.fullmatch(text):
                return date(int(text[:4]), int(text[5:7]), int(text[8:10]))
        except ValueError:
            pass
        raise FieldError(f"{text!r} is not a date/time of the form {shape}")


def _required(text: str, what: str) -> str:
    if not text:
        raise FieldError(f"{what} is empty")
    return text


# -- the reader ---------------------------------------------------------------------------------
@dataclass
class Totals:
    """What the data lines add up to, for the layout's own totals check."""

    rows: int = 0
    payments: int = 0
    payment_amount: int = 0
    refunds: int = 0
    refund_amount: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, amount: int) -> None:
        self.rows += 1
        if kind == RecordKind.PAYMENT:
            self.payments += 1
            self.payment_amount += amount
        else:
            self.refunds += 1
            self.refund_amount += amount


# -- the rules as SQL ----------------------------------------------------------------------------
# Every expression reads the line's cleaned values ``v1``, ``v2`` … (``value``); statement.py
# computes the ones named, through the layout's ``sql_clean``, and defines the macros used.
WHITESPACE: Final = "".join(c for c in map(chr, range(0x3001)) if c.isspace())  # str.strip's


@dataclass(frozen=True, slots=True)
class SqlRecord:
    """A data line's normalised values as SQL expressions; ``day`` may be used by the others
    (by name), ``ok`` is every rule of ``Layout.parse`` except the date's."""

    day: str  # ISO date, NULL when the text is not a date of the layout's shape
    kind: str
    key: str
    amount: str
    status: str
    ok: str
    received: str = "NULL::BIGINT"


def sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_in(expression: str, values: Iterable[str]) -> str:
    return f"{expression} IN ({', '.join(map(sql_text, values))})"


def sql_map(expression: str, mapping: dict[str, ChannelStatus]) -> str:
    """``mapping[expression]`` (NULL when absent)."""
    whens = " ".join(f"WHEN {sql_text(k)} THEN {sql_text(v.value)}" for k, v in mapping.items())
    return f"CASE {expression} {whens} END"


class Layout:
    channel: ClassVar[Channel]
    columns: ClassVar[tuple[str, ...]]
    sql_clean: ClassVar[str] = "x"  # SQL of ``clean`` for one value ``x`` already stripped
    footer_hint: ClassVar[str | None] = None  # SQL on ``text``: may this line start the footer?

    def value(self, column: str) -> str:
        """SQL: the cleaned value of ``column``."""
        return f"v{self.columns.index(column) + 1}"

    def sql_record(self) -> SqlRecord:
        raise NotImplementedError

    def is_preamble(self, fields: list[str]) -> bool:
        """A line before the header the layout skips (and the header is the first other)."""
        return False

    def is_footer(self, fields: list[str]) -> bool:
        """The first line after the data."""
        return False

    def clean(self, raw: list[str]) -> list[str]:
        """The values of a line without the layout's padding."""
        return list(map(str.strip, raw))

    def parse(self, fields: list[str], days: _Days, totals: Totals) -> StatementLine:
        """A line's match key, date, amount and status (``line`` left 0)."""
        raise NotImplementedError

    def check_footer(self, footer: list[tuple[int, list[str]]], totals: Totals) -> None:
        """Raise ``_FooterError`` when the layout's totals disagree with the data."""


class _FooterError(Exception):
    def __init__(self, line: int, message: str, column: int | None = None) -> None:
        super().__init__(message)
        self.line, self.message, self.column = line, message, column


class _ColumnError(Exception):
    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column, self.message = column, message


class Reader:
    """The Python side of a statement's rules, where a message must name a line and column:
    finds the header among the first lines, says why a line the SQL refused is bad, checks
    the totals block against the data's totals. ``statement.py`` drives it."""

    def __init__(self, file: str, layout: Layout, period: Period | None) -> None:
        self.file = file
        self.layout = layout
        self.period = period

    def error(self, line: int, problem: str, column: int | None = None) -> StatementError:
        name = None
        if column is not None and column <= len(self.layout.columns):
            name = self.layout.columns[column - 1]
        return StatementError(self.file, line, problem, column, name)

    def header(self, rows: Iterable[tuple[int, list[str]]]) -> int:
        """The header's line number (the first line that is not preamble), checked."""
        columns = self.layout.columns
        for number, raw in rows:
            if self.layout.is_preamble(raw):
                continue
            header = tuple(text.strip().lstrip("\ufeff") for text in raw)
            if header != columns:
                raise self.error(number, _layout_problem(self.layout, header))
            return number
        raise self.error(1, f"empty file: no {self.layout.channel.value} header line")

    def line_error(self, number: int, raw: list[str]) -> StatementError | None:
        """Why data line ``number`` is refused, or None if the Python rules accept it."""
        if not any(raw):
            return self.error(number, "empty line inside the data")
        width = len(self.layout.columns)
        if len(raw) != width:
            return self.error(number, f"{len(raw)} values where the header has {width}")
        try:
            self.layout.parse(self.layout.clean(raw), _Days(self.period), Totals())
        except _ColumnError as exc:
            return self.error(number, exc.message, self.layout.columns.index(exc.column) + 1)
        return None

    def check_footer(self, footer: list[tuple[int, list[str]]], totals: Totals) -> None:
        try:
            self.layout.check_footer(footer, totals)
        except _FooterError as exc:
            raise self.error(exc.line, exc.message, exc.column) from None


def _layout_problem(layout: Layout, header: tuple[str, ...]) -> str:
    missing = [name for name in layout.columns if name not in header]
    unexpected = [name for name in header if name not in layout.columns]
    problem = f"not the {layout.channel.value} layout"
    if missing:
        problem += f"; missing column(s): {', '.join(missing[:5])}"
    if unexpected:
        problem += f"; unexpected column(s): {', '.join(unexpected[:5])}"
    if not missing and not unexpected:
        problem += "; the columns are out of order"
    return problem


def _column(name: str, parse: Callable[[str], int], text: str) -> int:
    try:
        return parse(text)
    except FieldError as exc:
        raise _ColumnError(name, str(exc)) from None


def _day(name: str, days: _Days, text: str, shape: str) -> str:
    try:
        return days(text, shape)
    except FieldError as exc:
        raise _ColumnError(name, str(exc)) from None


def _text(name: str, text: str) -> str:
    try:
        return _required(text, name)
    except FieldError as exc:
        raise _ColumnError(name, str(exc)) from None


# -- UnionPay-like card network file ------------------------------------------------------------
class UnionPayLayout(Layout):
    channel = Channel.UNIONPAY
    columns = (
        "settle_date", "txn_date", "txn_time", "merchant_id", "terminal_id", "rrn",
        "txn_type", "amount_fen", "resp_code", "card_no", "refund_ref",
    )  # fmt: skip
    TYPES: ClassVar[dict[str, ChannelStatus]] = {
        "sale": ChannelStatus.SUCCESS, "void": ChannelStatus.VOIDED,
        "refund": ChannelStatus.SUCCESS,
    }  # fmt: skip

    def sql_record(self) -> SqlRecord:
        v, kind = self.value, self.value("txn_type")
        refund = f"{kind} = 'refund'"
        return SqlRecord(
            day=f"ymd_day({v('txn_date')})",
            kind=f"CASE WHEN {refund} THEN 'refund' ELSE 'payment' END",
            key=f"CASE WHEN {refund} THEN 'R|' || {v('refund_ref')} "
            f"ELSE 'P|' || {v('rrn')} || '|' || day END",
            amount=f"TRY_CAST({v('amount_fen')} AS BIGINT)",
            status=f"CASE WHEN {v('resp_code')} = '00' THEN {sql_map(kind, self.TYPES)} "
            f"WHEN {kind} = 'sale' THEN 'declined' ELSE 'failed' END",
            ok=f"{sql_in(kind, self.TYPES)} AND regexp_full_match({v('rrn')}, '[0-9]{{12}}') "
            f"AND NOT regexp_full_match({v('card_no')}, '[0-9]{{12,}}') "
            f"AND fen_ok({v('amount_fen')}) "
            f"AND (NOT {refund} OR {v('refund_ref')} <> '')",
        )  # fmt: skip

    def parse(self, fields: list[str], days: _Days, totals: Totals) -> StatementLine:
        _settle, txn_date, _time, _mid, _tid, rrn, kind, amount, code, card, refund_ref = fields
        day = _day("txn_date", days, txn_date, "YYYYMMDD")
        status = self.TYPES.get(kind)
        if status is None:
            raise _ColumnError("txn_type", f"txn_type {kind!r} is not sale, void or refund")
        if len(rrn) != 12 or not (rrn.isascii() and rrn.isdigit()):
            raise _ColumnError("rrn", f"rrn {rrn!r} is not 12 digits")
        if card.isascii() and card.isdigit() and len(card) >= 12:
            raise _ColumnError("card_no", "an unmasked card number: statements must mask PANs")
        fen = _column("amount_fen", parse_fen, amount)
        if code != "00":
            status = ChannelStatus.DECLINED if kind == "sale" else ChannelStatus.FAILED
        if kind == "refund":
            ref = _text("refund_ref", refund_ref)
            return StatementLine(0, RecordKind.REFUND, refund_key(ref), day, fen, status)
        return StatementLine(0, RecordKind.PAYMENT, payment_key(rrn, day), day, fen, status)


# -- WeChat-like trade bill ----------------------------------------------------------------------
class WeChatLayout(Layout):
    channel = Channel.WECHAT
    columns = (
        "交易时间", "公众账号ID", "商户号", "特约商户号", "设备号", "微信订单号", "商户订单号",
        "用户标识", "交易类型", "交易状态", "付款银行", "货币种类", "应结订单金额", "代金券金额",
        "微信退款单号", "商户退款单号", "退款金额", "充值券退款金额", "退款类型", "退款状态",
        "商品名称", "商户数据包", "手续费", "费率", "订单金额", "申请退款金额", "费率备注",
    )  # fmt: skip
    FOOTER: ClassVar[tuple[str, ...]] = (
        "总交易单数", "应结订单总金额", "退款总金额", "充值券退款总金额", "手续费总金额",
        "订单总金额", "申请退款总金额",
    )  # fmt: skip
    TRADE_STATES: ClassVar[dict[str, ChannelStatus]] = {
        "SUCCESS": ChannelStatus.SUCCESS, "REVOKED": ChannelStatus.VOIDED,
        "PAYERROR": ChannelStatus.DECLINED, "CLOSED": ChannelStatus.DECLINED,
    }  # fmt: skip
    REFUND_STATES: ClassVar[dict[str, ChannelStatus]] = {
        "SUCCESS": ChannelStatus.SUCCESS, "PROCESSING": ChannelStatus.PROCESSING,
        "CHANGE": ChannelStatus.FAILED, "FAIL": ChannelStatus.FAILED,
    }  # fmt: skip
    _INDEX: ClassVar[dict[str, int]] = {name: i for i, name in enumerate(columns)}
    sql_clean = "CASE WHEN starts_with(x, '`') THEN x[2:] ELSE x END"
    footer_hint = f"contains(text, {sql_text(FOOTER[0])})"

    def clean(self, raw: list[str]) -> list[str]:
        return [text.strip().removeprefix("`") for text in raw]

    def sql_record(self) -> SqlRecord:
        v, state = self.value, self.value("交易状态")
        refund = f"{state} = 'REFUND'"
        refund_ok = (
            f"{sql_in(v('退款状态'), self.REFUND_STATES)} AND yuan_ok({v('退款金额')}) "
            f"AND {v('商户退款单号')} <> ''"
        )
        sale_ok = (
            f"{sql_in(state, self.TRADE_STATES)} AND yuan_ok({v('订单金额')}) "
            f"AND {v('微信订单号')} <> ''"
        )
        return SqlRecord(
            day=f"iso_day({v('交易时间')})",
            kind=f"CASE WHEN {refund} THEN 'refund' ELSE 'payment' END",
            key=f"CASE WHEN {refund} THEN 'R|' || {v('商户退款单号')} "
            f"ELSE 'P|' || {v('微信订单号')} || '|' || day END",
            amount=f"yuan(CASE WHEN {refund} THEN {v('退款金额')} ELSE {v('订单金额')} END)",
            status=f"CASE WHEN {refund} THEN {sql_map(v('退款状态'), self.REFUND_STATES)} "
            f"ELSE {sql_map(state, self.TRADE_STATES)} END",
            ok=f"CASE WHEN {refund} THEN {refund_ok} ELSE {sale_ok} END",
        )  # fmt: skip

    def is_footer(self, fields: list[str]) -> bool:
        return bool(fields) and self.clean(fields[:1]) == [self.FOOTER[0]]

    def parse(self, fields: list[str], days: _Days, totals: Totals) -> StatementLine:
        at = self._INDEX
        day = _day("交易时间", days, fields[0], "YYYY-MM-DD hh:mm:ss")
        state = fields[at["交易状态"]]
        if state == "REFUND":
            status = self.REFUND_STATES.get(fields[at["退款状态"]])
            if status is None:
                raise _ColumnError("退款状态", f"退款状态 {fields[at['退款状态']]!r} is unknown")
            fen = _column("退款金额", parse_yuan, fields[at["退款金额"]])
            ref = _text("商户退款单号", fields[at["商户退款单号"]])
            return StatementLine(0, RecordKind.REFUND, refund_key(ref), day, fen, status)
        status = self.TRADE_STATES.get(state)
        if status is None:
            raise _ColumnError("交易状态", f"交易状态 {state!r} is unknown")
        fen = _column("订单金额", parse_yuan, fields[at["订单金额"]])
        reference = _text("微信订单号", fields[at["微信订单号"]])
        return StatementLine(
            0, RecordKind.PAYMENT, payment_key(reference, day), day, fen, status
        )

    def check_footer(self, footer: list[tuple[int, list[str]]], totals: Totals) -> None:
        if not footer:
            raise _FooterError(totals.rows + 1, "no totals block at the end (truncated file?)")
        (head_line, head), *rest = footer
        if tuple(self.clean(head)) != self.FOOTER:
            raise _FooterError(head_line, "the totals header is not the WeChat one")
        if len(rest) != 1:
            raise _FooterError(head_line, "the totals block is one header and one line")
        line, values = rest[0]
        values = self.clean(values)
        if len(values) != len(self.FOOTER):
            raise _FooterError(line, f"{len(values)} totals where the header has 7")
        expected = {
            0: (str(totals.rows), "总交易单数"),
            2: (_yuan(totals.refund_amount), "退款总金额"),
            5: (_yuan(totals.payment_amount), "订单总金额"),
        }
        for index, (want, name) in expected.items():
            if values[index] != want:
                raise _FooterError(
                    line, f"{name} says {values[index]}, the lines add up to {want}", index + 1
                )


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


# -- Alipay-like business detail bill ----------------------------------------------------------
class AlipayLayout(Layout):
    channel = Channel.ALIPAY
    columns = (
        "支付宝交易号", "商户订单号", "业务类型", "商品名称", "创建时间", "完成时间", "门店编号",
        "门店名称", "操作员", "终端号", "对方账户", "订单金额（元）", "商家实收（元）",
        "支付宝红包（元）", "集分宝（元）", "支付宝优惠（元）", "商家优惠（元）",
        "券核销金额（元）", "券名称", "商家红包消费金额（元）", "卡消费金额（元）",
        "退款批次号/请求号", "服务费（元）", "分润（元）", "备注",
    )  # fmt: skip
    _INDEX: ClassVar[dict[str, int]] = {name: i for i, name in enumerate(columns)}
    _TOTAL: ClassVar[re.Pattern[str]] = re.compile(
        r"#(交易|退款)合计：(\d+)笔，商家实收共(-?\d+\.\d\d)元"
    )

    footer_hint = "contains(text, '#')"
    KINDS: ClassVar[dict[str, ChannelStatus]] = {
        "交易": ChannelStatus.SUCCESS, "撤销": ChannelStatus.VOIDED,
    }  # fmt: skip

    def is_preamble(self, fields: list[str]) -> bool:
        return bool(fields) and fields[0].lstrip("\ufeff").startswith("#")

    def sql_record(self) -> SqlRecord:
        v, kind = self.value, self.value("业务类型")
        amount, received = v("订单金额（元）"), v("商家实收（元）")
        refund = f"{kind} = '退款'"
        return SqlRecord(
            day=f"iso_day(CASE WHEN {refund} THEN {v('完成时间')} ELSE {v('创建时间')} END)",
            kind=f"CASE WHEN {refund} THEN 'refund' ELSE 'payment' END",
            key=f"CASE WHEN {refund} THEN 'R|' || {v('退款批次号/请求号')} "
            f"ELSE 'P|' || {v('支付宝交易号')} || '|' || day END",
            amount=f"CASE WHEN {refund} THEN -yuan({amount}) ELSE yuan({amount}) END",
            status=f"CASE WHEN {refund} THEN 'success' ELSE {sql_map(kind, self.KINDS)} END",
            received=f"yuan({received})",
            ok=f"signed_yuan_ok({amount}) AND signed_yuan_ok({received}) AND CASE "
            f"WHEN {refund} THEN yuan({amount}) < 0 AND {v('退款批次号/请求号')} <> '' "
            f"WHEN {sql_in(kind, self.KINDS)} THEN yuan({amount}) >= 0 "
            f"AND {v('支付宝交易号')} <> '' ELSE false END",
        )  # fmt: skip

    def is_footer(self, fields: list[str]) -> bool:
        return bool(fields) and fields[0].startswith("#")

    def parse(self, fields: list[str], days: _Days, totals: Totals) -> StatementLine:
        at = self._INDEX
        kind = fields[at["业务类型"]]
        amount = _column("订单金额（元）", parse_signed_yuan, fields[at["订单金额（元）"]])
        received = _column("商家实收（元）", parse_signed_yuan, fields[at["商家实收（元）"]])
        if kind == "退款":
            if amount >= 0:
                raise _ColumnError("订单金额（元）", "a 退款 line's amount must be negative")
            day = _day("完成时间", days, fields[at["完成时间"]], "YYYY-MM-DD hh:mm:ss")
            ref = _text("退款批次号/请求号", fields[at["退款批次号/请求号"]])
            self._count(totals, "refund", received)
            return StatementLine(
                0, RecordKind.REFUND, refund_key(ref), day, -amount, ChannelStatus.SUCCESS
            )
        status = self.KINDS.get(kind)
        if status is None:
            raise _ColumnError("业务类型", f"业务类型 {kind!r} is not 交易, 撤销 or 退款")
        if amount < 0:
            raise _ColumnError("订单金额（元）", f"negative amount on a {kind} line")
        day = _day("创建时间", days, fields[at["创建时间"]], "YYYY-MM-DD hh:mm:ss")
        reference = _text("支付宝交易号", fields[at["支付宝交易号"]])
        self._count(totals, "trade", received)
        return StatementLine(
            0, RecordKind.PAYMENT, payment_key(reference, day), day, amount, status
        )

    @staticmethod
    def _count(totals: Totals, what: str, received: int) -> None:
        totals.extra[what] = totals.extra.get(what, 0) + 1
        totals.extra[what + "_received"] = totals.extra.get(what + "_received", 0) + received

    def check_footer(self, footer: list[tuple[int, list[str]]], totals: Totals) -> None:
        seen: set[str] = set()
        for line, fields in footer:
            text = ",".join(fields)
            if not text.startswith("#"):
                raise _FooterError(line, "a data line after the end of the detail list")
            match = self._TOTAL.match(text)
            if match is None:
                continue
            kind = "trade" if match.group(1) == "交易" else "refund"
            seen.add(kind)
            count, received = int(match.group(2)), parse_signed_yuan(match.group(3))
            want_count = totals.extra.get(kind, 0)
            want_received = totals.extra.get(kind + "_received", 0)
            if (count, received) != (want_count, want_received):
                raise _FooterError(
                    line, f"{match.group(1)}合计 says {count} lines, ¥{_yuan(received)}; the "
                    f"lines add up to {want_count}, ¥{_yuan(want_received)}",
                )  # fmt: skip
        if seen != {"trade", "refund"}:
            last = footer[-1][0] if footer else totals.rows + 1
            raise _FooterError(last, "no #交易合计 / #退款合计 lines at the end (truncated file?)")


LAYOUTS: Final[dict[Channel, Layout]] = {
    Channel.UNIONPAY: UnionPayLayout(),
    Channel.WECHAT: WeChatLayout(),
    Channel.ALIPAY: AlipayLayout(),
}


def layout_for(channel: Channel) -> Layout:
    return LAYOUTS[channel]
