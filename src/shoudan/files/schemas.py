"""API shapes of files (pydantic; no web framework here)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shoudan.files.service import StoredFileView


class FileOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(examples=["file_01JD2Z5X8Q3V9M4N6P7R8S9T0A"])
    merchant_id: str | None = Field(description="null: a staff file tied to no merchant.")
    content_type: Literal["image/jpeg", "image/png", "application/pdf"] = Field(
        description="Detected from the content, not from the name or the declared type."
    )
    size_bytes: int
    sha256: str = Field(description="Hex SHA-256 of the bytes, re-checked on every read.")
    original_name: str = Field(description="Display name only (sanitised, ≤ 255 characters).")
    purpose: str
    created_at: datetime

    @classmethod
    def of(cls, view: StoredFileView) -> FileOut:
        return cls.model_validate(view)
