"""Fee plan table. A plan is stored whole as JSON (``plan_to_dict``) so that a new rate, cap
or promotion needs no migration; the code is the key payments refer to."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from shoudan.core.db import Base
from shoudan.core.models import UTCDateTime


class FeePlanRecord(Base):
    __tablename__ = "fee_plans"

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    definition: Mapped[str] = mapped_column(Text)  # canonical JSON of the FeePlan
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
