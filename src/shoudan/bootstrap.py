"""Reference data every installation needs: the platform's ledger accounts and the default
fee plans. Idempotent; run by ``shoudan db upgrade``, ``shoudan demo seed`` and at HTTP app
start-up, so a fresh database is usable right after its migrations."""

from __future__ import annotations

from shoudan.core.db import Database
from shoudan.ledger import chart
from shoudan.ledger.service import Ledger


def bootstrap(database: Database) -> None:
    from shoudan.pricing.service import ensure_default_plans

    ledger = Ledger(database)
    with database.transaction() as session:
        ledger.ensure_accounts(session, chart.platform_accounts())
        ensure_default_plans(session)
