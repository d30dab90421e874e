"""Statement layouts without a database: each layout reads what ``generate`` writes, detects
UTF-8 and GBK, and refuses bad input with the file, line and column."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from shoudan.core.errors import ErrorCode
from shoudan.reconciliation import source, statement
from shoudan.reconciliation.domain import (
    Channel,
    ChannelStatus,
    Period,
    RecordKind,
    Resolution,
    StatementError,
    check_resolution,
    money_effect,
)
from shoudan.reconciliation.generate import ChannelTxn, write_statement
from shoudan.reconciliation.layouts import Reader, StatementLine, layout_for
from shoudan.reconciliation.matching import Matcher

AT = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
TXNS = [
    ChannelTxn(RecordKind.PAYMENT, ChannelStatus.SUCCESS, 10_000, AT, "263270000001", "pay_1"),
    ChannelTxn(RecordKind.PAYMENT, ChannelStatus.VOIDED, 500, AT, "263270000002", "pay_2"),
    ChannelTxn(RecordKind.REFUND, ChannelStatus.SUCCESS, 300, AT, "rfd_1", "pay_1", "263270000001"),
]


def _write(tmp_path: Path, channel: Channel, encoding: str = "utf-8", txns=TXNS) -> Path:
    path = tmp_path / f"{channel.value}.csv"
    with path.open("w", encoding=encoding, newline="") as out:
        write_statement(channel, txns, out)
    return path


def _read(path: Path, channel: Channel, period: Period | None = None) -> list[StatementLine]:
    """The statement as DuckDB validates and normalises it (statement.load)."""
    scan = source.scan(path, path.name)
    scratch = path.parent / "scratch"
    scratch.mkdir(exist_ok=True)
    with Matcher(scratch) as matcher:
        text = source.utf8_copy(path, scan.encoding, scratch)
        statement.load(matcher.db, text, path.name, layout_for(channel), period)
        rows = matcher.db.execute(
            "SELECT line, kind, key, day, amount, status FROM theirs ORDER BY line"
        ).fetchall()
    return [StatementLine(*row) for row in rows]


def _error(path: Path, channel: Channel, period: Period | None = None) -> StatementError:
    with pytest.raises(StatementError) as caught:
        _read(path, channel, period)
    assert caught.value.code is ErrorCode.STATEMENT_INVALID
    return caught.value


def _edit(path: Path, old: str, new: str, encoding: str = "utf-8") -> None:
    text = path.read_text(encoding=encoding)
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding=encoding)


@pytest.mark.parametrize("channel", list(Channel))
@pytest.mark.parametrize("encoding", ["utf-8", "gbk"])
def test_every_layout_reads_what_the_channel_writes_in_either_encoding(
    tmp_path: Path, channel: Channel, encoding: str
) -> None:
    path = _write(tmp_path, channel, encoding)
    ascii_only = channel is Channel.UNIONPAY  # ASCII is valid UTF-8: reported as such
    assert source.scan(path, path.name).encoding == ("utf-8" if ascii_only else encoding)
    lines = _read(path, channel, Period(date(2026, 11, 23), date(2026, 11, 23)))
    assert [(x.kind, x.key, x.day, x.amount, x.status) for x in lines] == [
        ("payment", "P|263270000001|2026-11-23", "2026-11-23", 10_000, "success"),
        ("payment", "P|263270000002|2026-11-23", "2026-11-23", 500, "voided"),
        ("refund", "R|rfd_1", "2026-11-23", 300, "success"),
    ]


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = _write(tmp_path, Channel.WECHAT, "utf-8-sig")
    assert len(_read(path, Channel.WECHAT)) == 3


def test_text_in_neither_encoding_is_refused_with_its_place(tmp_path: Path) -> None:
    path = _write(tmp_path, Channel.UNIONPAY)
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2][:9] + b"\xff\xff" + lines[2][9:]
    path.write_bytes(b"\n".join(lines))
    error = _error(path, Channel.UNIONPAY)
    assert (error.details["line"], error.details["column"]) == (3, 10)
    assert "neither UTF-8 nor GBK" in error.message


def test_a_nul_byte_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, Channel.UNIONPAY)
    path.write_bytes(path.read_bytes().replace(b"sale", b"sa\x00e", 1))
    assert _error(path, Channel.UNIONPAY).details["line"] == 2


def test_a_wrong_layout_names_the_missing_columns(tmp_path: Path) -> None:
    path = _write(tmp_path, Channel.WECHAT)
    error = _error(path, Channel.UNIONPAY)
    assert error.details["line"] == 1
    assert "not the unionpay layout; missing column(s): settle_date" in error.message
    assert str(path.name) in error.message


def test_a_negative_amount_names_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, Channel.UNIONPAY)
    _edit(path, ",sale,10000,", ",sale,-10000,")
    error = _error(path, Channel.UNIONPAY)
    assert (error.details["line"], error.details["column"]) == (2, 8)
    assert error.details["column_name"] == "amount_fen"
    assert "unionpay.csv: line 2, column 8 (amount_fen): negative amount" in error.message


def test_a_negative_yuan_amount_on_a_wechat_sale_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, Channel.WECHAT)
    _edit(path, "`100.00,`0.00,`,`,`0.00", "`-100.00,`0.00,`,`,`0.00")
    _edit(path, "`0.38%,`100.00,", "`0.38%,`-100.00,")
    error = _error(path, Channel.WECHAT)
    assert (error.details["line"], error.details["column_name"]) == (2, "订单金额")


def test_an_alipay_refund_must_be_negative_and_a_trade_positive(tmp_path: Path) -> None:
    path = _write(tmp_path, Channel.ALIPAY, "gbk")
    _edit(path, ",-3.00,-3.00,", ",3.00,-3.00,", "gbk")
    error = _error(path, Channel.ALIPAY)
    assert (error.details["line"], error.details["column_name"]) == (7, "订单金额（元）")


def test_a_date_outside_the_run_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, Channel.WECHAT)
    period = Period(date(2026, 11, 22), date(2026, 11, 22))
    error = _error(path, Channel.WECHAT, period)
    assert (error.details["line"], error.details["column"]) == (2, 1)
    assert "outside the run (2026-11-22 to 2026-11-22)" in error.message


def test_an_unmasked_card_number_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, Channel.UNIONPAY)
    _edit(path, "622202******0018", "6222020000000000018")
    assert _error(path, Channel.UNIONPAY).details["column_name"] == "card_no"


def test_a_truncated_wechat_bill_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, Channel.WECHAT)
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: text.index("总交易单数")], encoding="utf-8")
    assert "truncated" in _error(path, Channel.WECHAT).message


def test_wechat_totals_must_add_up(tmp_path: Path) -> None:
    path = _write(tmp_path, Channel.WECHAT)
    _edit(path, "`3,`105.00", "`4,`105.00")
    error = _error(path, Channel.WECHAT)
    assert (error.details["line"], error.details["column_name"]) == (6, "交易时间")
    assert "总交易单数 says 4, the lines add up to 3" in error.message


def test_alipay_totals_must_add_up(tmp_path: Path) -> None:
    path = _write(tmp_path, Channel.ALIPAY)
    _edit(path, "#交易合计：2笔", "#交易合计：3笔")
    assert "交易合计 says 3 lines" in _error(path, Channel.ALIPAY).message


def test_a_short_line_and_an_unknown_type_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, Channel.UNIONPAY)
    _edit(path, ",622202******0018,\n", "\n")
    assert "line 2: 9 values where the header has 11" in _error(path, Channel.UNIONPAY).message
    path = _write(tmp_path, Channel.UNIONPAY)
    _edit(path, ",void,", ",chargeback,")
    error = _error(path, Channel.UNIONPAY)
    assert (error.details["line"], error.details["column_name"]) == (3, "txn_type")


def test_an_empty_statement_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, Channel.UNIONPAY, txns=[])
    assert "no transaction lines" in _error(path, Channel.UNIONPAY).message


def test_money_effect_and_resolution_rules() -> None:
    assert money_effect(RecordKind.PAYMENT, "success", 100) == 100
    assert money_effect(RecordKind.REFUND, "success", 100) == -100
    assert money_effect(RecordKind.PAYMENT, "voided", 100) == 0
    with pytest.raises(Exception, match="write-off needs a reason"):
        check_resolution("open", Resolution.WRITE_OFF, 5, "  ")
    with pytest.raises(Exception, match="use mark_resolved"):
        check_resolution("open", Resolution.ADJUST, 0, None)
    with pytest.raises(Exception, match="resolved"):
        check_resolution("resolved", Resolution.MARK_RESOLVED, 0, None)
    check_resolution("open", Resolution.MARK_RESOLVED, 0, None)


def test_the_sql_money_effect_agrees_with_the_domain(tmp_path: Path) -> None:
    from shoudan.reconciliation.matching import Matcher

    rows = [(kind.value, status.value, 700) for kind in RecordKind for status in ChannelStatus]
    with Matcher(tmp_path) as matcher:
        matcher.db.execute("CREATE TABLE t (kind VARCHAR, status VARCHAR, amount BIGINT)")
        matcher.db.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
        from shoudan.reconciliation.matching import _effect

        got = matcher.db.execute(f"SELECT kind, status, {_effect('t')} FROM t").fetchall()
    assert {(k, s): e for k, s, e in got} == {
        (k, s): money_effect(RecordKind(k), s, a) for k, s, a in rows
    }


MUTATIONS = ["", "-5", "x", " 12.00 ", "０", "1" * 16, "-0.00", '"a,""b"""', "6222020000000000018"]
FIRST_DATA_LINE = {Channel.UNIONPAY: 2, Channel.WECHAT: 2, Channel.ALIPAY: 5}


@pytest.mark.parametrize("channel", list(Channel))
def test_the_sql_and_python_rules_agree_on_every_column(tmp_path: Path, channel: Channel) -> None:
    """Every value of a data line replaced by odd text, one line per case: DuckDB's ``ok``
    agrees with the Python rules on every line (which then explain a refusal)."""
    import csv
    import io

    import duckdb

    layout = layout_for(channel)
    good = _write(tmp_path, channel).read_text(encoding="utf-8").split("\n")
    good = good[FIRST_DATA_LINE[channel] - 1]
    cases = [",".join(layout.columns)]  # line 1: the header
    for column in range(len(layout.columns)):
        for mutation in MUTATIONS:
            values = next(csv.reader([good]))
            values[column] = mutation
            out = io.StringIO()
            csv.writer(out, lineterminator="").writerow(values)
            cases.append(out.getvalue())
    path = tmp_path / "cases.csv"
    path.write_text("\n".join(cases), encoding="utf-8")
    reader = Reader(path.name, layout, None)
    with duckdb.connect(config={"threads": 1, "preserve_insertion_order": True}) as db:
        statement.read_lines(db, path)
        statement.normalise(db, layout, None, 1, len(cases) + 1)
        sql_ok = dict(db.execute("SELECT line, ok FROM theirs").fetchall())
    python_ok = {
        n: reader.line_error(n, source.parse_line(text)) is None
        for n, text in enumerate(cases[1:], start=2)
    }
    assert sql_ok == python_ok
    assert 0 < sum(python_ok.values()) < len(python_ok)


def test_padding_and_quotes_are_read_like_the_csv_module(tmp_path: Path) -> None:
    path = _write(tmp_path, Channel.UNIONPAY)
    _edit(path, ",263270000001,sale,10000,", ',"263270000001",sale,"10000",')
    _edit(path, ",263270000002,void,", ", 263270000002\t,void,")
    assert [(x.key, x.amount) for x in _read(path, Channel.UNIONPAY)][:2] == [
        ("P|263270000001|2026-11-23", 10_000), ("P|263270000002|2026-11-23", 500)
    ]
    _edit(path, ',"263270000001",', ',"26327"0000001",')
    assert "not valid CSV" in _error(path, Channel.UNIONPAY).message
