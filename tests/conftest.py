"""Fixtures that give every test a fresh, migrated database on SQLite and on PostgreSQL.

The schema is always built by the Alembic migrations (never ``metadata.create_all``), so the
migrations are what the suite tests. Running them per test is slow, so each engine migrates a
template once per session and every test gets a copy: a file copy on SQLite, ``CREATE
DATABASE … TEMPLATE`` on PostgreSQL. ``blank_db_url`` (no schema) is for the tests that run
the migrations themselves.

Fixtures:

- ``pg_server`` (session): base URL ``postgresql+psycopg://postgres@127.0.0.1:PORT`` of a
  throwaway server; skips the test when none can start (fails instead when ``CI=true``).
- ``sqlite_url`` / ``pg_url`` (function): URL of a fresh migrated database, removed after.
- ``db_url`` (function): ``sqlite_url`` or ``pg_url``, parametrized with ids ``sqlite`` and
  ``postgresql`` (the latter marked ``postgres``).
- ``database`` / ``sqlite_database`` / ``pg_database``: a ``Database`` on those, disposed after.
- ``blank_db_url`` (function): an empty database (no migrations), on both engines.
- ``let_go_of_apps`` (autouse): empties FastAPI's callable caches after each test, which
  otherwise keep every app a worker builds alive (``tests/leaks.py``).
- ``browser`` (session) / ``page`` (function): Chromium driven by Playwright, from
  ``tests/web_world.py``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import settings
from pytest_postgresql import factories

from shoudan import migrations
from shoudan.core.config import get_settings
from shoudan.core.db import Database
from tests import pg
from tests.leaks import forget_endpoints
from tests.web_world import browser, page  # noqa: F401  (fixtures for the browser tests)

# CI explores the same examples on every run (a red CI must mean a change broke something,
# not that a random search got lucky today); developers' runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(
    "ci" if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"} else "dev"
)

# Containers built by tests keep the sandbox network's books in memory, never in a file under
# the repo's var/; tests of the file store (test_sandbox_store.py) name their file.
os.environ["SHOUDAN_SANDBOX_STATE_PATH"] = ":memory:"

ENGINES = ["sqlite", "postgresql"]
PG_TEMPLATE = "shoudan_template"

_BINDIR = pg.find_bindir()

# Only requested when we are not root (pytest-postgresql cannot start a server as root).
_pg_proc_unprivileged = factories.postgresql_proc(
    executable=str(_BINDIR / "pg_ctl") if _BINDIR else None,
    host="127.0.0.1",
    port=None,
    user="postgres",
    postgres_options=f"-c max_connections={pg.MAX_CONNECTIONS} {pg.SERVER_OPTIONS}",
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _unavailable(reason: str) -> None:
    """CI must run the PostgreSQL half of the suite; a laptop without PostgreSQL may skip it."""
    if _in_ci():
        pytest.fail(f"PostgreSQL is required in CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unavailable: {reason}")


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    """The CLI reads settings once per process (``get_settings`` is cached); a test that sets
    SHOUDAN_* variables must not see the settings an earlier test of the same worker cached."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def let_go_of_apps() -> Iterator[None]:
    """Without this every app a worker builds stays alive until the worker ends (tests/leaks.py)."""
    yield
    forget_endpoints()


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """Base URL of a throwaway PostgreSQL server for this session (one per xdist worker)."""
    if _BINDIR is None:
        _unavailable("no /usr/lib/postgresql/*/bin/pg_ctl (set PG_BINDIR)")
        return
    if os.geteuid() == 0:
        server = pg.RootPostgres(bindir=_BINDIR)
        try:
            server.start()
        except (pg.PostgresUnavailable, OSError, LookupError) as exc:
            # LookupError: shutil.chown when there is no ``postgres`` user.
            _unavailable(str(exc))
            return
        try:
            yield server.url
        finally:
            server.stop()
        return
    try:
        executor = request.getfixturevalue("_pg_proc_unprivileged")
    except Exception as exc:  # the plugin raises several types; all mean "no server"
        _unavailable(f"{type(exc).__name__}: {exc}")
        return
    yield pg.sqlalchemy_url(executor.user, executor.host, executor.port, executor.password)


@pytest.fixture(scope="session")
def pg_template(pg_server: str) -> str:
    """Name of a database migrated once per session, copied by each test."""
    pg.drop_database(pg_server, PG_TEMPLATE)
    url = pg.create_database(pg_server, PG_TEMPLATE)
    migrations.upgrade(url)
    return PG_TEMPLATE


@pytest.fixture
def pg_url(pg_server: str, pg_template: str) -> Iterator[str]:
    name = pg.unique_name("test")
    url = pg.create_database(pg_server, name, template=pg_template)
    yield url
    pg.drop_database(pg_server, name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per session (per xdist worker: basetemp is per worker)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    migrations.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "shoudan.db"
    # The backup API copies a consistent image whatever is still in the WAL.
    with closing(sqlite3.connect(sqlite_template)) as source, closing(sqlite3.connect(path)) as dst:
        source.backup(dst)
    return f"sqlite:///{path}"


@pytest.fixture(params=ENGINES, ids=ENGINES)
def blank_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database with no schema, for tests that run the migrations themselves."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'blank.db'}"
        return
    server: str = request.getfixturevalue("pg_server")
    name = pg.unique_name("blank")
    url = pg.create_database(server, name)
    yield url
    pg.drop_database(server, name)


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh migrated database on each engine: the same test runs on both."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(fixture)
    return url


def _open(url: str) -> Iterator[Database]:
    database = Database(url)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    yield from _open(db_url)


@pytest.fixture
def sqlite_database(sqlite_url: str) -> Iterator[Database]:
    yield from _open(sqlite_url)


@pytest.fixture
def pg_database(pg_url: str) -> Iterator[Database]:
    yield from _open(pg_url)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that reaches PostgreSQL, so ``-m 'not postgres'`` leaves them out."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        uses_pg = bool(names & {"pg_server", "pg_url", "pg_database", "pg_template"})
        uses_pg = uses_pg or params.get("blank_db_url") == "postgresql"
        if uses_pg:
            item.add_marker(pytest.mark.postgres)
