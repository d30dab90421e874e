"""Every domain's tables, imported so that ``Base.metadata`` knows them all (for Alembic and
for the schema drift test)."""

import shoudan.audit.models
import shoudan.auth.models
import shoudan.deposits.models
import shoudan.files.models
import shoudan.gateway.models
import shoudan.ledger.models
import shoudan.merchants.models
import shoudan.notifications.models
import shoudan.onboarding.models
import shoudan.payments.models
import shoudan.pricing.models
import shoudan.reconciliation.models
import shoudan.refunds.models
import shoudan.settlement.models
import shoudan.sms.models
import shoudan.terminals.models
import shoudan.web.models
import shoudan.webhooks.models  # noqa: F401
