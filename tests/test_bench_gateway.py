"""``shoudan bench gateway`` runs end to end (two terminals, about a second per phase) and prints
its lines: the echo baseline, the gateway with its ratio, the ledger verified. No timing is
asserted: the figures belong to docs/benchmarks.md, not to a test."""

from __future__ import annotations

import cProfile
import json
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from shoudan.benchmarks import gateway as bench
from shoudan.benchmarks.gateway_echo import echo
from shoudan.core.config import Settings
from shoudan.gateway.codec import Message, decode, encode
from shoudan.gateway.framing import split

LOAD_KEYS = {
    "bench", "server", "connections", "seconds", "requests", "approved", "approved_per_s",
    "p50_ms", "p99_ms", "failures", "peak_rss_mb", "server_cpu_ms_per_approved",
}  # fmt: skip


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    data_dir = tmp_path_factory.mktemp("bench-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(bench.PROFILE_ENV, raising=False)
        yield list(bench.run(2, 1.0, Settings(data_dir=data_dir), warmup=0.2))


def test_prints_the_baseline_the_gateway_and_the_ledger(lines: list[dict[str, Any]]) -> None:
    baseline, gateway, ledger = lines
    assert baseline.keys() >= LOAD_KEYS and baseline["server"] == "echo (baseline)"
    assert gateway.keys() >= LOAD_KEYS | {"baseline_per_s", "ratio"}
    assert gateway["server"] == "gateway" and gateway["connections"] == 2
    for line in (baseline, gateway):
        assert line["approved"] > 0 and line["failures"] == {}
        assert line["approved"] <= line["requests"]
        assert line["peak_rss_mb"] is None or line["peak_rss_mb"] > 0
    assert gateway["baseline_per_s"] == baseline["approved_per_s"]
    for line in (baseline, gateway):  # loaded in turns: each round's rate, adding up
        assert len(line["rounds"]) == bench.ROUNDS and min(line["rounds"]) > 0
        assert sum(line["rounds"]) / bench.ROUNDS == pytest.approx(line["approved_per_s"], abs=1)
    assert ledger == {"bench": "gateway", "ledger_verified": True, "entries": ledger["entries"]}
    assert ledger["entries"] >= gateway["approved"]  # one ledger entry per captured sale at least


def test_the_echo_answers_approved_with_the_envelope_swapped() -> None:
    fields = {3: "000000", 4: "000000000100", 11: "000007", 41: "BG000001",
              42: "898310054110001", 60: "22000001000", 64: bytes(8)}  # fmt: skip
    body = encode(Message("0200", dict(fields)))
    payload = bytes.fromhex("6000030000") + bytes.fromhex("603100000000") + body
    outcome = echo(payload)
    assert outcome.reply is not None and outcome.code == "00"
    reply = split(outcome.reply)
    assert reply.tpdu == bytes.fromhex("6000000003") and reply.header.hex() == "603100000000"
    answer = decode(reply.body)
    assert answer.mti == "0210" and answer.fields[39] == "00" and answer.fields[11] == "000007"
    assert echo(b"\x60\x00\x03\x00\x00" + bytes(6) + b"\x02\x00\xff").reply is None


def test_top_costs_reads_a_profile(tmp_path: Path) -> None:
    profile = cProfile.Profile()
    profile.runcall(sorted, list(range(1000)))
    path = tmp_path / "run.prof"
    profile.dump_stats(path)
    costs = bench.top_costs(str(path), count=3)
    assert 1 <= len(costs) <= 3
    assert costs[0].keys() == {"function", "calls", "own_s", "cumulative_s"}
    assert costs[0]["own_s"] >= costs[-1]["own_s"]


def test_spread_cards_are_valid_distinct_and_ordinary() -> None:
    from shoudan.channels.domain import card_funding, luhn_valid

    special = set(json.loads(
        resources.files("shoudan.channels").joinpath("fixtures/sandbox_cards.json").read_text()
    ).values())  # fmt: skip
    cards = [bench.spread_card(number) for number in range(1, 51)]
    assert len({card.pan for card in cards}) == 50
    for card in cards:
        assert luhn_valid(card.pan) and card_funding(card.pan).value == "debit"
        assert card.pan not in special


@pytest.mark.postgres
def test_spread_over_merchants_on_postgresql(pg_server: str, tmp_path: Path) -> None:
    """Terminals of two merchants, each with its own card, on a scratch PostgreSQL database
    that is dropped afterwards; every sale approved and the books verified."""
    from sqlalchemy import text

    from shoudan.core.db import Database

    settings = Settings(data_dir=tmp_path)
    _baseline, gateway, ledger = bench.run(
        2, 1.0, settings, warmup=0.2, merchants=2, database_url=pg_server
    )
    assert gateway["database"] == "postgresql" and gateway["merchants"] == 2
    assert gateway["approved"] > 0 and gateway["failures"] == {}
    assert ledger["ledger_verified"] is True and ledger["entries"] >= gateway["approved"]
    admin = Database(pg_server)
    try:
        with admin.engine.connect() as connection:
            left = connection.execute(
                text("SELECT count(*) FROM pg_database WHERE datname LIKE 'shoudan_bench_%'")
            ).scalar_one()
    finally:
        admin.dispose()
    assert left == 0  # the scratch database is gone


def test_no_rounds_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    from shoudan.core.errors import DomainError, ErrorCode

    with pytest.raises(DomainError) as refused:
        list(bench.run(1, 0.1, Settings(data_dir=tmp_path), rounds=0))
    assert refused.value.code is ErrorCode.INVALID_INPUT and "rounds" in refused.value.message
    assert not any(tmp_path.iterdir())


def test_a_database_url_that_is_not_postgresql_is_refused(tmp_path: Path) -> None:
    from shoudan.core.errors import DomainError, ErrorCode

    settings = Settings(data_dir=tmp_path)
    target = tmp_path / "other.db"
    with pytest.raises(DomainError) as refused:
        list(bench.run(1, 0.1, settings, database_url=f"sqlite:///{target}"))
    assert refused.value.code is ErrorCode.INVALID_INPUT
    assert "PostgreSQL" in refused.value.message and not target.exists()


def test_two_processes_of_each_server_and_their_summed_costs(tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(bench.PROFILE_ENV, raising=False)
        baseline, gateway, ledger = bench.run(
            4, 1.0, Settings(data_dir=tmp_path), warmup=0.2, processes=2, rounds=2
        )
    assert gateway["processes"] == 2 and gateway["approved"] > 0 and gateway["failures"] == {}
    assert len(gateway["rounds"]) == 2 and len(baseline["rounds"]) == 2
    assert baseline["approved"] > 0 and baseline["failures"] == {}
    assert ledger["ledger_verified"] is True


def _own_peak_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def test_peak_memory_is_counted_over_the_supervisor_and_its_children() -> None:
    import subprocess
    import sys
    import time

    parent = subprocess.Popen(  # a supervisor of one sleeping child
        [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable,"
         " '-c', 'import time; time.sleep(60)']); time.sleep(60)"],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while len(bench._family(parent.pid)) < 2:
            assert time.monotonic() < deadline, "the child never appeared"
            time.sleep(0.05)
        family = bench._family(parent.pid)
        assert family[0] == parent.pid and len(family) == 2
        each = [_own_peak_kib(pid) for pid in family]
        assert bench._peak_rss_mb(parent.pid) == pytest.approx(sum(each) / 1024, abs=0.2)
        assert bench._peak_rss_mb(family[1]) == pytest.approx(each[1] / 1024, abs=0.2)
    finally:
        for pid in bench._family(parent.pid)[1:]:
            os.kill(pid, 9)
        parent.kill()
        parent.wait()


def test_profiling_with_several_processes_is_refused(tmp_path: Path) -> None:
    from shoudan.core.errors import DomainError, ErrorCode

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(bench.PROFILE_ENV, str(tmp_path / "out.prof"))
        with pytest.raises(DomainError) as refused:
            list(bench.run(1, 0.1, Settings(data_dir=tmp_path), processes=2))
    assert refused.value.code is ErrorCode.INVALID_INPUT
    assert not any(tmp_path.iterdir())  # refused before anything was made
