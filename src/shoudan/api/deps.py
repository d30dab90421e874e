"""FastAPI dependencies shared by every router: the container, the caller, the session.

``require_principal`` reads ``Authorization: Bearer <api key>`` and resolves it through
``shoudan.auth.service.authenticate``; a missing or unknown key is a 401 problem
(``unauthenticated``). Routers never look at headers themselves.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shoudan.auth.domain import Principal
from shoudan.container import Container
from shoudan.core.errors import DomainError, ErrorCode

bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer sk_…`")


def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


def require_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    from shoudan.auth.service import authenticate_key

    if credentials is None or credentials.scheme.lower() != "bearer":
        raise DomainError(ErrorCode.UNAUTHENTICATED, "an API key is required (Bearer)")
    container = get_container(request)
    with container.database.baton.held(), container.database.driver_read() as driver:
        principal = authenticate_key(driver, credentials.credentials)
    request.state.principal = principal
    return principal


ContainerDep = Annotated[Container, Depends(get_container)]
PrincipalDep = Annotated[Principal, Depends(require_principal)]
