"""API shapes of onboarding: applications, phone codes, review, contracts. Personal data goes
in clear in requests only; every response carries masked values."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shoudan.merchants.domain import MerchantType
from shoudan.onboarding.domain import ApplicationStatus, ContractStatus, KycStatus
from shoudan.onboarding.service import (
    ApplicationInput,
    ApplicationView,
    CodeSent,
    ContractView,
    MaterialsUpdate,
)


class ApplicationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    applicant_name: str = Field(max_length=50, description="The applicant's legal name.")
    phone: str = Field(max_length=20, description="Mainland mobile; a code is texted to it.")
    province: str = Field(max_length=32, examples=["广东"])
    city: str = Field(max_length=32, examples=["深圳"])
    product: str = Field(max_length=16, description="epos, smart or traditional.")
    merchant_type: MerchantType
    id_number: str = Field(max_length=32, description="Resident ID number (18 characters).")
    bank_card: str = Field(max_length=32, description="Settlement card; Luhn failure warns.")
    business_name: str = Field(max_length=100, description="The merchant's name.")
    business_address: str = Field(max_length=255)
    credit_code: str | None = Field(
        default=None, max_length=32, description="Unified social credit code (enterprise)."
    )
    bank_name: str | None = Field(
        default=None, max_length=100, description="Only when the card's BIN is unknown to us."
    )
    area_code: str | None = Field(
        default=None, max_length=4, description="UnionPay area code; derived from the city."
    )
    mcc: str | None = Field(default=None, max_length=4)

    def to_input(self) -> ApplicationInput:
        return ApplicationInput(**self.model_dump())


class MaterialsIn(BaseModel):
    """Fields to replace after a request for information (the phone cannot change)."""

    model_config = ConfigDict(extra="forbid")

    applicant_name: str | None = Field(default=None, max_length=50)
    province: str | None = Field(default=None, max_length=32)
    city: str | None = Field(default=None, max_length=32)
    product: str | None = Field(default=None, max_length=16)
    merchant_type: MerchantType | None = None
    id_number: str | None = Field(default=None, max_length=32)
    bank_card: str | None = Field(default=None, max_length=32)
    business_name: str | None = Field(default=None, max_length=100)
    business_address: str | None = Field(default=None, max_length=255)
    credit_code: str | None = Field(default=None, max_length=32)
    bank_name: str | None = Field(default=None, max_length=100)
    area_code: str | None = Field(default=None, max_length=4)
    mcc: str | None = Field(default=None, max_length=4)

    def to_update(self) -> MaterialsUpdate:
        return MaterialsUpdate(**self.model_dump())


class VerifyPhoneIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(max_length=16, description="The 6 digits texted to the phone.")


class RejectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(max_length=500)


class RequestInfoIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(max_length=500, description="What the applicant must provide.")


class ApproveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mcc: str | None = Field(default=None, max_length=4, description="Default: the application's.")
    area_code: str | None = Field(
        default=None, max_length=4, description="Default: the application's, or its city's."
    )


class AcceptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str | None = Field(
        default=None, max_length=64, description="The hash of the text shown; must match."
    )


class CodeSentOut(BaseModel):
    application_id: str
    phone: str = Field(description="Masked.")
    sent_at: datetime
    expires_at: datetime
    resend_after: datetime

    @classmethod
    def of(cls, sent: CodeSent) -> CodeSentOut:
        return cls(
            application_id=sent.application_id, phone=sent.phone, sent_at=sent.sent_at,
            expires_at=sent.expires_at, resend_after=sent.resend_after,
        )  # fmt: skip


class ApplicationOut(BaseModel):
    id: str
    status: ApplicationStatus
    kyc_status: KycStatus
    kyc_reasons: list[str]
    merchant_type: MerchantType
    product: str
    business_name: str
    business_address: str
    province: str
    city: str
    area_code: str | None
    mcc: str | None
    credit_code: str | None
    applicant_name: str = Field(description="Masked: 张*.")
    phone: str = Field(description="Masked: 138****5678.")
    phone_verified_at: datetime | None
    id_number: str = Field(description="Masked: 1101**********002X.")
    bank_card: str = Field(description="Masked: BIN and last four.")
    bank_name: str
    warnings: list[str] = Field(description="card_checksum: the card fails Luhn (a typo?).")
    info_request: str | None
    rejection_reason: str | None
    merchant_id: str | None
    contract_id: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, view: ApplicationView) -> ApplicationOut:
        data: dict[str, Any] = {name: getattr(view, name) for name in cls.model_fields}
        data["kyc_reasons"], data["warnings"] = list(view.kyc_reasons), list(view.warnings)
        return cls(**data)


class SubmittedOut(BaseModel):
    application: ApplicationOut
    application_token: str = Field(
        description="Shown once: send it as `X-Application-Token` for the next steps."
    )
    code: CodeSentOut


class ContractOut(BaseModel):
    contract_id: str
    merchant_id: str
    application_id: str | None
    product: str
    terms: dict[str, Any]
    text: str
    sha256: str = Field(description="SHA-256 of the UTF-8 text.")
    status: ContractStatus
    accepted_at: datetime | None
    accepted_ip: str | None
    accepted_user_agent: str | None
    accepted_sha256: str | None
    created_at: datetime

    @classmethod
    def of(cls, view: ContractView) -> ContractOut:
        data: dict[str, Any] = {name: getattr(view, name) for name in cls.model_fields}
        data["terms"] = view.terms.as_dict()
        return cls(**data)
