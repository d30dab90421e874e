"""tests/leaks.py: an app built by a test is garbage once the test lets go of it."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from fastapi.testclient import TestClient

from shoudan.api.app import create_app
from shoudan.core.config import Settings
from shoudan.core.db import Database
from tests.leaks import forget_endpoints


def test_an_app_is_garbage_after_forget_endpoints(
    sqlite_database: Database, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, secret_key="11" * 32, database_url=sqlite_database.url)
    app = create_app(settings, database=sqlite_database)
    with TestClient(app) as client:
        assert client.get("/livez").status_code == 200
        assert client.get("/docs").status_code == 200  # the handler that closes over its app
    alive = weakref.ref(app)
    del app, client

    assert forget_endpoints() >= 3  # FastAPI's three callable caches, where 0.165 keeps them
    gc.collect()
    assert alive() is None, [type(r).__name__ for r in gc.get_referrers(alive())]
