"""API keys: shown once and stored hashed, authenticated in constant time, revocable; the
``shoudan apikey`` command; and the tenant rules of ``Principal``. Both engines."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import MetaData, select
from typer.testing import CliRunner

from shoudan.api.app import create_app
from shoudan.api.deps import PrincipalDep
from shoudan.audit import service as audit
from shoudan.auth import service
from shoudan.auth.domain import (
    STAFF_ROLES,
    SYSTEM,
    ApiKeyView,
    Principal,
    Role,
    api_key_prefix,
    is_well_formed_api_key,
)
from shoudan.auth.models import ApiKey
from shoudan.bootstrap import bootstrap
from shoudan.cli.main import app as cli_app
from shoudan.core.clock import FixedClock
from shoudan.core.config import Settings
from shoudan.core.crypto import Vault
from shoudan.core.db import Database
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.ledger.service import Ledger
from shoudan.merchants.service import MerchantInput, create_merchant

HTTPX_NOTICE = r".*httpx.*starlette\.testclient.*"  # starlette's notice, not about our code
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=HTTPX_NOTICE)
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.filterwarnings(f"ignore:{HTTPX_NOTICE}")

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
KEY_SHAPE = re.compile(r"sk_[ms]_[A-Za-z0-9_-]{43}")
SHOUDAN = str(Path(sys.executable).with_name("shoudan"))


# -- merchants ------------------------------------------------------------------------------


@pytest.fixture
def make_merchant(database: Database) -> Callable[[], str]:
    """A factory of real merchants, made by ``shoudan.merchants.service``."""
    bootstrap(database)  # the default fee plans a merchant needs
    clock = FixedClock(NOW)
    vault = Vault.from_master(b"\x11" * 32)
    ledger = Ledger(database, clock)
    phones = iter(f"1381234{n:04d}" for n in range(1000, 9999))

    def make() -> str:
        with database.transaction() as session:
            data = MerchantInput("老王面馆", "individual", "5812", "3100", next(phones))
            view = create_merchant(session, vault, ledger, data, actor="test", clock=clock)
        return view.merchant_id

    return make


def _create(
    database: Database, role: Role = Role.ADMIN, merchant_id: str | None = None, name: str = ""
) -> tuple[ApiKeyView, str]:
    with database.transaction() as session:
        return service.create_api_key(
            session, role=role, merchant_id=merchant_id, name=name, clock=FixedClock(NOW)
        )


def _authenticate(database: Database, token: str) -> Principal:
    with database.read() as session:
        return service.authenticate(session, token)


def _every_stored_text(database: Database) -> list[str]:
    """Every value of every row of every table, as text (bytes both raw and as hex)."""
    metadata = MetaData()
    metadata.reflect(database.engine)
    values: list[str] = []
    with database.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        raw = bytes(value)
                        values += [raw.decode("latin-1"), raw.hex()]
                    elif value is not None:
                        values.append(str(value))
    return values


# -- creation -------------------------------------------------------------------------------


def test_key_is_shown_once_and_only_its_hash_is_stored(
    database: Database, make_merchant: Callable[[], str]
) -> None:
    merchant_id = make_merchant()
    view, key = _create(database, Role.MERCHANT, merchant_id, name="  till 1 ")

    assert KEY_SHAPE.fullmatch(key) and key.startswith("sk_m_")
    assert view.id.startswith("key_") and len(view.id) <= 32
    assert view.prefix == key[:12] == api_key_prefix(key)
    assert (view.role, view.merchant_id, view.name) == (Role.MERCHANT, merchant_id, "till 1")
    assert view.active and view.created_at == NOW
    assert key not in repr(view) and key not in str(view.as_dict())

    with database.read() as session:
        row = session.get(ApiKey, view.id)
        assert row is not None
        assert row.secret_hash == hashlib.sha256(key.encode()).hexdigest()

    secret_part = key[12:]
    stored = _every_stored_text(database)
    assert not [value for value in stored if key in value or secret_part in value]
    if database.dialect == "sqlite":  # and not in the file's bytes either (pages and WAL)
        path = Path(database.engine.url.database or "")
        for file in (path, path.with_name(path.name + "-wal")):
            if file.exists():
                assert secret_part.encode() not in file.read_bytes()


def test_staff_key_and_distinct_keys(database: Database) -> None:
    view, key = _create(database, Role.FINANCE, name="reconciliation")
    assert key.startswith("sk_s_") and view.merchant_id is None and view.role is Role.FINANCE
    keys = {_create(database)[1] for _ in range(5)} | {key}
    assert len(keys) == 6


def test_create_and_revoke_are_audited(database: Database) -> None:
    view, key = _create(database, Role.RISK)
    with database.transaction() as session:
        revoked = service.revoke_api_key(session, view.id, clock=FixedClock(NOW))
    assert revoked.revoked_at == NOW and not revoked.active
    with database.transaction() as session:  # revoking again changes nothing
        assert service.revoke_api_key(session, view.id) == revoked
    with database.read() as session:
        records = [
            (r.action, r.subject_id, r.actor, (r.before or "") + (r.after or ""))
            for r in audit.tail(session, 50)
            if r.subject_type == "api_key"
        ]
        assert audit.verify(session).ok
    assert [record[:3] for record in records] == [
        ("api_key.create", view.id, SYSTEM.id),
        ("api_key.revoke", view.id, SYSTEM.id),
    ]
    assert all(key not in record[3] and key[12:] not in record[3] for record in records)


def test_merchant_key_needs_an_existing_merchant(
    database: Database, make_merchant: Callable[[], str]
) -> None:
    make_merchant()
    cases: list[tuple[Role, str | None, ErrorCode]] = [
        (Role.MERCHANT, "999999999999999", ErrorCode.MERCHANT_NOT_FOUND),
        (Role.MERCHANT, "x" * 40, ErrorCode.MERCHANT_NOT_FOUND),
        (Role.MERCHANT, None, ErrorCode.INVALID_INPUT),
        (Role.MERCHANT, "", ErrorCode.INVALID_INPUT),
        (Role.ADMIN, make_merchant(), ErrorCode.INVALID_INPUT),  # staff keys have no merchant
    ]
    for role, merchant_id, code in cases:
        with pytest.raises(DomainError) as caught:
            _create(database, role, merchant_id)
        assert caught.value.code is code, (role, merchant_id)
    with pytest.raises(DomainError) as caught:
        _create(database, Role.ADMIN, name="n" * 256)
    assert caught.value.code is ErrorCode.INVALID_INPUT
    with database.read() as session:
        assert service.list_api_keys(session) == []


def test_only_admins_manage_keys(database: Database, make_merchant: Callable[[], str]) -> None:
    merchant_id = make_merchant()
    view, _ = _create(database)
    for actor in (Principal("key_x", Role.FINANCE), Principal("key_y", Role.MERCHANT, merchant_id)):
        with database.transaction() as session, pytest.raises(DomainError) as caught:
            service.create_api_key(session, role=Role.ADMIN, actor=actor)
        assert caught.value.code is ErrorCode.FORBIDDEN
        with database.transaction() as session, pytest.raises(DomainError) as caught:
            service.revoke_api_key(session, view.id, actor=actor)
        assert caught.value.code is ErrorCode.FORBIDDEN
    admin = Principal("key_admin", Role.ADMIN)
    with database.transaction() as session:
        created, _ = service.create_api_key(session, role=Role.CS_AGENT, actor=admin)
    with database.read() as session:
        assert audit.tail(session, 1)[0].actor == "key_admin"  # read before the rollback
        assert service.get_api_key(session, created.id) == created


# -- authentication -------------------------------------------------------------------------


def test_authenticate_good_keys(database: Database, make_merchant: Callable[[], str]) -> None:
    merchant_id = make_merchant()
    merchant_view, merchant_key = _create(database, Role.MERCHANT, merchant_id)
    staff_view, staff_key = _create(database, Role.APPROVER)
    assert _authenticate(database, merchant_key) == Principal(
        merchant_view.id, Role.MERCHANT, merchant_id
    )
    assert _authenticate(database, staff_key) == Principal(staff_view.id, Role.APPROVER, None)


def test_authenticate_refuses_everything_else_alike(database: Database) -> None:
    view, key = _create(database)
    revoked_view, revoked_key = _create(database)
    with database.transaction() as session:
        service.revoke_api_key(session, revoked_view.id)
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")
    same_prefix = key[:12] + "x" * (len(key) - 12)
    bad = [
        revoked_key,  # revoked
        flipped,  # unknown, one character off
        same_prefix,  # right prefix, wrong secret
        "sk_s_" + "A" * 43,  # well formed, unknown
        "",  # malformed from here on
        "sk_s_short",
        key + "x",
        key[:-1],
        " " + key,
        f"Bearer {key}",
        key.replace("sk_s_", "sk_m_"),
        key.replace("sk_s_", "sk_x_"),
        "sk_s_" + "é" * 43,
        "x" * 10_000,
    ]
    for token in bad:
        with pytest.raises(DomainError) as caught:
            _authenticate(database, token)
        assert caught.value.code is ErrorCode.UNAUTHENTICATED, token
        assert caught.value.message == service.UNAUTHENTICATED_MESSAGE
    assert _authenticate(database, key).id == view.id


def test_prefix_collisions_still_find_the_right_key(database: Database) -> None:
    """Two keys sharing a prefix (unlikely but possible): the hash decides."""
    view, key = _create(database)
    other = key[:12] + "Z" * (len(key) - 12)
    assert is_well_formed_api_key(other) and other != key
    with database.transaction() as session:
        session.add(
            ApiKey(
                id="key_collision", prefix=other[:12],
                secret_hash=hashlib.sha256(other.encode()).hexdigest(),
                role="risk", merchant_id=None, name="", created_at=NOW, revoked_at=None,
            )
        )  # fmt: skip
    assert _authenticate(database, key) == Principal(view.id, Role.ADMIN)
    assert _authenticate(database, other) == Principal("key_collision", Role.RISK)


def test_list_api_keys_by_merchant(database: Database, make_merchant: Callable[[], str]) -> None:
    a, b = make_merchant(), make_merchant()
    key_a, _ = _create(database, Role.MERCHANT, a)
    key_b, _ = _create(database, Role.MERCHANT, b)
    staff, _ = _create(database, Role.ADMIN)
    with database.transaction() as session:
        service.revoke_api_key(session, key_b.id)
    with database.read() as session:
        assert [v.id for v in service.list_api_keys(session)] == [key_a.id, key_b.id, staff.id]
        assert [v.id for v in service.list_api_keys(session, a)] == [key_a.id]
        assert [v.id for v in service.list_api_keys(session, b)] == [key_b.id]
        active = service.list_api_keys(session, include_revoked=False)
        assert [v.id for v in active] == [key_a.id, staff.id]
        with pytest.raises(DomainError) as caught:
            service.get_api_key(session, "key_missing")
        assert caught.value.code is ErrorCode.NOT_FOUND
    with database.transaction() as session, pytest.raises(DomainError) as caught:
        service.revoke_api_key(session, "key_missing")
    assert caught.value.code is ErrorCode.NOT_FOUND


def test_http_bearer_resolves_through_authenticate(
    database: Database, tmp_path: Path, make_merchant: Callable[[], str]
) -> None:
    """The API's dependency: a good key is a principal, anything else a 401 problem."""
    merchant_id = make_merchant()
    view, key = _create(database, Role.MERCHANT, merchant_id)
    revoked, revoked_key = _create(database)
    with database.transaction() as session:
        service.revoke_api_key(session, revoked.id)
    settings = Settings(data_dir=tmp_path, secret_key="11" * 32, database_url=database.url)
    app = create_app(settings, database=database)

    @app.get("/whoami")
    def whoami(principal: PrincipalDep) -> dict[str, str | None]:
        return {"id": principal.id, "role": principal.role, "merchant_id": principal.merchant_id}

    client = TestClient(app)
    ok = client.get("/whoami", headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200
    assert ok.json() == {"id": view.id, "role": "merchant", "merchant_id": merchant_id}
    for headers in (
        {},
        {"Authorization": f"Bearer {revoked_key}"},
        {"Authorization": "Bearer sk_m_nope"},
        {"Authorization": f"Basic {key}"},
    ):
        refused = client.get("/whoami", headers=headers)
        assert refused.status_code == 401, headers
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["code"] == "unauthenticated"


# -- tenant rules of a principal ------------------------------------------------------------


def test_principal_tenant_rules() -> None:
    merchant = Principal("key_m", Role.MERCHANT, "310581200010001")
    assert not merchant.is_staff
    assert merchant.can_see("310581200010001") and not merchant.can_see("310581200010002")
    merchant.require_merchant_access("310581200010001")
    with pytest.raises(DomainError) as caught:
        merchant.require_merchant_access("310581200010002", "payment")
    # another tenant's data is "not found", never "forbidden" (which would confirm it exists)
    assert caught.value.code is ErrorCode.NOT_FOUND and caught.value.message == "payment not found"
    with pytest.raises(DomainError) as caught:
        merchant.require_staff()
    assert caught.value.code is ErrorCode.FORBIDDEN

    for role in STAFF_ROLES:
        staff = Principal(f"key_{role}", role)
        assert staff.is_staff and staff.can_see("310581200010002")
        staff.require_staff()
        staff.require_merchant_access("310581200010002")
    Principal("a", Role.ADMIN).require_staff(Role.FINANCE)  # admin always passes
    Principal("f", Role.FINANCE).require_staff(Role.FINANCE, Role.RISK)
    with pytest.raises(DomainError) as caught:
        Principal("c", Role.CS_AGENT).require_staff(Role.APPROVER)
    assert caught.value.code is ErrorCode.FORBIDDEN

    with pytest.raises(ValueError, match="merchant"):
        Principal("x", Role.MERCHANT)
    with pytest.raises(ValueError, match="merchant"):
        Principal("x", Role.ADMIN, "310581200010001")


# -- the command ----------------------------------------------------------------------------


def test_cli_create_prints_the_key_alone_on_the_last_line(
    database: Database, make_merchant: Callable[[], str]
) -> None:
    merchant_id = make_merchant()
    runner = CliRunner()
    url = database.url

    staff = runner.invoke(
        cli_app, ["apikey", "create", "--role", "finance", "--name", "ops", "--database-url", url]
    )
    assert staff.exit_code == 0, staff.output
    lines = staff.stdout.splitlines()
    assert len(lines) >= 2 and KEY_SHAPE.fullmatch(lines[-1]) and lines[-1].startswith("sk_s_")
    assert lines[-1] not in "\n".join(lines[:-1])
    assert _authenticate(database, lines[-1]).role is Role.FINANCE

    merchant = runner.invoke(
        cli_app, ["apikey", "create", "--merchant", merchant_id, "--database-url", url]
    )
    assert merchant.exit_code == 0, merchant.output
    key = merchant.stdout.splitlines()[-1]
    assert key.startswith("sk_m_")
    principal = _authenticate(database, key)
    assert (principal.role, principal.merchant_id) == (Role.MERCHANT, merchant_id)

    listed = runner.invoke(cli_app, ["apikey", "list", "--database-url", url])
    assert listed.exit_code == 0 and principal.id in listed.stdout
    assert key not in listed.stdout and key[12:] not in listed.stdout
    revoked = runner.invoke(cli_app, ["apikey", "revoke", principal.id, "--database-url", url])
    assert revoked.exit_code == 0, revoked.output
    with pytest.raises(DomainError):
        _authenticate(database, key)


def test_cli_binds_a_staff_key_to_a_console_staff_user(
    database: Database, make_merchant: Callable[[], str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHOUDAN_SECRET_KEY", "11" * 32)
    monkeypatch.setenv("SHOUDAN_DATA_DIR", str(tmp_path))
    runner, url = CliRunner(), database.url
    made = runner.invoke(cli_app, ["web", "user", "create-staff", "--username", "li.approver",
                                   "--role", "approver", "--database-url", url])  # fmt: skip
    assert made.exit_code == 0, made.output
    user_id = made.stdout.split()[2]
    assert user_id.startswith("su_")

    create = ["apikey", "create", "--database-url", url]
    bound = runner.invoke(cli_app, [*create, "--role", "approver", "--staff-user", "li.approver"])
    assert bound.exit_code == 0, bound.output
    assert "held by staff user li.approver" in bound.stdout
    principal = _authenticate(database, bound.stdout.splitlines()[-1])
    assert (principal.role, principal.person, principal.who) == (Role.APPROVER, user_id, user_id)
    listed = runner.invoke(cli_app, ["apikey", "list", "--database-url", url])
    assert f"{principal.id}\t" in listed.stdout and user_id in listed.stdout

    for args, code in (
        (["--role", "finance", "--staff-user", "li.approver"], ErrorCode.INVALID_INPUT),
        (["--role", "approver", "--staff-user", "nobody.here"], ErrorCode.NOT_FOUND),
    ):
        result = runner.invoke(cli_app, ["apikey", "create", *args, "--database-url", url])
        assert isinstance(result.exception, DomainError), result.output
        assert result.exception.code is code
    mixed = runner.invoke(
        cli_app, [*create, "--merchant", make_merchant(), "--staff-user", "li.approver"]
    )
    assert mixed.exit_code == 2 and "--staff-user goes with --role" in mixed.output
    with database.read() as session:
        keys = session.scalars(select(ApiKey)).all()
    assert [key.person_id for key in keys] == [user_id]  # the refused ones wrote nothing


def test_a_merchant_key_never_has_a_staff_member(database: Database) -> None:
    with pytest.raises(ValueError, match="staff"):
        Principal("key_x", Role.MERCHANT, "898310058120001", person="su_x")
    with database.transaction() as session, pytest.raises(DomainError) as refused:
        service.create_api_key(session, role=Role.MERCHANT, merchant_id="898310058120001",
                               person_id="su_x")  # fmt: skip
    assert refused.value.code is ErrorCode.INVALID_INPUT


def test_cli_refuses_bad_combinations(database: Database, make_merchant: Callable[[], str]) -> None:
    runner = CliRunner()
    url = database.url
    merchant_id = make_merchant()
    for args in (
        [],
        ["--role", "admin", "--merchant", merchant_id],
    ):
        result = runner.invoke(cli_app, ["apikey", "create", *args, "--database-url", url])
        assert result.exit_code == 2, result.output
        assert "exactly one of --merchant and --role" in result.output
    for args, code in (
        (["--role", "merchant"], ErrorCode.INVALID_INPUT),
        (["--role", "superuser"], ErrorCode.INVALID_INPUT),
        (["--merchant", "999999999999999"], ErrorCode.MERCHANT_NOT_FOUND),
    ):
        result = runner.invoke(cli_app, ["apikey", "create", *args, "--database-url", url])
        assert isinstance(result.exception, DomainError), result.output
        assert result.exception.code is code
    with database.read() as session:
        assert service.list_api_keys(session) == []


def test_console_script_prints_the_key_last(database: Database, tmp_path: Path) -> None:
    """The installed ``shoudan`` command, as an operator runs it."""
    env = dict(os.environ, SHOUDAN_DATA_DIR=str(tmp_path), SHOUDAN_DATABASE_URL=database.url)
    done = subprocess.run(
        [SHOUDAN, "apikey", "create", "--role", "admin", "--name", "bootstrap"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    key = done.stdout.rstrip("\n").splitlines()[-1]
    assert KEY_SHAPE.fullmatch(key)
    assert _authenticate(database, key).role is Role.ADMIN
    refused = subprocess.run(
        [SHOUDAN, "apikey", "create", "--role", "merchant"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith("error: invalid_input")
