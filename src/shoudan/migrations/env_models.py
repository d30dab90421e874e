"""Every domain's tables, imported so that ``Base.metadata`` knows them all (for Alembic and
for the schema drift test)."""

import shoudan.audit.models
import shoudan.auth.models
import shoudan.ledger.models
import shoudan.merchants.models
import shoudan.notifications.models
import shoudan.payments.models
import shoudan.pricing.models
import shoudan.terminals.models  # noqa: F401
