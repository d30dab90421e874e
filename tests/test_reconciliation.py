"""Reconciliation against real records, on SQLite and PostgreSQL: statements generated from
what the channel saw, with one injected difference of every class, each found exactly once;
re-imports change nothing; resolutions post balanced ledger entries once; the HTTP API."""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from shoudan.audit.models import AuditRecord
from shoudan.auth.domain import Principal, Role
from shoudan.benchmarks.reconcile import SeedPayment, seed_payments
from shoudan.core.clock import SHANGHAI
from shoudan.core.db import Database
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.ledger import chart
from shoudan.payments.domain import compose_rrn
from shoudan.payments.models import Payment
from shoudan.reconciliation.domain import (
    Channel,
    ChannelStatus,
    ExceptionClass,
    ExceptionStatus,
    RecordKind,
    Resolution,
    StatementError,
)
from shoudan.reconciliation.generate import ChannelTxn, write_statement
from shoudan.reconciliation.models import ReconciliationException, ReconciliationRun
from shoudan.reconciliation.service import (
    ExceptionFilters,
    ImportResult,
    ReconciliationService,
    StatementUpload,
)
from shoudan.refunds.models import Refund
from tests.payments_world import NOW
from tests.refunds_world import RefundWorld, build_refund_world

QR = {
    Channel.UNIONPAY: {},
    Channel.WECHAT: {"method": "wechat", "auth_code": "134567890123456789"},
    Channel.ALIPAY: {"method": "alipay", "auth_code": "284567890123456789"},
}
ENCODING = {Channel.UNIONPAY: "utf-8", Channel.WECHAT: "utf-8", Channel.ALIPAY: "gbk"}
FINANCE = Principal("key_finance_test", Role.FINANCE)


def _service(rw: RefundWorld) -> ReconciliationService:
    c = rw.world.container
    return ReconciliationService(c.database, c.ledger, c.clock)


def _reference(payment: Payment, channel: Channel) -> str:
    return payment.rrn if channel is Channel.UNIONPAY else payment.channel_reference or ""


def _channel_view(database: Database, channel: Channel) -> dict[str, ChannelTxn]:
    """What the channel saw, by our payment / refund id: it agrees with us on everything."""
    view: dict[str, ChannelTxn] = {}
    with database.read() as session:
        payments = {
            p.id: p for p in session.scalars(select(Payment).where(Payment.network == channel))
        }
        for p in payments.values():
            if p.status == "declined":
                continue  # no money moved: not on the statement
            status = ChannelStatus.SUCCESS if p.status == "captured" else ChannelStatus.VOIDED
            amount = p.captured_amount if p.status == "captured" else p.amount
            view[p.id] = ChannelTxn(
                RecordKind.PAYMENT, status, amount, p.created_at, _reference(p, channel), p.id
            )
        for r in session.scalars(select(Refund).where(Refund.network == channel)):
            original = _reference(payments[r.payment_id], channel)
            assert r.completed_at is not None
            view[r.id] = ChannelTxn(
                RecordKind.REFUND, ChannelStatus.SUCCESS, r.amount, r.completed_at, r.id,
                r.payment_id, original,
            )  # fmt: skip
    return view


def _statement(tmp_path: Path, channel: Channel, txns: list[ChannelTxn], name: str = "") -> Path:
    path = tmp_path / (name or f"{channel.value}-statement.csv")
    with path.open("w", encoding=ENCODING[channel], newline="") as out:
        write_statement(channel, txns, out)
    return path


def _import(rw: RefundWorld, path: Path, channel: Channel) -> ImportResult:
    return _service(rw).import_statement(FINANCE, StatementUpload(path, path.name, channel))


def _exceptions(rw: RefundWorld, run_id: str) -> list[ReconciliationException]:
    filters = ExceptionFilters(run_id=run_id)
    return _service(rw).list_exceptions(FINANCE, filters, 1000, None)


def _scenario(rw: RefundWorld, channel: Channel) -> dict[str, dict]:
    """Payments of yesterday (one refunded today), one voided today, one declined."""
    body = QR[channel]
    made = {
        name: rw.earlier_payment(days=1, amount=amount, **body)
        for name, amount in (
            ("match", 10_000), ("amount", 20_000), ("missing", 30_000), ("status", 40_000),
            ("refunded", 50_000),
        )
    }  # fmt: skip
    made["voided"] = rw.world.pay(amount=5_000, **body)
    voided = rw.client.post(
        f"/v1/payments/{made['voided']['id']}/void", headers=rw.headers("a")
    )
    assert voided.status_code == 200, voided.text
    declined = {**body, "auth_code": "134567890123456751"} if body else {
        "card": {"pan": "6222020000000000513", "expiry": "2912", "pin": "123456",
                 "entry_mode": "chip"}
    }  # fmt: skip
    if channel is not Channel.ALIPAY:
        assert rw.world.pay(amount=700, **declined)["status"] == "declined"
    made["refund"] = rw.refund(payment_id=made["refunded"]["id"], amount=10_000)
    rw.run_worker()
    assert rw.get(made["refund"]["id"])["status"] == "succeeded"
    return made


def _inject(view: dict[str, ChannelTxn], made: dict[str, dict], channel: Channel) -> list:
    """One difference of every class (and one 长款 refund)."""
    txns = dict(view)
    amount = txns[made["amount"]["id"]]
    txns[made["amount"]["id"]] = ChannelTxn(
        amount.kind, amount.status, amount.amount - 100, amount.at, amount.reference
    )
    status = txns[made["status"]["id"]]
    txns[made["status"]["id"]] = ChannelTxn(
        status.kind, ChannelStatus.VOIDED, status.amount, status.at, status.reference
    )
    del txns[made["missing"]["id"]]
    yesterday = NOW - timedelta(days=1)
    extra_ref = "263269999999" if channel is Channel.UNIONPAY else "999999999999"
    extra = ChannelTxn(RecordKind.PAYMENT, ChannelStatus.SUCCESS, 8_800, yesterday, extra_ref)
    stray_refund = ChannelTxn(
        RecordKind.REFUND, ChannelStatus.SUCCESS, 1_000, NOW, "rfd_unknown", "", extra_ref
    )
    return [*txns.values(), extra, stray_refund]


@pytest.mark.parametrize("channel", list(Channel))
def test_every_class_of_difference_is_found_exactly_once(
    database: Database, tmp_path: Path, channel: Channel
) -> None:
    rw = build_refund_world(database, tmp_path)
    made = _scenario(rw, channel)
    txns = _inject(_channel_view(database, channel), made, channel)
    result = _import(rw, _statement(tmp_path, channel, txns), channel)
    run = result.run
    assert result.created
    found = Counter(
        (e.exception_class, e.our_ref or e.match_key, e.amount_difference)
        for e in _exceptions(rw, run.id)
    )
    day = (NOW - timedelta(days=1)).astimezone(SHANGHAI).date().isoformat()
    extra_ref = "263269999999" if channel is Channel.UNIONPAY else "999999999999"
    assert found == Counter({
        (ExceptionClass.AMOUNT_MISMATCH, made["amount"]["id"], -100): 1,
        (ExceptionClass.STATUS_MISMATCH, made["status"]["id"], -40_000): 1,
        (ExceptionClass.MISSING_IN_CHANNEL, made["missing"]["id"], -30_000): 1,
        (ExceptionClass.MISSING_IN_OURS, f"P|{extra_ref}|{day}", 8_800): 1,
        (ExceptionClass.MISSING_IN_OURS, "R|rfd_unknown", -1_000): 1,
    })  # fmt: skip
    assert (run.matched, run.missing_in_ours, run.missing_in_channel) == (4, 2, 1)
    assert (run.amount_mismatch, run.status_mismatch) == (1, 1)
    assert (run.period_start, run.period_end) == ("2026-11-22", "2026-11-23")
    assert run.statement_lines == 8
    assert run.statement_net - run.our_net == run.net_difference == -62_300
    assert run.encoding == ("gbk" if channel is Channel.ALIPAY else "utf-8")


def test_reimporting_the_same_file_changes_nothing(database: Database, tmp_path: Path) -> None:
    rw = build_refund_world(database, tmp_path)
    made = _scenario(rw, Channel.UNIONPAY)
    path = _statement(
        tmp_path, Channel.UNIONPAY, _inject(_channel_view(database, Channel.UNIONPAY), made,
                                            Channel.UNIONPAY),
    )  # fmt: skip
    first = _import(rw, path, Channel.UNIONPAY)

    def state() -> tuple:
        with database.read() as session:
            return (
                session.scalar(select(func.count()).select_from(ReconciliationRun)),
                session.scalar(select(func.count()).select_from(ReconciliationException)),
                session.scalar(select(func.count()).select_from(AuditRecord)),
            )

    before = state()
    copy = tmp_path / "renamed.csv"
    copy.write_bytes(path.read_bytes())
    again = _import(rw, copy, Channel.UNIONPAY)
    assert (again.created, again.run.id) == (False, first.run.id)
    assert state() == before


def test_resolutions_post_balanced_entries_once(database: Database, tmp_path: Path) -> None:
    rw = build_refund_world(database, tmp_path)
    made = _scenario(rw, Channel.UNIONPAY)
    txns = _inject(_channel_view(database, Channel.UNIONPAY), made, Channel.UNIONPAY)
    run = _import(rw, _statement(tmp_path, Channel.UNIONPAY, txns), Channel.UNIONPAY).run
    by_class = {}
    for e in _exceptions(rw, run.id):
        by_class.setdefault(e.exception_class, []).append(e)
    ledger, service = rw.world.container.ledger, _service(rw)
    receivable = chart.channel_receivable("unionpay")

    before = ledger.account(receivable).balance
    mismatch = by_class[ExceptionClass.AMOUNT_MISMATCH][0]
    resolved, _ = service.resolve(FINANCE, mismatch.id, Resolution.ADJUST, note="short by ¥1")
    assert resolved.ledger_entry_id == f"reconciliation:{mismatch.id}"
    assert ledger.account(receivable).balance == before - 100
    assert ledger.account(chart.RECONCILIATION_SUSPENSE).credit_balance == -100
    with pytest.raises(DomainError) as again:
        service.resolve(FINANCE, mismatch.id, Resolution.ADJUST)
    assert again.value.code is ErrorCode.EXCEPTION_ALREADY_RESOLVED

    surplus, stray_refund = sorted(
        by_class[ExceptionClass.MISSING_IN_OURS], key=lambda e: e.record_kind
    )
    with pytest.raises(DomainError, match="needs a reason"):
        service.resolve(FINANCE, surplus.id, Resolution.WRITE_OFF)
    service.resolve(FINANCE, surplus.id, Resolution.WRITE_OFF, reason="below follow-up limit")
    assert ledger.account(chart.RECONCILIATION_WRITE_OFF_GAIN).credit_balance == 8_800
    service.resolve(FINANCE, stray_refund.id, Resolution.WRITE_OFF, reason="network fee")
    assert ledger.account(chart.RECONCILIATION_WRITE_OFF_LOSS).balance == 1_000
    assert ledger.account(chart.channel_payable("unionpay")).credit_balance >= 1_000

    status = by_class[ExceptionClass.STATUS_MISMATCH][0]
    service.add_note(FINANCE, status.id, "asked UnionPay for the void's trace")
    done, notes = service.resolve(FINANCE, status.id, Resolution.MARK_RESOLVED, note="timing")
    assert (done.status, done.ledger_entry_id) == ("resolved", None)
    assert [n.text for n in notes] == ["asked UnionPay for the void's trace", "timing"]
    open_left = service.list_exceptions(FINANCE, ExceptionFilters(ExceptionStatus.OPEN), 100, None)
    assert [e.exception_class for e in open_left] == [ExceptionClass.MISSING_IN_CHANNEL]
    assert ledger.verify().ok
    with pytest.raises(DomainError) as merchant:
        service.resolve(Principal("k", Role.MERCHANT, rw.world.merchant_a), status.id,
                        Resolution.MARK_RESOLVED)  # fmt: skip
    assert merchant.value.code is ErrorCode.FORBIDDEN
    with database.read() as session:
        actions = set(session.scalars(select(AuditRecord.action)))
    assert {"reconciliation.imported", "reconciliation.adjust", "reconciliation.write_off",
            "reconciliation.mark_resolved", "reconciliation.note_added"} <= actions  # fmt: skip


def test_a_bad_statement_writes_nothing(database: Database, tmp_path: Path) -> None:
    rw = build_refund_world(database, tmp_path)
    made = _scenario(rw, Channel.WECHAT)
    txns = list(_channel_view(database, Channel.WECHAT).values())
    path = _statement(tmp_path, Channel.WECHAT, [*txns, txns[2]])
    with pytest.raises(StatementError) as caught:
        _import(rw, path, Channel.WECHAT)
    assert caught.value.details["line"] == len(txns) + 2
    assert "duplicates line 4 (the same transaction" in caught.value.message
    with database.read() as session:
        assert session.scalar(select(func.count()).select_from(ReconciliationRun)) == 0
        assert session.scalar(select(func.count()).select_from(ReconciliationException)) == 0
    assert made


# -- generated statements --------------------------------------------------------------------
def _seeded(channel: Channel, count: int, rng: random.Random) -> list[SeedPayment]:
    day = (NOW - timedelta(days=1)).astimezone(SHANGHAI).date()
    network = channel.value
    method = "card" if channel is Channel.UNIONPAY else channel.value
    statuses = ["captured", "captured", "captured", "voided", "declined"]
    return [
        SeedPayment(
            f"pay_gen{n:06d}", compose_rrn(day, n + 1), f"{700000000000 + n}", day.isoformat(),
            rng.choice(statuses), rng.randrange(1, 1_000_000), network, method,
            NOW - timedelta(days=1),
        )
        for n in range(count)
    ]


@pytest.mark.parametrize("channel", list(Channel))
def test_generated_statements_with_injected_differences(
    database: Database, tmp_path: Path, channel: Channel
) -> None:
    rw = build_refund_world(database, tmp_path)
    rng = random.Random(list(Channel).index(channel))
    seeded = _seeded(channel, 200, rng)
    seed_payments(database, rw.world.merchant_a, rw.world.terminal_a, seeded)
    expected: Counter[tuple[str, str]] = Counter()
    txns: list[ChannelTxn] = []
    for n, p in enumerate(seeded):
        reference = p.rrn if channel is Channel.UNIONPAY else p.channel_reference
        if p.status == "declined":
            continue
        status = ChannelStatus.SUCCESS if p.status == "captured" else ChannelStatus.VOIDED
        txn = ChannelTxn(RecordKind.PAYMENT, status, p.amount, p.created_at, reference, p.id)
        roll = rng.random()
        if roll < 0.05:
            expected[(ExceptionClass.MISSING_IN_CHANNEL, p.id)] += 1
            continue
        if roll < 0.10:
            txn = ChannelTxn(txn.kind, txn.status, txn.amount + rng.randrange(1, 500), txn.at,
                             reference)  # fmt: skip
            expected[(ExceptionClass.AMOUNT_MISMATCH, p.id)] += 1
        elif roll < 0.15 and status is ChannelStatus.SUCCESS:
            txn = ChannelTxn(txn.kind, ChannelStatus.VOIDED, txn.amount, txn.at, reference)
            expected[(ExceptionClass.STATUS_MISMATCH, p.id)] += 1
        elif roll < 0.20:
            ghost = f"{800000000000 + n}" if channel is not Channel.UNIONPAY else (
                p.rrn[:5] + f"8{n:06d}")  # fmt: skip
            txns.append(ChannelTxn(RecordKind.PAYMENT, ChannelStatus.SUCCESS, 4_321, txn.at,
                                   ghost))  # fmt: skip
            expected[(ExceptionClass.MISSING_IN_OURS, f"P|{ghost}|{p.business_date}")] += 1
        txns.append(txn)
    rng.shuffle(txns)
    run = _import(rw, _statement(tmp_path, channel, txns), channel).run
    found = Counter((e.exception_class, e.our_ref or e.match_key) for e in _exceptions(rw, run.id))
    assert found == expected
    assert all(count == 1 for count in found.values())
    assert run.matched == len(txns) - sum(
        1 for cls, _ in expected if cls is ExceptionClass.MISSING_IN_OURS
    ) - sum(1 for cls, _ in expected if cls in (ExceptionClass.AMOUNT_MISMATCH,
                                                ExceptionClass.STATUS_MISMATCH))  # fmt: skip


# -- HTTP --------------------------------------------------------------------------------------
def test_http_upload_summary_queue_and_resolve(database: Database, tmp_path: Path) -> None:
    rw = build_refund_world(database, tmp_path)
    made = _scenario(rw, Channel.ALIPAY)
    path = _statement(tmp_path, Channel.ALIPAY,
                      _inject(_channel_view(database, Channel.ALIPAY), made, Channel.ALIPAY))
    finance = rw.headers("finance")

    def upload(headers: dict, data: bytes, channel: str = "alipay", **form: str):
        return rw.client.post(
            "/v1/reconciliations", headers=headers,
            data={"channel": channel, **form}, files={"file": ("alipay-1123.csv", data)},
        )  # fmt: skip

    raw = path.read_bytes()
    assert upload(rw.headers("a"), raw).status_code == 403
    created = upload(finance, raw)
    assert created.status_code == 201, created.text
    run = created.json()
    assert run["counts"] == {"matched": 4, "missing_in_ours": 2, "missing_in_channel": 1,
                             "amount_mismatch": 1, "status_mismatch": 1}  # fmt: skip
    again = upload(finance, raw)
    assert (again.status_code, again.json()["id"]) == (200, run["id"])
    assert rw.client.get(f"/v1/reconciliations/{run['id']}", headers=finance).json() == run
    assert rw.client.get("/v1/reconciliations/rcn_nope", headers=finance).status_code == 404

    queue = rw.client.get("/v1/reconciliation-exceptions?status=open&limit=2", headers=finance)
    assert queue.status_code == 200
    page = queue.json()
    assert len(page["data"]) == 2 and page["next_cursor"]
    rest = rw.client.get(
        f"/v1/reconciliation-exceptions?status=open&cursor={page['next_cursor']}", headers=finance
    ).json()["data"]
    items = page["data"] + rest
    assert len(items) == 5
    mismatch = next(e for e in items if e["exception_class"] == "amount_mismatch")
    assert mismatch["their_values"]["业务类型"] == "交易"
    assert mismatch["their_line"] is not None

    resolve = f"/v1/reconciliation-exceptions/{mismatch['id']}/resolve"
    done = rw.client.post(resolve, json={"action": "adjust", "note": "checked"}, headers=finance)
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["notes"][0]["text"]) == ("resolved", "checked")
    twice = rw.client.post(resolve, json={"action": "adjust"}, headers=finance)
    assert (twice.status_code, twice.json()["code"]) == (409, "exception_already_resolved")
    left = rw.client.get("/v1/reconciliation-exceptions?status=open", headers=finance).json()
    assert len(left["data"]) == 4

    bad = upload(finance, raw.replace(",交易,".encode("gbk"), ",退货,".encode("gbk"), 1))
    assert (bad.status_code, bad.json()["code"]) == (422, "statement_invalid")
    assert (bad.json()["file"], bad.json()["line"]) == ("alipay-1123.csv", 5)
    assert bad.json()["column_name"] == "业务类型"
    wrong = upload(finance, raw, "wechat")
    assert wrong.json()["code"] == "statement_invalid" and wrong.json()["line"] == 1
    outside = upload(finance, raw + b"\n", period_start="2026-11-23")
    assert "outside the run" in outside.json()["detail"]


# -- CLI ---------------------------------------------------------------------------------------
def test_cli_reconciles_a_file_and_prints_the_summary(
    sqlite_database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from shoudan.cli.main import app as cli

    monkeypatch.setenv("SHOUDAN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SHOUDAN_SECRET_KEY", "11" * 32)
    rw = build_refund_world(sqlite_database, tmp_path)
    made = _scenario(rw, Channel.UNIONPAY)
    view = _channel_view(sqlite_database, Channel.UNIONPAY)
    path = _statement(tmp_path, Channel.UNIONPAY, _inject(view, made, Channel.UNIONPAY))
    args = ["reconcile", str(path), "--channel", "unionpay", "--key", rw.staff["finance"],
            "--database-url", sqlite_database.url]  # fmt: skip
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "missing in ours (长款)" in first.output and "-¥623.00" in first.output
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "already imported" in again.output
    merchant = CliRunner().invoke(cli, [*args[:4], "--key", rw.world.key_a, *args[6:]])
    assert merchant.exit_code != 0


# -- the benchmark's seeding -------------------------------------------------------------------
def test_the_benchmarks_sql_seeding_writes_what_the_orm_path_writes(
    sqlite_database: Database, tmp_path: Path
) -> None:
    from shoudan.benchmarks.reconcile import _payments, seed_generated_payments

    rw = build_refund_world(sqlite_database, tmp_path)
    merchant, terminal = rw.world.merchant_a, rw.world.terminal_a

    def seeded() -> list[tuple]:
        with sqlite_database.transaction() as session:
            connection = session.connection()
            query = "SELECT * FROM payments WHERE id LIKE 'pay_bench%' ORDER BY id"
            rows = [tuple(row) for row in connection.exec_driver_sql(query)]
            connection.exec_driver_sql("DELETE FROM payments WHERE id LIKE 'pay_bench%'")
        return rows

    seed_generated_payments(sqlite_database, merchant, terminal, 1_003)
    by_sql = seeded()
    seed_payments(sqlite_database, merchant, terminal, _payments(1_003))
    assert by_sql == seeded()
    assert len(by_sql) == 1_003
