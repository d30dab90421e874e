"""``shoudan bench gateway``: approved ISO 8583 sales per second, against an echo server.

The gateway is the real ``shoudan gateway`` in its own process, on a fresh SQLite file database
(migrated, ``synchronous=FULL`` as always) in a temporary directory under the data directory,
with the sandbox network's state file beside it and no sandbox latency. One merchant has one
terminal per connection, each with a master key we know.

The load client is one asyncio process. Each connection is its own terminal (its own 41, so
batches and STANs never collide): it signs on once, then sends MACed sales (0200, sandbox debit
card that approves, PIN block, ¥1.00) back to back, each waiting for its answer. Messages are
built by the terminal simulator and the gateway's own codec and keys. The first ``warmup``
seconds are not counted; then ``seconds`` are: approved sales/s (39 = ``00`` and the answer's
MAC checks), p50/p99 latency from the request written to the answer read, failures by code,
and the peak RSS of the server process (``VmHWM``).

``merchants`` > 1 spreads the terminals over that many merchants, each terminal selling with a
card of its own; ``database_url`` runs both phases on a scratch database of a PostgreSQL
server (created, migrated, dropped).

The baseline, in the same run, with the same client code, connections and duration: the
gateway's own TCP server whose handler decodes and re-encodes and does nothing else
(``gateway_echo.py``). Its answers carry no MAC of ours, so the client checks the MAC (same
work) without counting it. Afterwards the ledger is verified.

Both servers are up for the whole run and loaded in turns: ``rounds`` rounds, each giving the
echo server and then the gateway ``seconds / rounds`` (after a warm-up of its own). This
machine's speed drifts by a third within minutes (docs/benchmarks.md); measured one phase
after the other, that drift went straight into the ratio. Each line lists its rounds'
rates, so the drift is seen rather than averaged away unseen.

Profiling: with ``SHOUDAN_BENCH_GATEWAY_PROFILE=/path/out.prof`` the gateway runs under
cProfile (every ``GatewayService.handle`` call, on its worker threads, wall-clock time); the
stats are written there and the ten largest own-time costs printed as one more line. Run it
with ``--connections 1`` for a clean per-sale breakdown: with more, time spent waiting for the
SQLite writer lock and the GIL is counted in. Profiled figures are slower.
"""

from __future__ import annotations

import asyncio
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

from sqlalchemy.engine import make_url
from stdnum import luhn

from shoudan import migrations
from shoudan.benchmarks.api import SECRET, bench_merchant, bench_vault, start_on_a_free_port
from shoudan.benchmarks.scratch import ledger_line, scratch_postgres
from shoudan.bootstrap import bootstrap
from shoudan.channels.sandbox import PAN_APPROVE_DEBIT, SANDBOX_PIN
from shoudan.core.clock import SystemClock
from shoudan.core.config import Settings, get_settings
from shoudan.core.db import Database
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.gateway.codec import MAC_BYTES, MAC_FIELD, Message, decode, encode, mac_input
from shoudan.gateway.domain import Kind
from shoudan.gateway.framing import LENGTH_BYTES, frame_bytes, payload_length, split
from shoudan.gateway.keys import issue_working_keys, mac_matches, retail_mac
from shoudan.gateway.service import GatewayService
from shoudan.gateway.simulator import (
    DEFAULT_HEADER,
    DEFAULT_TPDU,
    Card,
    TerminalClient,
    TerminalState,
)
from shoudan.terminals.keys import generate_master_key
from shoudan.terminals.service import TerminalInput, create_terminal

AMOUNT: Final = 100  # fen
WARMUP_SECONDS: Final = 1.0  # of each round
ROUNDS: Final = 4
START_TIMEOUT: Final = 60.0
PROFILE_ENV: Final = "SHOUDAN_BENCH_GATEWAY_PROFILE"
PROFILE_FLAG: Final = "--profile-to"
CARD: Final = Card(pan=PAN_APPROVE_DEBIT, pin=SANDBOX_PIN)


@dataclass(frozen=True)
class BenchTerminal:
    terminal_id: str
    merchant_id: str
    master_key: bytes = field(repr=False)
    card: Card = field(default=CARD, repr=False)


def spread_card(number: int) -> Card:
    """The ``number``-th card of a spread load: a debit card (BIN 622202, Luhn-valid) that the
    sandbox approves with its PIN; none of the sandbox table's special cards."""
    body = f"622202{7_000_000_000 + number:012d}"
    return Card(pan=body + luhn.calc_check_digit(body), pin=SANDBOX_PIN)


@dataclass
class Tally:
    """What the connections measured after the warm-up."""

    latencies: list[float] = field(default_factory=list)
    approved: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    server_cpu_seconds: float | None = None  # the server process's, over the counted window

    def record(self, seconds: float, code: str, mac_ok: bool, mac_expected: bool) -> None:
        self.latencies.append(seconds)
        if code != "00":
            self.failures[code] += 1
        elif mac_expected and not mac_ok:
            self.failures["mac"] += 1
        else:
            self.approved += 1


# -- the database and the servers ----------------------------------------------------------------
def _prepare(url: str, count: int, merchants: int = 1) -> list[BenchTerminal]:
    """A migrated database with ``count`` terminals with known master keys: all of one
    merchant, selling with one card; or spread over ``merchants`` merchants, each terminal
    with a card of its own (so on PostgreSQL no two merchants' or cards' running totals and
    accounts are the same rows)."""
    migrations.upgrade(url)
    database = Database(url)
    try:
        bootstrap(database)
        vault, clock = bench_vault(), SystemClock()
        terminals = []
        with database.transaction() as session:
            owners = [
                bench_merchant(session, database, vault, clock, f"网关压测商户{n}").merchant_id
                for n in range(1, merchants + 1)
            ]
            for number in range(1, count + 1):
                key = generate_master_key()
                owner = owners[number % merchants]
                view = create_terminal(
                    session, vault,
                    TerminalInput(f"BENCH-GW-{number:05d}", f"BG{number:06d}", "epos", owner, key),
                    actor="bench", clock=clock,
                )[0]  # fmt: skip
                card = CARD if merchants == 1 else spread_card(number)
                terminals.append(BenchTerminal(view.terminal_id, owner, bytes.fromhex(key), card))
        return terminals
    finally:
        database.dispose()


def _environment(tmp: Path, url: str) -> dict[str, str]:
    return {
        **os.environ,
        "SHOUDAN_DATABASE_URL": url,
        "SHOUDAN_DATA_DIR": str(tmp),
        "SHOUDAN_SECRET_KEY": SECRET,
        "SHOUDAN_SANDBOX_STATE_PATH": str(tmp / "sandbox-network.sqlite3"),
        "SHOUDAN_SANDBOX_LATENCY_SECONDS": "0",
    }


def _gateway_command(port: int, profile: str | None, processes: int = 1) -> list[str]:
    arguments = ["gateway", "--host", "127.0.0.1", "--iso-port", str(port)]
    arguments += ["--processes", str(processes)]
    if profile:
        return [sys.executable, "-m", "shoudan.benchmarks.gateway", PROFILE_FLAG, profile,
                *arguments]  # fmt: skip
    return [sys.executable, "-m", "shoudan.cli.main", *arguments]


def _echo_command(port: int, processes: int = 1) -> list[str]:
    return [sys.executable, "-m", "shoudan.benchmarks.gateway_echo", str(port), str(processes)]


def _start_phase(
    phase: _Phase, env: dict[str, str], log: Path, port: int
) -> subprocess.Popen[bytes]:
    return _start(phase.command(port), env, port, log)


def _start(
    command: list[str], env: dict[str, str], port: int, log: Path
) -> subprocess.Popen[bytes]:
    """Start a server (output to ``log``) and wait until it accepts connections."""
    with log.open("ab") as output:
        # our own interpreter and modules
        server = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)  # noqa: S603
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and server.poll() is None:
        try:
            asyncio.run(_probe(port))
            return server
        except OSError:
            time.sleep(0.1)
    _stop(server)
    tail = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{' '.join(command[1:3])} did not start on port {port}:\n{tail}")


async def _probe(port: int) -> None:
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()
    await writer.wait_closed()


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _family(pid: int) -> list[int]:
    """The process and its children (``shoudan gateway --processes N`` supervises N), from
    Linux /proc; just the process where /proc cannot tell."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(int(child) for child in children)]


def _family_files(pid: int, name: str) -> list[str] | None:
    """``/proc/<p>/<name>`` of the process and each of its children, or None if one is gone."""
    try:
        return [Path(f"/proc/{member}/{name}").read_text() for member in _family(pid)]
    except OSError:
        return None


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU the process and its children have used so far (Linux /proc), or
    None."""
    stats = _family_files(pid, "stat")
    if stats is None:
        return None
    ticks = 0
    for stat in stats:
        fields = stat.rpartition(")")[2].split()  # after the command name (it may hold spaces)
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float | None:
    """Peak resident set (Linux ``VmHWM``) of the process plus its children's, or None where
    /proc has none."""
    statuses = _family_files(pid, "status")
    kib = sum(
        int(line.split()[1])
        for status in statuses or []
        for line in status.splitlines()
        if line.startswith("VmHWM:")
    )
    return round(kib / 1024, 1) if kib else None


# -- terminals -----------------------------------------------------------------------------------
def _signed_on(port: int, terminal: BenchTerminal) -> TerminalState:
    """A terminal that signed on to the gateway: its working keys and open batch."""
    state = TerminalState(terminal.terminal_id, terminal.merchant_id)
    with TerminalClient("127.0.0.1", port, state) as client:
        reply = client.sign_on(terminal.master_key)
    if reply.code != "00":
        raise RuntimeError(f"sign-on of {terminal.terminal_id} answered {reply.code}")
    return state


def _with_own_keys(terminal: BenchTerminal) -> TerminalState:
    """A terminal for the echo server, which issues no keys: working keys of its own."""
    keys = issue_working_keys()
    return TerminalState(terminal.terminal_id, terminal.merchant_id, pik=keys.pik.hex(),
                         mak=keys.mak.hex())  # fmt: skip


def _maced(mak: bytes, message: Message) -> bytes:
    """The body as a terminal sends it: field 64 is the X9.19 MAC of everything before it."""
    message.fields[MAC_FIELD] = bytes(MAC_BYTES)
    body = encode(message)
    return mac_input(body) + retail_mac(mak, mac_input(body))


# -- the load ------------------------------------------------------------------------------------
async def _sales(
    port: int, lane: tuple[TerminalState, Card], window: tuple[float, float], tally: Tally,
    mac_expected: bool,
) -> None:
    """One connection: sales back to back until the window closes; counted once it opens."""
    counted_from, stop_at = window
    state, card = lane
    factory = TerminalClient("127.0.0.1", port, state)  # builds messages; never connects
    mak = state.keys.mak
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            body = _maced(mak, factory.card_message(Kind.SALE, card, AMOUNT))
            frame = frame_bytes(DEFAULT_TPDU, DEFAULT_HEADER, body)
            started = time.perf_counter()
            writer.write(frame)
            await writer.drain()
            length = payload_length(await reader.readexactly(LENGTH_BYTES))
            answer_body = split(await reader.readexactly(length)).body
            elapsed = time.perf_counter() - started
            answer = decode(answer_body)
            mac_ok = mac_matches(mak, mac_input(answer_body), answer.binary(MAC_FIELD))
            if started >= counted_from:
                tally.record(elapsed, answer.text(39) or "??", mac_ok, mac_expected)
    except (asyncio.IncompleteReadError, ConnectionError):
        tally.failures["closed"] += 1
    finally:
        writer.close()


async def _load(
    port: int, lanes: list[tuple[TerminalState, Card]], seconds: float, warmup: float,
    mac_expected: bool,
    server_pid: int,
) -> Tally:
    tally = Tally()
    start = time.perf_counter()
    window = (start + warmup, start + warmup + seconds)
    clients = asyncio.gather(*(_sales(port, lane, window, tally, mac_expected) for lane in lanes))
    await asyncio.sleep(warmup)
    cpu_before = _cpu_seconds(server_pid)
    await clients
    cpu_after = _cpu_seconds(server_pid)
    if cpu_before is not None and cpu_after is not None:
        tally.server_cpu_seconds = cpu_after - cpu_before
    return tally


def _line(server: str, tally: Tally, connections: int, seconds: float) -> dict[str, Any]:
    latencies, cpu = tally.latencies, tally.server_cpu_seconds
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "bench": "gateway",
        "server": server,
        "connections": connections,
        "seconds": seconds,
        "requests": len(latencies),
        "approved": tally.approved,
        "approved_per_s": round(tally.approved / seconds, 1),
        "p50_ms": round(cuts[49] * 1000, 2),
        "p99_ms": round(cuts[98] * 1000, 2),
        "failures": dict(sorted(tally.failures.items())),
        "server_cpu_ms_per_approved": round(cpu * 1000 / tally.approved, 3)
        if cpu is not None and tally.approved
        else None,
    }


@dataclass(frozen=True)
class _Phase:
    server: str
    command: Callable[[int], list[str]]
    lanes: Callable[[int], list[tuple[TerminalState, Card]]]  # port → a terminal per connection
    mac_expected: bool


@dataclass
class _Running:
    """A phase's server, up for the whole run, and what its rounds measured so far."""

    phase: _Phase
    port: int
    server: subprocess.Popen[bytes]
    lanes: list[tuple[TerminalState, Card]]
    tally: Tally = field(default_factory=Tally)
    rounds: list[float] = field(default_factory=list)  # approved/s of each round

    def add(self, round_tally: Tally, seconds: float) -> None:
        tally = self.tally
        tally.latencies += round_tally.latencies
        tally.approved += round_tally.approved
        tally.failures.update(round_tally.failures)
        cpu, so_far = round_tally.server_cpu_seconds, tally.server_cpu_seconds
        if cpu is None or (self.rounds and so_far is None):  # unknown in a round: in the run
            tally.server_cpu_seconds = None
        else:
            tally.server_cpu_seconds = (so_far or 0.0) + cpu
        self.rounds.append(round(round_tally.approved / seconds, 1))


def _interleaved(
    phases: list[_Phase], env: dict[str, str], tmp: Path, seconds: float, warmup: float,
    rounds: int,
) -> list[dict[str, Any]]:
    """Every phase's server up at once; then ``rounds`` rounds, each loading one phase after
    the other for ``seconds / rounds`` (after its own warm-up), so that a machine whose speed
    drifts during the run (a shared VM's does, by a third) weighs on every phase alike and
    the ratio compares the same minutes. One line per phase, over all its rounds."""
    slice_seconds = seconds / rounds
    with ExitStack() as stack:
        running = []
        for number, phase in enumerate(phases):
            log = tmp / f"{phase.server.split()[0]}-{number}.log"
            port, server = start_on_a_free_port(partial(_start_phase, phase, env, log))
            stack.callback(_stop, server)
            running.append(_Running(phase, port, server, phase.lanes(port)))
        for _ in range(rounds):
            for one in running:
                round_tally = asyncio.run(_load(
                    one.port, one.lanes, slice_seconds, warmup, one.phase.mac_expected,
                    one.server.pid,
                ))  # fmt: skip
                one.add(round_tally, slice_seconds)
        return [
            _line(one.phase.server, one.tally, len(one.lanes), seconds)
            | {"rounds": one.rounds, "peak_rss_mb": _peak_rss_mb(one.server.pid)}
            for one in running
        ]


def run(
    connections: int = 50,
    seconds: float = 20.0,
    settings: Settings | None = None,
    warmup: float = WARMUP_SECONDS,
    merchants: int = 1,
    database_url: str | None = None,
    processes: int = 1,
    rounds: int = ROUNDS,
) -> Iterator[dict[str, Any]]:
    """The echo server and the gateway (``processes`` gateway processes on the port) loaded
    in turns (``rounds``, see ``_interleaved``), on SQLite in the data directory or on a
    scratch database of the PostgreSQL server of ``database_url``."""
    data_dir = (settings or get_settings()).data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    profile = os.environ.get(PROFILE_ENV) or None
    if profile and processes > 1:
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            f"{PROFILE_ENV} profiles one gateway process: leave out --processes to profile",
        )
    if rounds < 1:
        raise DomainError(ErrorCode.INVALID_INPUT, "rounds: at least 1")
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-gateway-",
                                                                   dir=data_dir)))  # fmt: skip
        if database_url is None:
            url = f"sqlite:///{tmp / 'gateway.db'}"
        else:
            (url,) = stack.enter_context(scratch_postgres(database_url, "gateway"))
        terminals = _prepare(url, connections, merchants)
        env = _environment(tmp, url)
        echo = _Phase(
            "echo (baseline)", lambda port: _echo_command(port, processes),
            lambda _port: [(_with_own_keys(t), t.card) for t in terminals], mac_expected=False,
        )  # fmt: skip
        gateway = _Phase(
            "gateway", lambda port: _gateway_command(port, profile, processes),
            lambda port: [(_signed_on(port, t), t.card) for t in terminals], mac_expected=True,
        )  # fmt: skip
        baseline, line = _interleaved([echo, gateway], env, tmp, seconds, warmup, rounds)
        yield baseline
        line["baseline_per_s"] = baseline["approved_per_s"]
        ratio = line["approved_per_s"] / baseline["approved_per_s"] if baseline["approved"] else 0
        line["ratio"] = round(ratio, 3)
        line |= {
            "merchants": merchants, "processes": processes,
            "database": make_url(url).get_backend_name(),
        }  # fmt: skip
        yield line
        if profile:
            yield {"bench": "gateway", "profile": profile, "profiled": True,
                   "top_own_time": top_costs(profile)}  # fmt: skip
        yield ledger_line("gateway", url)


def main(connections: int = 50, seconds: float = 20.0) -> None:
    for line in run(connections, seconds):
        print(json.dumps(line, ensure_ascii=False), flush=True)


# -- profiling -----------------------------------------------------------------------------------
def top_costs(path: str, count: int = 10) -> list[dict[str, Any]]:
    """The ``count`` functions with the most own time in a cProfile dump of the gateway, with
    µs per request handled (``GatewayService.handle`` calls: the sales and the sign-ons)."""
    stats: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
    requests = sum(
        calls
        for (file, _line, name), (_primitive, calls, *_rest) in stats.items()
        if name == "handle" and file.endswith(str(Path("gateway", "service.py")))
    )
    ranked = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:count]
    return [
        {
            "function": f"{Path(file).name}:{line}({name})",
            "calls": calls,
            "own_s": round(own, 3),
            "cumulative_s": round(cumulative, 3),
            **({"own_us_per_request": round(own / requests * 1e6, 1)} if requests else {}),
        }
        for (file, line, name), (_primitive, calls, own, cumulative, _callers) in ranked
    ]


def _profiled_gateway(out: str, argv: list[str]) -> None:
    """``shoudan gateway`` with cProfile around every ``GatewayService.handle`` call (each
    worker thread has its own profiler; wall-clock time, so with more than one connection the
    waits for the SQLite writer lock and for the GIL count too); the merged stats go to
    ``out`` on exit."""
    import cProfile

    from shoudan.cli.main import main as cli_main

    profiles: list[cProfile.Profile] = []
    local = threading.local()
    handle = GatewayService.handle

    def profiled(self: GatewayService, payload: bytes) -> Any:
        profile = getattr(local, "profile", None)
        if profile is None:
            profile = local.profile = cProfile.Profile()
            profiles.append(profile)
        profile.enable()
        try:
            return handle(self, payload)
        finally:
            profile.disable()

    GatewayService.handle = profiled  # type: ignore[method-assign]
    sys.argv = ["shoudan", *argv]
    try:
        cli_main()
    finally:
        if profiles:
            pstats.Stats(*profiles).dump_stats(out)


if __name__ == "__main__":
    if sys.argv[1:2] == [PROFILE_FLAG]:
        _profiled_gateway(sys.argv[2], sys.argv[3:])
    else:
        main()
