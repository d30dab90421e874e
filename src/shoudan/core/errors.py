"""Stable error codes and the one exception type the domains raise.

Codes are part of the public contract (API problem types, gateway field 39 mappings,
CLI exit messages): add new members, never rename or reuse one.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    # input
    INVALID_INPUT = "invalid_input"
    INVALID_AMOUNT = "invalid_amount"
    INVALID_CURRENCY = "invalid_currency"
    CURRENCY_MISMATCH = "currency_mismatch"
    NOT_FOUND = "not_found"
    # ledger
    ACCOUNT_NOT_FOUND = "account_not_found"
    ACCOUNT_EXISTS = "account_exists"
    ACCOUNT_CONFLICT = "account_conflict"
    ENTRY_UNBALANCED = "entry_unbalanced"
    ENTRY_TOO_FEW_POSTINGS = "entry_too_few_postings"
    ENTRY_ID_CONFLICT = "entry_id_conflict"
    LIMIT_EXCEEDED = "limit_exceeded"
    HOLD_NOT_FOUND = "hold_not_found"
    HOLD_ALREADY_RESOLVED = "hold_already_resolved"
    HOLD_EXPIRED = "hold_expired"
    HOLD_AMOUNT_EXCEEDED = "hold_amount_exceeded"
    HOLD_PARTIAL_NOT_SUPPORTED = "hold_partial_not_supported"
    LINKED_ENTRY_FAILED = "linked_entry_failed"
    # audit / outbox
    AUDIT_CHAIN_BROKEN = "audit_chain_broken"
    UNKNOWN_EVENT_TOPIC = "unknown_event_topic"
    # auth and API edge
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    IDEMPOTENCY_KEY_IN_USE = "idempotency_key_in_use"
    # merchants, terminals, pricing
    MERCHANT_NOT_FOUND = "merchant_not_found"
    MERCHANT_INACTIVE = "merchant_inactive"
    TERMINAL_NOT_FOUND = "terminal_not_found"
    TERMINAL_EXISTS = "terminal_exists"
    TERMINAL_INACTIVE = "terminal_inactive"
    TERMINAL_MERCHANT_MISMATCH = "terminal_merchant_mismatch"
    FEE_PLAN_NOT_FOUND = "fee_plan_not_found"
    INVALID_PHONE = "invalid_phone"
    INVALID_MCC = "invalid_mcc"
    INVALID_AREA_CODE = "invalid_area_code"
    # payments
    PAYMENT_NOT_FOUND = "payment_not_found"
    INVALID_TRANSITION = "invalid_transition"
    INVALID_CARD = "invalid_card"
    INVALID_AUTH_CODE = "invalid_auth_code"
    UNSUPPORTED_METHOD = "unsupported_method"
    VOID_NOT_ALLOWED = "void_not_allowed"
    CAPTURE_NOT_ALLOWED = "capture_not_allowed"
    CAPTURE_EXCEEDS_AUTHORIZED = "capture_exceeds_authorized"
    CHANNEL_UNAVAILABLE = "channel_unavailable"
    # refunds
    REFUND_NOT_FOUND = "refund_not_found"
    REFUND_EXCEEDS_REFUNDABLE = "refund_exceeds_refundable"
    REFUND_NOT_ALLOWED = "refund_not_allowed"
    REFUND_WINDOW_EXPIRED = "refund_window_expired"
    REFUND_COUNT_EXCEEDED = "refund_count_exceeded"
    USE_VOID = "use_void"
    OUT_REFUND_NO_REUSED = "out_refund_no_reused"
    SELF_APPROVAL = "self_approval"
    ALREADY_APPROVED = "already_approved"
    REDEMPTION_EXCEEDS_REMAINDER = "redemption_exceeds_remainder"
    NOT_A_PREPAYMENT = "not_a_prepayment"
    INVALID_BANK_ACCOUNT = "invalid_bank_account"
    RATE_LIMITED = "rate_limited"
    REQUEST_TOO_LARGE = "request_too_large"
    # files
    FILE_NOT_FOUND = "file_not_found"
    FILE_TOO_LARGE = "file_too_large"
    UNSUPPORTED_FILE_TYPE = "unsupported_file_type"
    FILE_CONTENT_MISMATCH = "file_content_mismatch"
    # webhooks
    WEBHOOK_ENDPOINT_NOT_FOUND = "webhook_endpoint_not_found"
    INVALID_WEBHOOK_URL = "invalid_webhook_url"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    # deposits
    DEPOSIT_NOT_FOUND = "deposit_not_found"
    DEPOSIT_REFUND_NOT_FOUND = "deposit_refund_not_found"
    DEPOSIT_MATERIALS_MISMATCH = "deposit_materials_mismatch"
    DEPOSIT_REFUND_DEADLINE_PASSED = "deposit_refund_deadline_passed"
    DEPOSIT_REFUND_IN_PROGRESS = "deposit_refund_in_progress"
    DEPOSIT_NOT_REFUNDABLE = "deposit_not_refundable"
    SETTLEMENT_ACCOUNT_NOT_VERIFIED = "settlement_account_not_verified"
    # onboarding and contracts
    INVALID_ID_NUMBER = "invalid_id_number"
    INVALID_CREDIT_CODE = "invalid_credit_code"
    VERIFICATION_CODE_INVALID = "verification_code_invalid"
    VERIFICATION_CODE_EXPIRED = "verification_code_expired"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    TOO_MANY_CODES = "too_many_codes"
    RESEND_TOO_SOON = "resend_too_soon"
    APPLICATION_NOT_FOUND = "application_not_found"
    CONTRACT_NOT_FOUND = "contract_not_found"
    CONTRACT_NOT_ACCEPTED = "contract_not_accepted"
    CONTRACT_ALREADY_ACCEPTED = "contract_already_accepted"
    # reconciliation
    STATEMENT_INVALID = "statement_invalid"
    RECONCILIATION_NOT_FOUND = "reconciliation_not_found"
    RECONCILIATION_EXCEPTION_NOT_FOUND = "reconciliation_exception_not_found"
    EXCEPTION_ALREADY_RESOLVED = "exception_already_resolved"
    # settlement and payouts
    SETTLEMENT_DATE_IN_FUTURE = "settlement_date_in_future"
    PAYOUT_NOT_FOUND = "payout_not_found"
    BANK_FILE_INVALID = "bank_file_invalid"
    # infrastructure
    CONFIGURATION_ERROR = "configuration_error"
    SERVICE_UNAVAILABLE = "service_unavailable"
    INTERNAL_ERROR = "internal_error"


class DomainError(Exception):
    """A business rule refused the request. Carries a stable code, no transport detail."""

    def __init__(self, code: ErrorCode, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def __repr__(self) -> str:
        return f"DomainError({self.code.value!r}, {self.message!r})"

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"
