"""Who is asking: a principal with a role, and, for merchants, the one merchant it may see.

Tenant isolation starts here: a merchant principal answers ``can_see(merchant_id)`` only for
its own merchant, and every query filters by it; an edge turns "cannot see" into 404, never
into a 403 that would confirm the object exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shoudan.core.errors import DomainError, ErrorCode


class Role(StrEnum):
    MERCHANT = "merchant"
    ADMIN = "admin"
    FINANCE = "finance"
    REVIEWER = "reviewer"
    APPROVER = "approver"
    RISK = "risk"
    CS_AGENT = "cs_agent"


STAFF_ROLES = frozenset(Role) - {Role.MERCHANT}


@dataclass(frozen=True, slots=True)
class Principal:
    id: str  # the API key id, user id, or "system:<name>"
    role: Role
    merchant_id: str | None = None  # set exactly when role is MERCHANT

    def __post_init__(self) -> None:
        if (self.role is Role.MERCHANT) != (self.merchant_id is not None):
            raise ValueError("a merchant principal has a merchant_id, and only it")

    @property
    def is_staff(self) -> bool:
        return self.role in STAFF_ROLES

    def can_see(self, merchant_id: str) -> bool:
        return self.is_staff or self.merchant_id == merchant_id

    def require_staff(self, *roles: Role) -> None:
        """Staff only (and, when ``roles`` are given, one of them; admin always passes)."""
        if not self.is_staff:
            raise DomainError(ErrorCode.FORBIDDEN, "this operation is for acquirer staff")
        if roles and self.role is not Role.ADMIN and self.role not in roles:
            raise DomainError(
                ErrorCode.FORBIDDEN, f"needs one of the roles {', '.join(sorted(roles))}"
            )

    def require_merchant_access(self, merchant_id: str, what: str = "merchant") -> None:
        """Not found, rather than forbidden, for another tenant's data."""
        if not self.can_see(merchant_id):
            raise DomainError(ErrorCode.NOT_FOUND, f"{what} not found")


SYSTEM = Principal("system", Role.ADMIN)
