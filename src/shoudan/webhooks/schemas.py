"""API shapes of webhook endpoints, deliveries and the event log (pydantic)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from shoudan.webhooks.domain import DeliveryStatus
from shoudan.webhooks.service import CreatedEndpoint, DeliveryView, EndpointView, EventView


class EndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: StrictStr = Field(
        max_length=2048,
        description="https:// (http:// in development or to a loopback host).",
        examples=["https://shop.example.com/hooks/shoudan"],
    )
    event_types: list[StrictStr] = Field(
        min_length=1,
        max_length=32,
        description="Event types, a family wildcard (`refund.*`) or `*` for everything.",
        examples=[["refund.succeeded", "refund.failed"]],
    )
    description: StrictStr = Field(default="", max_length=255)
    merchant_id: StrictStr | None = Field(
        default=None,
        pattern=r"^[0-9]{1,15}$",
        description="Staff only: the merchant it belongs to.",
    )


class EndpointOut(BaseModel):
    id: str
    merchant_id: str
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    created_at: datetime
    disabled_at: datetime | None

    @classmethod
    def of(cls, view: EndpointView) -> EndpointOut:
        return cls(
            id=view.id,
            merchant_id=view.merchant_id,
            url=view.url,
            description=view.description,
            event_types=list(view.event_types),
            enabled=view.enabled,
            created_at=view.created_at,
            disabled_at=view.disabled_at,
        )


class EndpointCreatedOut(EndpointOut):
    secret: str = Field(
        description="Signing secret (`whsec_…`). Shown in this response only: store it now."
    )

    @classmethod
    def created(cls, created: CreatedEndpoint) -> EndpointCreatedOut:
        return cls(**EndpointOut.of(created.endpoint).model_dump(), secret=created.secret)


class DeliveryOut(BaseModel):
    id: str
    event_id: str
    endpoint_id: str
    attempt: int = Field(description="1 for the first attempt, then one more per retry.")
    status: DeliveryStatus
    http_status: int | None = Field(description="The endpoint's HTTP status; null if none.")
    response_excerpt: str | None = Field(description="The start of the answer (≤ 500 chars).")
    error: str | None
    duration_ms: int
    created_at: datetime

    @classmethod
    def of(cls, view: DeliveryView) -> DeliveryOut:
        return cls(
            id=view.id,
            event_id=view.event_id,
            endpoint_id=view.endpoint_id,
            attempt=view.attempt,
            status=view.status,
            http_status=view.http_status,
            response_excerpt=view.response_excerpt,
            error=view.error,
            duration_ms=view.duration_ms,
            created_at=view.created_at,
        )


class EventOut(BaseModel):
    """The same document that is POSTed to endpoints."""

    id: str
    type: str
    created_at: datetime
    merchant_id: str
    data: dict[str, Any]

    @classmethod
    def of(cls, view: EventView) -> EventOut:
        return cls(
            id=view.id,
            type=view.type,
            created_at=view.created_at,
            merchant_id=view.merchant_id,
            data=view.data,
        )
