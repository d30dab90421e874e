"""The device lifecycle on SQLite and PostgreSQL: inventory import (all or nothing, every row's
errors), allocation under an accepted contract, every transition and every refused one
(nothing changed), activation by a real sign-on through the ISO 8583 gateway (payments
refused before), the anti-counterfeit check (counter, first check, rate limit), labels."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from shoudan.api.ratelimit import RateLimiter
from shoudan.audit.models import AuditRecord
from shoudan.cli.main import app as cli
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.gateway.simulator import Card
from shoudan.notifications.models import OutboxEvent
from shoudan.onboarding.service import accept_contract, generate_contract
from shoudan.terminals import service, stock
from shoudan.terminals.domain import DEVICE_TRANSITIONS, DeviceEvent, DeviceStatus
from shoudan.terminals.models import DeviceHistory
from tests.gateway_world import start_gateway
from tests.payments_world import DEBIT, PIN, World, build_world


@pytest.fixture
def world(database, tmp_path) -> World:
    world = build_world(database, tmp_path)
    yield world
    report = world.container.ledger.verify()
    assert report.ok, report.violations[:5]


# -- helpers ------------------------------------------------------------------------------------
def admin(world: World, **extra: str) -> dict[str, str]:
    return world.headers(world.admin_key, **extra)


def import_csv(world: World, text: str, **extra: str):
    headers = admin(world, **{"Content-Type": "text/csv", **extra})
    return world.client.post("/v1/terminals/import", content=text.encode(), headers=headers)


def imported(world: World, *serials: str, product: str = "epos") -> dict[str, str]:
    """Import ``serials`` (one product); their verification codes by serial."""
    lines = ["serial_number,product"] + [f"{s},{product}" for s in serials]
    response = import_csv(world, "\n".join(lines) + "\n")
    assert response.status_code == 201, response.text
    return {d["serial_number"]: d["verification_code"] for d in response.json()["devices"]}


def contract(world: World, merchant_id: str, product: str = "epos", *, accept: bool = True) -> str:
    with world.container.database.transaction() as session:
        view = generate_contract(
            session, merchant_id=merchant_id, product=product, clock=world.clock, actor="test"
        )
        if accept:
            accept_contract(
                session, view.contract_id, merchant_id=merchant_id, ip="203.0.113.7",
                user_agent="pytest", clock=world.clock,
            )  # fmt: skip
    return view.contract_id


def act(world: World, serial: str, action: str, body: dict | None = None, key: str | None = None):
    return world.client.post(
        f"/v1/terminals/{serial}/{action}", json=body or {},
        headers=world.headers(key or world.admin_key),
    )  # fmt: skip


def allocated(world: World, serial: str, merchant_id: str | None = None) -> dict:
    merchant_id = merchant_id or world.merchant_a
    response = act(world, serial, "allocate", {"merchant_id": merchant_id})
    assert response.status_code == 200, response.text
    return response.json()


def device(world: World, serial: str) -> service.DeviceView:
    with world.container.database.read() as session:
        return service.get_device(session, serial)


def terminal_status(world: World, terminal_id: str) -> str:
    with world.container.database.read() as session:
        return service.get_terminal(session, terminal_id).status.value


def events(world: World, topic: str) -> list[OutboxEvent]:
    with world.container.database.read() as session:
        return list(session.scalars(select(OutboxEvent).where(OutboxEvent.topic == topic)))


def count(world: World, model: type) -> int:
    with world.container.database.read() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def activate(world: World, terminal_id: str) -> bool:
    with world.container.database.transaction() as session:
        return service.activate_on_sign_on(session, terminal_id, clock=world.clock)


# -- the whole path -----------------------------------------------------------------------------
def test_import_allocate_ship_deliver_activate_suspend_return_terminate(world: World) -> None:
    imported(world, "SN-LC-0001")
    contract_id = contract(world, world.merchant_a)
    response = act(world, "SN-LC-0001", "allocate",
                   {"merchant_id": world.merchant_a, "note": "first terminal"})  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    terminal_id = body["terminal_id"]
    assert body["status"] == "allocated" and body["contract_id"] == contract_id
    assert len(terminal_id) == 8 and len(body["master_key"]) == 32 and len(body["tmk_kcv"]) == 6
    assert terminal_status(world, terminal_id) == "inactive"
    with world.container.database.read() as session:
        key = service.load_master_key(session, world.container.vault, terminal_id)
    assert key.hex().upper() == body["master_key"]
    # an inactive terminal takes no payment
    paid = world.client.post(
        "/v1/payments", json={"terminal_id": terminal_id, "amount": 100, "method": "card",
                              "card": {"pan": DEBIT, "expiry": "2912", "pin": PIN,
                                       "entry_mode": "chip"}},
        headers=world.headers(world.key_a),
    )  # fmt: skip
    assert paid.status_code == 422 and paid.json()["code"] == "terminal_inactive"

    shipped = act(world, "SN-LC-0001", "ship", {"carrier": "SF", "tracking_number": "SF1234567"})
    assert (shipped.json()["status"], shipped.json()["tracking_number"]) == ("shipped", "SF1234567")
    world.clock.advance(timedelta(days=2))
    delivered = act(world, "SN-LC-0001", "deliver")
    assert delivered.json()["delivered_at"] == world.clock.now().isoformat().replace("+00:00", "Z")
    world.clock.advance(timedelta(hours=3))
    assert activate(world, terminal_id) is True
    assert activate(world, terminal_id) is False  # later sign-ons change nothing
    view = device(world, "SN-LC-0001")
    assert view.status is DeviceStatus.ACTIVATED and view.activated_at == world.clock.now()
    assert terminal_status(world, terminal_id) == "active"
    [activated] = events(world, "terminal.activated")
    assert activated.dedupe_key == "terminal.activated:SN-LC-0001"
    assert json.loads(activated.payload) == {
        "serial_number": "SN-LC-0001", "terminal_id": terminal_id,
        "merchant_id": world.merchant_a, "contract_id": contract_id, "product": "epos",
        "activated_at": world.clock.now().isoformat(),
    }  # fmt: skip

    assert act(world, "SN-LC-0001", "suspend", {"note": "risk"}).json()["status"] == "suspended"
    assert terminal_status(world, terminal_id) == "suspended"
    assert act(world, "SN-LC-0001", "resume").json()["status"] == "activated"
    assert terminal_status(world, terminal_id) == "active"
    returned = act(world, "SN-LC-0001", "return", {"condition": "used"})
    assert returned.json()["status"] == "returned" and returned.json()["return_condition"] == "used"
    assert terminal_status(world, terminal_id) == "retired"
    [returned_event] = events(world, "terminal.returned")
    data = json.loads(returned_event.payload)
    assert data["condition"] == "used" and data["returned_at"] == world.clock.now().isoformat()
    assert data["delivered_at"] == view.delivered_at.isoformat()
    assert data["activated_at"] == view.activated_at.isoformat()
    assert act(world, "SN-LC-0001", "terminate").json()["status"] == "terminated"
    [terminated] = events(world, "terminal.terminated")
    assert terminated.dedupe_key == "terminal.terminated:SN-LC-0001"
    assert json.loads(terminated.payload)["activated_at"] == view.activated_at.isoformat()

    read = world.client.get("/v1/terminals/SN-LC-0001/device", headers=admin(world)).json()
    steps = [(h["event"], h["from_status"], h["to_status"]) for h in read["history"]]
    assert steps == [
        ("import", None, "in_stock"), ("allocate", "in_stock", "allocated"),
        ("ship", "allocated", "shipped"), ("deliver", "shipped", "delivered"),
        ("activate", "delivered", "activated"), ("suspend", "activated", "suspended"),
        ("resume", "suspended", "activated"), ("return", "activated", "returned"),
        ("terminate", "returned", "terminated"),
    ]  # fmt: skip
    assert read["history"][1]["note"] == "first terminal"
    assert read["history"][2]["details"] == {"carrier": "SF", "tracking_number": "SF1234567"}
    assert read["history"][4]["actor"] == "system:gateway"
    with world.container.database.read() as session:
        actions = set(session.scalars(select(AuditRecord.action)))
    assert {"terminal.allocate", "terminal.return", "terminal.terminate"} <= actions


def test_tenants_see_only_their_own_device(world: World) -> None:
    imported(world, "SN-TN-0001", "SN-TN-0002")
    contract(world, world.merchant_a)
    allocated(world, "SN-TN-0001")
    own = world.client.get("/v1/terminals/SN-TN-0001/device", headers=world.headers(world.key_a))
    assert own.status_code == 200 and own.json()["merchant_id"] == world.merchant_a
    for key, serial in ((world.key_b, "SN-TN-0001"), (world.key_a, "SN-TN-0002")):
        other = world.client.get(f"/v1/terminals/{serial}/device", headers=world.headers(key))
        assert other.status_code == 404 and other.json()["code"] == "terminal_not_found"
    refused = act(world, "SN-TN-0001", "ship", {"carrier": "SF", "tracking_number": "SF1"},
                  key=world.key_a)  # fmt: skip
    assert refused.status_code == 403


# -- every transition, and every refused one -----------------------------------------------------
PATH = [DeviceEvent.ALLOCATE, DeviceEvent.SHIP, DeviceEvent.DELIVER, DeviceEvent.ACTIVATE]


def _apply(world: World, session, serial: str, event: DeviceEvent) -> None:
    common = {"actor": "test", "clock": world.clock}
    vault = world.container.vault
    match event:
        case DeviceEvent.ALLOCATE:
            service.allocate_device(session, vault, serial, merchant_id=world.merchant_a, **common)
        case DeviceEvent.SHIP:
            service.ship_device(session, serial, carrier="SF", tracking_number="SF0001", **common)
        case DeviceEvent.ACTIVATE:
            terminal_id = service.get_device(session, serial).terminal_id
            if terminal_id is None or not service.activate_on_sign_on(
                session, terminal_id, clock=world.clock
            ):
                raise DomainError(ErrorCode.INVALID_TRANSITION, "not activated")
        case DeviceEvent.RETURN:
            service.return_device(session, serial, condition="unused", **common)
        case _:
            move = {
                DeviceEvent.DELIVER: service.deliver_device,
                DeviceEvent.SUSPEND: service.suspend_device,
                DeviceEvent.RESUME: service.resume_device,
                DeviceEvent.TERMINATE: service.terminate_device,
            }[event]
            move(session, serial, **common)


ROUTES = {  # how each status is reached from in_stock
    DeviceStatus.IN_STOCK: [],
    DeviceStatus.ALLOCATED: PATH[:1],
    DeviceStatus.SHIPPED: PATH[:2],
    DeviceStatus.DELIVERED: PATH[:3],
    DeviceStatus.ACTIVATED: PATH,
    DeviceStatus.SUSPENDED: [*PATH, DeviceEvent.SUSPEND],
    DeviceStatus.RETURNED: [*PATH, DeviceEvent.RETURN],
    DeviceStatus.TERMINATED: [*PATH, DeviceEvent.TERMINATE],
}


def _snapshot(world: World, serial: str) -> tuple:
    """The device, its terminal's status, the history and outbox sizes: one read."""
    with world.container.database.read() as session:
        view = service.get_device(session, serial)
        terminal = (
            None if view.terminal_id is None
            else service.get_terminal(session, view.terminal_id).status
        )  # fmt: skip
        sizes = [
            session.scalar(select(func.count()).select_from(model))
            for model in (DeviceHistory, OutboxEvent)
        ]
    return view, terminal, *sizes


def test_every_transition_and_every_refusal(world: World) -> None:
    """From each status, each event: allowed ones land where the table says, refused ones
    raise invalid_transition and change nothing (device, terminal, history, outbox)."""
    contract(world, world.merchant_a)
    statuses, moves = list(ROUTES), [e for e in DeviceEvent if e is not DeviceEvent.IMPORT]
    serials = [f"SN-TT-{i:04d}" for i in range(len(statuses) * len(moves))]
    imported(world, *serials)
    db = world.container.database
    cases = list(zip(serials, [(s, e) for s in statuses for e in moves], strict=True))
    with db.transaction() as session:
        for serial, (status, _event) in cases:
            for step in ROUTES[status]:
                _apply(world, session, serial, step)
    for serial, (status, event) in cases:
        allowed, target = DEVICE_TRANSITIONS[event]
        before = _snapshot(world, serial)
        assert before[0].status is status
        if status in allowed:
            with db.transaction() as session:
                _apply(world, session, serial, event)
            assert device(world, serial).status is target, (status, event)
            continue
        with pytest.raises(DomainError) as refused, db.transaction() as session:
            _apply(world, session, serial, event)
        assert refused.value.code is ErrorCode.INVALID_TRANSITION, (status, event)
        assert _snapshot(world, serial) == before, (status, event)


def test_a_sign_on_while_shipped_records_the_delivery_and_one_in_the_warehouse_does_not_activate(
    world: World,
) -> None:
    imported(world, "SN-SH-0001", "SN-SH-0002")
    contract(world, world.merchant_a)
    shipped = allocated(world, "SN-SH-0001")["terminal_id"]
    warehouse = allocated(world, "SN-SH-0002")["terminal_id"]
    act(world, "SN-SH-0001", "ship", {"carrier": "EMS", "tracking_number": "EMS-42"})
    assert activate(world, warehouse) is False
    assert terminal_status(world, warehouse) == "inactive"
    assert activate(world, shipped) is True
    view = device(world, "SN-SH-0001")
    assert view.delivered_at == view.activated_at == world.clock.now()
    assert activate(world, "TZZZZZZZ") is False  # no such terminal: nothing to do


# -- bad input: precise codes, nothing changed ---------------------------------------------------
def test_shipping_an_unallocated_terminal_and_returning_twice_are_refused(world: World) -> None:
    imported(world, "SN-BI-0001", "SN-BI-0002")
    contract(world, world.merchant_a)
    before = _snapshot(world, "SN-BI-0001")
    ship = act(world, "SN-BI-0001", "ship", {"carrier": "SF", "tracking_number": "SF00001"})
    assert ship.status_code == 409 and ship.json()["code"] == "invalid_transition"
    assert ship.json()["current"] == "in_stock"
    assert _snapshot(world, "SN-BI-0001") == before

    allocated(world, "SN-BI-0002")
    act(world, "SN-BI-0002", "ship", {"carrier": "SF", "tracking_number": "SF00002"})
    act(world, "SN-BI-0002", "deliver")
    assert act(world, "SN-BI-0002", "return", {"condition": "unused"}).status_code == 200
    before = _snapshot(world, "SN-BI-0002")
    again = act(world, "SN-BI-0002", "return", {"condition": "unused"})
    assert again.status_code == 409 and again.json()["code"] == "invalid_transition"
    assert _snapshot(world, "SN-BI-0002") == before
    assert len(events(world, "terminal.returned")) == 1


def test_bad_input_is_refused_precisely_and_changes_nothing(world: World) -> None:
    imported(world, "SN-BX-0001")
    imported(world, "SN-BX-0002", product="smart")
    serial = "SN-BX-0001"
    before = _snapshot(world, serial)
    no_contract = act(world, serial, "allocate", {"merchant_id": world.merchant_a})
    assert no_contract.json()["code"] == "contract_not_accepted"
    unaccepted = contract(world, world.merchant_a, accept=False)
    other_product = contract(world, world.merchant_a, "smart")
    others = contract(world, world.merchant_b)
    cases = [
        ({"merchant_id": world.merchant_a}, 409, "contract_not_accepted"),
        ({"merchant_id": world.merchant_a, "contract_id": unaccepted}, 409,
         "contract_not_accepted"),
        ({"merchant_id": world.merchant_a, "contract_id": others}, 404, "contract_not_found"),
        ({"merchant_id": world.merchant_a, "contract_id": other_product}, 422, "invalid_input"),
        ({"merchant_id": "898000000000000"}, 404, "merchant_not_found"),
        ({"merchant_id": world.merchant_a, "terminal_id": "ta-1"}, 422, "invalid_input"),
        ({"merchant_id": world.merchant_a, "surprise": 1}, 422, "invalid_input"),
    ]  # fmt: skip
    for body, status, code in cases:
        response = act(world, serial, "allocate", body)
        assert (response.status_code, response.json()["code"]) == (status, code), body
    contract(world, world.merchant_a)
    taken = act(world, serial, "allocate",
                {"merchant_id": world.merchant_a, "terminal_id": world.terminal_a})  # fmt: skip
    assert (taken.status_code, taken.json()["code"]) == (409, "terminal_exists")
    assert _snapshot(world, serial)[:3] == before[:3]
    # the smart device goes with the smart contract, without naming it
    assert allocated(world, "SN-BX-0002")["contract_id"] == other_product
    chosen = act(world, serial, "allocate", {"merchant_id": world.merchant_a,
                                              "terminal_id": "TX000001"})  # fmt: skip
    assert chosen.json()["terminal_id"] == "TX000001"
    before = _snapshot(world, serial)
    for body in (
        {"carrier": "SF", "tracking_number": "no spaces allowed"},
        {"carrier": "", "tracking_number": "SF12345"},
        {"carrier": "S" * 33, "tracking_number": "SF12345"},
        {"tracking_number": "SF12345"},
    ):
        response = act(world, serial, "ship", body)
        assert response.status_code == 422 and response.json()["code"] == "invalid_input", body
    act(world, serial, "ship", {"carrier": "SF", "tracking_number": "SF12345"})
    act(world, serial, "deliver")
    before = _snapshot(world, serial)
    broken = act(world, serial, "return", {"condition": "broken"})
    assert broken.status_code == 422 and broken.json()["code"] == "invalid_input"
    long_note = act(world, serial, "suspend", {"note": "x" * 501})
    assert long_note.status_code == 422
    assert _snapshot(world, serial) == before
    unknown = act(world, "SN-NOPE-404", "deliver")
    assert unknown.status_code == 404 and unknown.json()["code"] == "terminal_not_found"
    assert act(world, "bad serial!", "deliver").status_code == 404


def test_allocation_and_import_refuse_an_idempotency_key(world: World) -> None:
    """Their responses carry secrets shown once; the idempotency store would keep them."""
    imported(world, "SN-IK-0001")
    contract(world, world.merchant_a)
    refused = world.client.post(
        "/v1/terminals/SN-IK-0001/allocate", json={"merchant_id": world.merchant_a},
        headers=admin(world, **{"Idempotency-Key": "k-1"}),
    )  # fmt: skip
    assert refused.status_code == 422
    assert device(world, "SN-IK-0001").status is DeviceStatus.IN_STOCK
    text = "serial_number,product\nSN-IK-0002,epos\n"
    again = import_csv(world, text, **{"Idempotency-Key": "k-2"})
    assert again.status_code == 422
    assert count(world, DeviceHistory) == 1


# -- import ---------------------------------------------------------------------------------------
def test_import_is_all_or_nothing_and_reports_every_row(world: World) -> None:
    imported(world, "SN-DUP-0001")
    text = (
        "serial_number,product,model,batch\n"
        "SN-OK-0001,epos,P30,2026-11\n"  # 2: fine
        "bad serial,epos,,\n"  # 3
        "SN-OK-0002,laptop,,\n"  # 4
        "SN-OK-0001,smart,,\n"  # 5: twice in the file
        "SN-DUP-0001,epos,,\n"  # 6: already imported
        "SN-A-0001,epos,,\n"  # 7: already a terminal (registered directly)
        "SN-OK-0003,epos\n"  # 8: a cell short
        "\n"  # blank: skipped
        "x,nope," + "M" * 40 + ",\n"  # 10: three errors in one row
    )
    devices_before, history_before = _devices(world), count(world, DeviceHistory)
    response = import_csv(world, text)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "invalid_input" and problem["error_count"] == 9
    assert [(e["row"], e["field"]) for e in problem["errors"]] == [
        (3, "serial_number"), (4, "product"), (5, "serial_number"), (6, "serial_number"),
        (7, "serial_number"), (8, "row"), (10, "serial_number"), (10, "product"), (10, "model"),
    ]  # fmt: skip
    assert problem["errors"][2]["message"] == "duplicate of row 2 in this file"
    assert problem["errors"][3]["message"] == "already in the inventory"
    assert _devices(world) == devices_before and count(world, DeviceHistory) == history_before


def _devices(world: World) -> list[str]:
    from shoudan.terminals.models import Device

    with world.container.database.read() as session:
        return sorted(session.scalars(select(Device.serial_number)))


@pytest.mark.parametrize(
    ("text", "row", "field"),
    [
        ("", 1, "file"),
        ("serial_number,product\n", 2, "file"),
        ("serial,product\nSN-1234,epos\n", 1, "serial_number"),
        ("serial_number,product,colour\nSN-1234,epos,red\n", 1, "colour"),
        ("serial_number,product,product\nSN-1234,epos,epos\n", 1, "product"),
    ],
)
def test_a_bad_header_or_an_empty_file_is_refused(sqlite_database, tmp_path, text, row, field):
    world = build_world(sqlite_database, tmp_path)
    response = import_csv(world, text)
    assert response.status_code == 422
    assert (row, field) in [(e["row"], e["field"]) for e in response.json()["errors"]]


def test_import_as_multipart_with_a_bom_and_its_limits(world: World) -> None:
    csv_bytes = "\ufeffProduct,Serial_Number,Model\nsmart,SN-MP-0001,A8\n".encode()
    response = world.client.post(
        "/v1/terminals/import", files={"file": ("devices.csv", csv_bytes, "text/csv")},
        headers=admin(world),
    )  # fmt: skip
    assert response.status_code == 201, response.text
    assert response.headers["Cache-Control"] == "no-store"
    [label] = response.json()["devices"]
    assert label["model"] == "A8" and label["product"] == "smart"
    assert len(label["verification_code"]) == 10
    not_utf8 = world.client.post(
        "/v1/terminals/import", content=b"serial_number,product\n\xff\xfe,epos\n",
        headers=admin(world, **{"Content-Type": "text/csv"}),
    )  # fmt: skip
    assert not_utf8.status_code == 422 and "UTF-8" in not_utf8.json()["detail"]
    as_json = world.client.post("/v1/terminals/import", json={"x": 1}, headers=admin(world))
    assert as_json.status_code == 422
    merchant = world.client.post(
        "/v1/terminals/import", content=b"serial_number,product\nSN-MP-0002,epos\n",
        headers=world.headers(world.key_a, **{"Content-Type": "text/csv"}),
    )  # fmt: skip
    assert merchant.status_code == 403 and _devices(world) == ["SN-MP-0001"]


# -- anti-counterfeit ---------------------------------------------------------------------------
def verify(world: World, serial: str, code: str):
    return world.client.get(
        "/v1/public/verify-terminal", params={"serial_number": serial, "code": code}
    )


def test_verify_terminal_counts_checks_and_keeps_the_first_check(world: World) -> None:
    [(serial, code)] = imported(world, "SN-VF-0001").items()
    first = world.clock.now()
    answer = verify(world, serial, code)
    assert answer.status_code == 200
    assert answer.json() == {
        "genuine": True, "product": "epos", "check_count": 1,
        "first_checked_at": first.isoformat().replace("+00:00", "Z"),
    }  # fmt: skip
    world.clock.advance(timedelta(days=3))
    typed = f"{code[:5].lower()}-{code[5:]}"  # as a person types it
    again = verify(world, serial, typed).json()
    assert again["check_count"] == 2
    assert again["first_checked_at"] == answer.json()["first_checked_at"]
    wrong_code = code[:-1] + ("2" if code[-1] != "2" else "3")
    for bad_serial, bad_code in ((serial, wrong_code), ("SN-VF-9999", code), (serial, "0OIL1"),
                                 ("x", code)):  # fmt: skip
        response = verify(world, bad_serial, bad_code)
        assert response.status_code == 200 and response.json() == {"genuine": False}
    assert verify(world, serial, code).json()["check_count"] == 3  # wrong ones counted nothing


def test_verify_terminal_is_rate_limited(world: World) -> None:
    [(serial, code)] = imported(world, "SN-RL-0001").items()
    world.client.app.state.public_limiter = RateLimiter(3, monotonic=lambda: 0.0)
    for _ in range(3):
        assert verify(world, serial, code).status_code == 200
    limited = verify(world, serial, code)
    assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
    assert verify(world, serial, code + "X").status_code == 429
    assert _check_count(world, serial) == 3  # refused checks never reached the counter


def _check_count(world: World, serial: str) -> int:
    from shoudan.terminals.models import Device

    with world.container.database.read() as session:
        return session.scalar(select(Device.check_count).where(Device.serial_number == serial))


def test_concurrent_checks_are_all_counted(world: World) -> None:
    [(serial, code)] = imported(world, "SN-CC-0001").items()
    db, vault, clock = world.container.database, world.container.vault, world.clock
    answers: list[int] = []
    lock = threading.Lock()

    def check() -> None:
        for _ in range(5):
            with db.transaction() as session:
                result = stock.verify_terminal(session, vault, serial, code, clock=clock)
            with lock:
                answers.append(result.check_count or 0)

    threads = [threading.Thread(target=check) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == list(range(1, 21))  # each check saw its own, distinct count
    assert _check_count(world, serial) == 20


# -- CLI: import with a progress bar, labels printed again ---------------------------------------
def test_cli_import_writes_labels_and_labels_prints_them_again(
    world: World, db_url: str, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("SHOUDAN_SECRET_KEY", "11" * 32)
    monkeypatch.setenv("SHOUDAN_DATA_DIR", str(tmp_path))
    source = tmp_path / "devices.csv"
    source.write_text("serial_number,product,model\nSN-CL-0001,epos,P30\nSN-CL-0002,smart,\n")
    first_labels = tmp_path / "labels.csv"
    runner = CliRunner()
    result = runner.invoke(cli, ["terminals", "import", str(source), "--labels",
                                 str(first_labels), "--database-url", db_url])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "imported 2 devices" in result.output
    lines = first_labels.read_text().splitlines()
    assert lines[0] == "serial_number,product,model,verification_code"
    assert [line.split(",")[:3] for line in lines[1:]] == [
        ["SN-CL-0001", "epos", "P30"], ["SN-CL-0002", "smart", ""]
    ]
    code = lines[1].split(",")[3]
    assert verify(world, "SN-CL-0001", code).json()["genuine"] is True

    again = runner.invoke(cli, ["terminals", "labels", "--out", "-", "--status", "in_stock",
                                "--database-url", db_url])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert lines[1] in again.output and lines[2] in again.output

    bad = tmp_path / "bad.csv"
    bad.write_text("serial_number,product\nSN-CL-0001,epos\nnope!,epos\n")
    refused = runner.invoke(cli, ["terminals", "import", str(bad), "--database-url", db_url])
    assert refused.exit_code == 2
    assert "row 2, serial_number: already in the inventory" in refused.output
    assert "row 3, serial_number:" in refused.output
    none = runner.invoke(cli, ["terminals", "labels", "--out", "-", "--import-id", "imp_x",
                               "--database-url", db_url])  # fmt: skip
    assert none.exit_code == 2


# -- activation through the real gateway ------------------------------------------------------
def test_first_sign_on_through_the_gateway_activates_and_payments_wait_for_it(
    world: World,
) -> None:
    imported(world, "SN-GW-0001")
    contract(world, world.merchant_a)
    body = allocated(world, "SN-GW-0001")
    terminal_id, tmk = body["terminal_id"], bytes.fromhex(body["master_key"])
    gateway = start_gateway(world)
    try:
        terminal = gateway.terminal(terminal_id, world.merchant_a)
        # still in the warehouse: it signs on (keys), but stays inactive and cannot pay
        assert terminal.client.sign_on(tmk).code == "00"
        assert terminal_status(world, terminal_id) == "inactive"
        assert terminal.client.sale(Card(pan=DEBIT, pin=PIN), 10_000).code == "97"
        assert gateway.payments() == []
        act(world, "SN-GW-0001", "ship", {"carrier": "SF", "tracking_number": "SF778899"})
        act(world, "SN-GW-0001", "deliver")
        world.clock.advance(timedelta(minutes=5))
        assert terminal.client.sign_on(tmk).code == "00"
        view = device(world, "SN-GW-0001")
        assert view.status is DeviceStatus.ACTIVATED and view.activated_at == world.clock.now()
        assert terminal_status(world, terminal_id) == "active"
        assert terminal.client.sale(Card(pan=DEBIT, pin=PIN), 10_000).code == "00"
        world.clock.advance(timedelta(minutes=5))
        assert terminal.client.sign_on(tmk).code == "00"  # a later sign-on changes nothing
        assert device(world, "SN-GW-0001").activated_at == view.activated_at
        assert len(events(world, "terminal.activated")) == 1
        act(world, "SN-GW-0001", "suspend")
        assert terminal.client.sale(Card(pan=DEBIT, pin=PIN), 10_000).code == "97"
        assert len(gateway.payments()) == 1
    finally:
        gateway.background.stop()
