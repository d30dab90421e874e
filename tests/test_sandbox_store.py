"""The sandbox's own books: one network shared by every process through its SQLite file
(authorise in one process, refund in another; concurrent refunds from two processes never
exceed the captured amount), the container's wiring, no card or account number in clear, and
the sandbox bank's rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shoudan.channels.bank import (
    ACCOUNT_CLOSED,
    ACCOUNT_INVALID,
    ACCOUNT_SUCCEEDS,
    SandboxBank,
)
from shoudan.channels.domain import BankTransfer, RefundStatus, TransferResult, TransferStatus
from shoudan.channels.sandbox import (
    PAN_APPROVE_DEBIT,
    PAN_CARD_CLOSED,
    PAN_FLAKY_REFUND,
    PAN_OPEN_TO_BUY,
    SandboxChannel,
)
from shoudan.channels.store import MemoryStore, SqliteStore, open_store
from shoudan.container import Container
from shoudan.core.clock import FixedClock
from shoudan.core.config import Settings
from shoudan.core.crypto import Vault
from shoudan.core.db import Database
from shoudan.core.errors import DomainError, ErrorCode
from tests.test_channels import NOW, PIN, STORES, open_test_store, sale

HOLDER = "王小明"
BANK = "中国工商银行"


def network(path: Path) -> SandboxChannel:
    """One process's view of the sandbox network in the file at ``path``."""
    return SandboxChannel(timeout_seconds=0.01, clock=FixedClock(NOW), store=SqliteStore(path))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "sandbox-network.sqlite3"


# -- one network across processes ------------------------------------------------------------
def test_two_channels_over_one_file_are_one_network(path: Path) -> None:
    serve, worker = network(path), network(path)
    approved = sale(serve, PAN_APPROVE_DEBIT, 10_000, reference="X1")
    assert approved.approved
    assert worker.query("X1") == serve.query("X1")
    assert worker.refund("X1", "RF1", 4_000).succeeded
    assert serve.query_refund("X1", "RF1") == worker.query_refund("X1", "RF1")
    assert serve.refund("X1", "RF2", 6_001).reason == "exceeds_captured"
    assert serve.void("X1").response_code == "12"  # refunded at the other process
    # idempotency on the reference holds across processes too
    assert sale(worker, PAN_APPROVE_DEBIT, 10_000, reference="X1") == approved
    assert sale(worker, PAN_APPROVE_DEBIT, 9_999, reference="X1").response_code == "94"
    # a reversal seen by one process refuses the late original at the other
    assert serve.reverse("X-lost").approved
    assert sale(worker, PAN_APPROVE_DEBIT, reference="X-lost").response_code == "12"


def test_transient_refund_retried_by_another_process(path: Path) -> None:
    serve, worker = network(path), network(path)
    sale(serve, PAN_FLAKY_REFUND, 5_000, reference="X2")
    assert worker.refund("X2", "RF", 5_000).status is RefundStatus.FAILED_TRANSIENT
    queried = serve.query_refund("X2", "RF")
    assert queried is not None and queried.status is RefundStatus.FAILED_TRANSIENT
    assert serve.refund("X2", "RF", 5_000).succeeded
    queried = worker.query_refund("X2", "RF")
    assert queried is not None and queried.succeeded


def test_open_to_buy_is_shared_through_the_file(path: Path) -> None:
    first, second = network(path), network(path)
    assert sale(first, PAN_OPEN_TO_BUY, 60_000, reference="OTB-1").approved
    assert second.open_to_buy_remaining() == 40_000
    assert sale(second, PAN_OPEN_TO_BUY, 40_001).response_code == "51"
    assert second.void("OTB-1").approved
    assert first.open_to_buy_remaining() == 100_000
    assert network(path).open_to_buy_remaining() == 100_000  # a restart keeps the books


_REFUNDER = """
import sys
from pathlib import Path
from shoudan.channels.sandbox import SandboxChannel
from shoudan.channels.store import SqliteStore

path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
channel = SandboxChannel(store=SqliteStore(Path(path)))
print("ready", flush=True)
sys.stdin.readline()  # both processes start together
for i in range(count):
    for refund_reference in (f"RF-shared-{i}", f"RF-{name}-{i}"):
        result = channel.refund("MP", refund_reference, 100)
        print(refund_reference, result.status.value, result.reason or "-")
"""


def start_refunder(path: Path, name: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _REFUNDER, str(path), name, str(count)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_concurrent_refunds_from_two_processes_never_exceed_the_captured_amount(
    path: Path,
) -> None:
    """Two processes race 400 refunds of ¥1.00 on a ¥200.00 payment, 200 of them with the
    same refund references (300 distinct): exactly ¥200.00 is refunded, nothing is lost, and
    both processes agree on every shared one."""
    channel = network(path)
    assert sale(channel, PAN_APPROVE_DEBIT, 20_000, reference="MP").approved
    processes = [start_refunder(path, name, count=100) for name in ("a", "b")]
    for process in processes:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
    for process in processes:  # both are ready: let them go at once
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    answers: dict[str, set[str]] = {}
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        for line in out.splitlines():
            refund_reference, status, reason = line.split()
            assert reason in {"-", "exceeds_captured"}, line
            answers.setdefault(refund_reference, set()).add(status)
    assert len(answers) == 300
    assert all(len(statuses) == 1 for statuses in answers.values())  # shared ones agree
    succeeded = [ref for ref, statuses in answers.items() if statuses == {"succeeded"}]
    assert len(succeeded) * 100 == 20_000
    for refund_reference in answers:  # the books say the same as the answers
        recorded = channel.query_refund("MP", refund_reference)
        assert (recorded is not None) is (refund_reference in succeeded)


# -- the stores --------------------------------------------------------------------------------
def test_the_file_keeps_one_token_key(path: Path) -> None:
    assert SqliteStore(path).token_key == SqliteStore(path).token_key
    assert len(SqliteStore(path).token_key) == 32
    assert MemoryStore().token_key != MemoryStore().token_key


def test_open_store(tmp_path: Path) -> None:
    assert isinstance(open_store(":memory:"), MemoryStore)
    nested = tmp_path / "a" / "b" / "sandbox.sqlite3"
    store = open_store(nested)
    assert isinstance(store, SqliteStore) and nested.exists()


@pytest.mark.parametrize("kind", STORES)
def test_a_session_that_raises_changes_nothing(kind: str, tmp_path: Path) -> None:
    store = open_test_store(kind, tmp_path)
    with store.session() as session:
        session.put("k", "kept", "1")
    with pytest.raises(RuntimeError), store.session() as session:
        session.put("k", "dropped", "1")
        assert session.get("k", "dropped") == "1"  # a session reads its own writes
        raise RuntimeError
    assert store.records() == [("k", "kept", "1")]


def test_the_file_holds_no_card_or_account_number(path: Path) -> None:
    channel = network(path)
    pans = (PAN_APPROVE_DEBIT, PAN_OPEN_TO_BUY, PAN_CARD_CLOSED, PAN_FLAKY_REFUND)
    for i, pan in enumerate(pans):
        sale(channel, pan, 1_000, pin=PIN, reference=f"KEEP-{i}")
        channel.refund(f"KEEP-{i}", f"KEEP-RF-{i}", 100)
    bank = SandboxBank(store=channel.store)
    bank.transfer("KEEP-T", ACCOUNT_SUCCEEDS, HOLDER, BANK, 100)
    files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
    stored = b"".join(p.read_bytes() for p in files)
    assert b"KEEP-RF-3" in stored  # the books are in these files
    for number in (*pans, ACCOUNT_SUCCEEDS):
        assert number.encode() not in stored
        assert number[-10:].encode() not in stored
    assert HOLDER.encode() not in stored and BANK.encode() not in stored


# -- the container -----------------------------------------------------------------------------
def container(database: Database, tmp_path: Path, **settings: str) -> Container:
    config = Settings(data_dir=tmp_path, secret_key="11" * 32, **settings)  # type: ignore[arg-type]
    return Container(config, database, Vault.from_master(b"\x11" * 32), FixedClock(NOW))


def test_containers_share_the_sandbox_file(sqlite_database: Database, tmp_path: Path) -> None:
    serve = container(sqlite_database, tmp_path, sandbox_state_path="")
    worker = container(sqlite_database, tmp_path, sandbox_state_path="")
    assert isinstance(serve.channel, SandboxChannel) and isinstance(worker.channel, SandboxChannel)
    assert isinstance(serve.bank, SandboxBank)
    assert serve.bank.store is serve.channel.store  # one file for the network and the bank
    store = serve.channel.store
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "sandbox-network.sqlite3"
    sale(serve.channel, PAN_APPROVE_DEBIT, 10_000, reference="C1")
    assert worker.channel.refund("C1", "RF", 10_000).succeeded


def test_tests_and_memory_setting_keep_the_books_in_memory(
    sqlite_database: Database, tmp_path: Path
) -> None:
    for built in (
        container(sqlite_database, tmp_path),  # conftest sets SHOUDAN_SANDBOX_STATE_PATH
        container(sqlite_database, tmp_path, sandbox_state_path=":memory:"),
    ):
        assert isinstance(built.channel, SandboxChannel)
        assert isinstance(built.channel.store, MemoryStore)
    assert not list(tmp_path.glob("sandbox-network*"))
    custom = container(sqlite_database, tmp_path, sandbox_state_path=str(tmp_path / "net.db"))
    assert isinstance(custom.channel, SandboxChannel)
    assert isinstance(custom.channel.store, SqliteStore)
    assert custom.channel.store.path == tmp_path / "net.db"


def test_default_path_is_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, sandbox_state_path="")
    assert settings.resolved_sandbox_state_path() == str(tmp_path / "sandbox-network.sqlite3")


# -- the sandbox bank --------------------------------------------------------------------------
@pytest.fixture(params=STORES)
def bank(request: pytest.FixtureRequest, tmp_path: Path) -> SandboxBank:
    return SandboxBank(store=open_test_store(request.param, tmp_path))


def test_sandbox_bank_is_a_bank_transfer(bank: SandboxBank) -> None:
    assert isinstance(bank, BankTransfer)


@pytest.mark.parametrize(
    ("account", "status", "reason"),
    [
        (ACCOUNT_SUCCEEDS, TransferStatus.SUCCEEDED, None),
        (ACCOUNT_CLOSED, TransferStatus.FAILED_PERMANENT, "account_closed"),
        (ACCOUNT_INVALID, TransferStatus.FAILED_PERMANENT, "invalid_account"),
        ("4111111111111111", TransferStatus.SUCCEEDED, None),  # any Luhn-valid number
        ("12345678903", TransferStatus.FAILED_PERMANENT, "invalid_account"),  # too short
        ("6217 0000 1001 2345 677", TransferStatus.FAILED_PERMANENT, "invalid_account"),
        ("0000000000000000", TransferStatus.FAILED_PERMANENT, "account_closed"),
    ],
)
def test_bank_rules(
    bank: SandboxBank, account: str, status: TransferStatus, reason: str | None
) -> None:
    result = bank.transfer("T1", account, HOLDER, BANK, 12_345)
    assert (result.status, result.reason) == (status, reason)
    assert (result.reference, result.amount, result.account_last4) == ("T1", 12_345, account[-4:])
    assert result.succeeded is (reason is None)
    assert bank.query_transfer("T1") == result


def test_bank_is_idempotent_per_reference(bank: SandboxBank) -> None:
    assert bank.query_transfer("T2") is None
    first = bank.transfer("T2", ACCOUNT_SUCCEEDS, HOLDER, BANK, 5_000)
    assert bank.transfer("T2", ACCOUNT_SUCCEEDS, HOLDER, BANK, 5_000) == first
    reused = TransferResult(
        TransferStatus.FAILED_PERMANENT, "T2", 5_001, ACCOUNT_SUCCEEDS[-4:], "reference_reused",
        "reference reused for a different transfer",
    )  # fmt: skip
    assert bank.transfer("T2", ACCOUNT_SUCCEEDS, HOLDER, BANK, 5_001) == reused
    other = bank.transfer("T2", "4111111111111111", HOLDER, BANK, 5_000)
    assert (other.status, other.reason) == (TransferStatus.FAILED_PERMANENT, "reference_reused")
    assert bank.query_transfer("T2") == first  # the first transfer stands
    # a failure is an answer too: repeated, not re-decided
    closed = bank.transfer("T3", ACCOUNT_CLOSED, HOLDER, BANK, 5_000)
    assert bank.transfer("T3", ACCOUNT_CLOSED, HOLDER, BANK, 5_000) == closed


def test_bank_over_one_file_is_one_bank(path: Path) -> None:
    first = SandboxBank(store=SqliteStore(path)).transfer("T4", ACCOUNT_SUCCEEDS, HOLDER, BANK, 1)
    second = SandboxBank(store=SqliteStore(path))
    assert second.query_transfer("T4") == first
    assert second.transfer("T4", ACCOUNT_SUCCEEDS, HOLDER, BANK, 2).reason == "reference_reused"


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("", ACCOUNT_SUCCEEDS, HOLDER, BANK, 100), ErrorCode.INVALID_INPUT),
        (("T", "", HOLDER, BANK, 100), ErrorCode.INVALID_INPUT),
        (("T", ACCOUNT_SUCCEEDS, " ", BANK, 100), ErrorCode.INVALID_INPUT),
        (("T", ACCOUNT_SUCCEEDS, HOLDER, "", 100), ErrorCode.INVALID_INPUT),
        (("T", ACCOUNT_SUCCEEDS, HOLDER, BANK, 0), ErrorCode.INVALID_AMOUNT),
        (("T", ACCOUNT_SUCCEEDS, HOLDER, BANK, 1.5), ErrorCode.INVALID_AMOUNT),
    ],
)
def test_malformed_transfers_are_refused(
    bank: SandboxBank, args: tuple[object, ...], code: ErrorCode
) -> None:
    with pytest.raises(DomainError) as err:
        bank.transfer(*args)  # type: ignore[arg-type]
    assert err.value.code is code
    assert bank.store.records() == []


def test_bank_delays_cannot_be_negative() -> None:
    with pytest.raises(DomainError):
        SandboxBank(latency_seconds=-1)

