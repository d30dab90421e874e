"""/v1/webhook-endpoints and /v1/events: where to send events, what was sent, the event log.

The signing secret is in the creation response only. An ``Idempotency-Key`` is refused on
creation: the stored response would keep the secret in clear for a day.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from shoudan.api.deps import ContainerDep, PrincipalDep
from shoudan.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, decode_cursor, encode_cursor
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.webhooks.schemas import (
    DeliveryOut,
    EndpointCreatedOut,
    EndpointIn,
    EndpointOut,
    EventOut,
)

endpoints_router = APIRouter(prefix="/v1/webhook-endpoints", tags=["webhooks"])
events_router = APIRouter(prefix="/v1/events", tags=["webhooks"])
router = APIRouter()  # both, for the app

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Cursor = Annotated[str | None, Query(max_length=512)]
# ids are ASCII letters, digits and "_": anything else (a NUL byte…) never reaches the database
ID_PATTERN = r"^[A-Za-z0-9_]{1,40}$"
EndpointId = Annotated[str, Path(pattern=ID_PATTERN)]
EventId = Annotated[str, Path(pattern=ID_PATTERN)]
MerchantFilter = Annotated[
    str | None, Query(pattern=r"^[0-9]{1,15}$", description="Staff only: one merchant's.")
]


@endpoints_router.post("", status_code=201, response_model=EndpointCreatedOut)
def create_endpoint(
    body: EndpointIn, request: Request, principal: PrincipalDep, container: ContainerDep
) -> EndpointCreatedOut:
    """Register an endpoint. The answer carries the signing secret, this once."""
    if getattr(request.state, "idempotency_key", None):
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            "Idempotency-Key is not accepted here: the answer holds a secret that must not be "
            "stored; after a lost answer, list the endpoints and disable the extra one",
        )
    created = container.webhooks.create_endpoint(
        principal, body.url, body.event_types, body.description, body.merchant_id
    )
    return EndpointCreatedOut.created(created)


@endpoints_router.get("", response_model=Page[EndpointOut])
def list_endpoints(
    principal: PrincipalDep,
    container: ContainerDep,
    merchant_id: MerchantFilter = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> Page[EndpointOut]:
    """Newest first. Merchants see only their own."""
    after = decode_cursor(cursor) if cursor else None
    rows = container.webhooks.list_endpoints(principal, limit + 1, after, merchant_id)
    page, more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if more else None
    return Page[EndpointOut](data=[EndpointOut.of(v) for v in page], next_cursor=next_cursor)


@endpoints_router.get("/{endpoint_id}", response_model=EndpointOut)
def get_endpoint(
    endpoint_id: EndpointId, principal: PrincipalDep, container: ContainerDep
) -> EndpointOut:
    return EndpointOut.of(container.webhooks.get_endpoint(principal, endpoint_id))


@endpoints_router.delete("/{endpoint_id}", response_model=EndpointOut)
def disable_endpoint(
    endpoint_id: EndpointId, principal: PrincipalDep, container: ContainerDep
) -> EndpointOut:
    """Disable the endpoint (nothing more is sent to it); its delivery log stays."""
    return EndpointOut.of(container.webhooks.disable_endpoint(principal, endpoint_id))


@endpoints_router.get("/{endpoint_id}/deliveries", response_model=Page[DeliveryOut])
def list_deliveries(
    endpoint_id: EndpointId,
    principal: PrincipalDep,
    container: ContainerDep,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> Page[DeliveryOut]:
    """Every delivery attempt to this endpoint, newest first."""
    after = decode_cursor(cursor) if cursor else None
    rows = container.webhooks.list_deliveries(principal, endpoint_id, limit + 1, after)
    page, more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if more else None
    return Page[DeliveryOut](data=[DeliveryOut.of(v) for v in page], next_cursor=next_cursor)


@events_router.get("", response_model=Page[EventOut])
def list_events(
    principal: PrincipalDep,
    container: ContainerDep,
    event_type: Annotated[
        str | None, Query(alias="type", max_length=64, description="A type, `refund.*` or `*`.")
    ] = None,
    merchant_id: MerchantFilter = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> Page[EventOut]:
    """The event log, newest first. Merchants see only their own events."""
    after = decode_cursor(cursor) if cursor else None
    rows = container.webhooks.list_events(principal, limit + 1, after, event_type, merchant_id)
    page, more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if more else None
    return Page[EventOut](data=[EventOut.of(v) for v in page], next_cursor=next_cursor)


@events_router.get("/{event_id}", response_model=EventOut)
def get_event(event_id: EventId, principal: PrincipalDep, container: ContainerDep) -> EventOut:
    return EventOut.of(container.webhooks.get_event(principal, event_id))


router.include_router(endpoints_router)
router.include_router(events_router)
