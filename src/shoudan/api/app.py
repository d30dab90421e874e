"""The FastAPI application: health, OpenAPI, offline docs, and the error mapping.

The docs pages (``/docs``, ``/redoc``) are served from assets shipped in the
``fastapi-offline`` package, never from a CDN: acquirer back offices often run on networks
with no way out, and a page that loads third-party script is a supply-chain risk.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from shoudan import __version__
from shoudan.api.errors import PROBLEM_JSON, PROBLEM_RESPONSES, install_error_handlers, problem
from shoudan.api.guards import RejectNulMiddleware
from shoudan.api.idempotency import IdempotencyMiddleware
from shoudan.api.ratelimit import RateLimiter
from shoudan.api.routers import (
    applications,
    contracts,
    files,
    merchants,
    payments,
    refunds,
    settlements,
    terminals,
    webhooks,
)
from shoudan.api.routers import deposits as deposit_routes
from shoudan.api.routers import reconciliation as reconciliation_routes
from shoudan.bootstrap import bootstrap
from shoudan.container import Container, build_container
from shoudan.core.config import Settings, get_settings
from shoudan.core.db import Database
from shoudan.core.errors import ErrorCode
from shoudan.gateway import metrics as _gateway_metrics  # noqa: F401 (families shown from the start)
from shoudan.web.pages import install_web

log = logging.getLogger(__name__)

STATIC_URL = "/static/docs"


class Health(BaseModel):
    status: Literal["ok"]
    database: str
    version: str


def create_app(
    settings: Settings | None = None,
    database: Database | None = None,
    container: Container | None = None,
) -> FastAPI:
    """Build the app. A ``database`` (or ``container``) passed in stays the caller's to
    dispose; one the app opens itself (from ``settings``) is disposed when the app shuts
    down."""
    if container is not None:
        settings, database = container.settings, container.database
    settings = settings or get_settings()
    owned = database is None
    db = database if database is not None else Database(
        settings.resolved_database_url(), group_commit=settings.sqlite_group_commit
    )
    container = container or build_container(settings, db)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            bootstrap(db)  # platform accounts, default fee plans (idempotent)
        except Exception:
            # an unreachable or unmigrated database: /healthz says so, payments will fail
            log.exception("start-up: could not ensure the platform's reference data")
        try:
            yield
        finally:
            if owned:
                db.dispose()

    app = FastAPIOffline(
        title="shoudan",
        version=__version__,
        description="shoudan (收单): back office for a POS acquirer.",
        static_url=STATIC_URL,
        # No call to the public spec validator: the docs page must work offline.
        swagger_ui_parameters={"validatorUrl": None},
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.database = db
    app.state.container = container
    app.state.public_limiter = RateLimiter(settings.public_rate_limit_per_minute)
    install_error_handlers(app)
    app.add_middleware(
        IdempotencyMiddleware, database_getter=lambda: db, clock=container.clock,
        max_body_bytes=settings.max_upload_bytes + 64 * 1024,  # an upload and its framing
    )  # fmt: skip
    app.add_middleware(RejectNulMiddleware)  # outermost: before anything touches the database

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    def metrics() -> Response:
        """Prometheus text format: the ISO 8583 gateway's counters and latency histogram
        (when the gateway runs in this process: ``shoudan serve --iso-port``)."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/livez", tags=["operations"])
    def livez() -> dict[str, str]:
        """Liveness only: the process answers (no database). Also the benchmark baseline."""
        return {"status": "ok"}

    @app.get(
        "/healthz",
        response_model=Health,
        tags=["operations"],
        responses={503: {"description": "Database unreachable.", "content": {PROBLEM_JSON: {}}}},
    )
    def healthz(request: Request) -> Health | JSONResponse:
        """Liveness and readiness: the process answers and its database answers ``SELECT 1``."""
        database: Database = request.app.state.database
        try:
            with database.read() as session:
                session.execute(text("SELECT 1")).scalar_one()
        except Exception:
            log.exception("health check: database unreachable")
            return problem(
                ErrorCode.SERVICE_UNAVAILABLE,
                503,
                "database unavailable",
                instance=request.url.path,
                database=database.dialect,
            )
        return Health(status="ok", database=database.dialect, version=__version__)

    # Routes are matched in order, one by one: the busiest (payments, refunds) first and the
    # web console's many pages last, so an API call does not try every page's pattern.
    for router in (
        payments.router, refunds.router, refunds.payments_router, refunds.public_router,
        merchants.router, terminals.router, files.router, webhooks.router,
        applications.router, contracts.router,
        terminals.public_router,
        deposit_routes.router, deposit_routes.terminals_router,
        reconciliation_routes.router, reconciliation_routes.exceptions_router,
        settlements.router,
    ):
        app.include_router(router, responses=PROBLEM_RESPONSES)

    install_web(app)  # the web console (shoudan.web): pages, static files, security headers
    return app
