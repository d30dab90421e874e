"""Onboarding use cases: apply, verify the phone by SMS code, real-name check (KYC), staff
review, and the contract a merchant accepts.

Two kinds of functions:

* ``session`` first: they run in the caller's transaction (staff review, contracts — the
  interface other domains call: ``generate_contract``, ``accepted_contract``…);
* ``database`` first: the applicant's steps that talk to the outside (SMS, the real-name
  service). Each commits its own transaction *before* the outside call, so a slow provider
  holds no lock, and a wrong code's attempt is counted even though the call fails.

Personal data is encrypted with the vault and only masked values leave in a view. The
applicant, who has no API key, proves who they are with the application token returned once
at submission (stored as its SHA-256).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shoudan.audit.service import record
from shoudan.core.clock import SHANGHAI, Clock
from shoudan.core.crypto import Vault, mask_card, mask_phone
from shoudan.core.db import Database, Keyset, load_row, newest_first
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.ids import new_id
from shoudan.ledger.service import Ledger
from shoudan.merchants.domain import (
    MerchantType,
    validate_area_code,
    validate_mcc,
    validate_merchant_type,
    validate_name,
)
from shoudan.merchants.service import (
    MerchantInput,
    SettlementAccountInput,
    create_merchant,
    get_merchant,
    verify_settlement_account,
)
from shoudan.onboarding.domain import (
    CODE_TTL,
    RESEND_INTERVAL,
    ApplicationStatus,
    ContractStatus,
    KycResult,
    KycStatus,
    RealNameSubject,
    RealNameVerifier,
    area_code_for,
    bank_for_card,
    card_warnings,
    check_can_send,
    check_code_usable,
    clean_card_number,
    code_message,
    code_shape_ok,
    mask_id_number,
    mask_name,
    new_code,
    render_contract_text,
    shanghai_day_start,
    text_sha256,
    transition,
    validate_credit_code,
    validate_id_number,
    wrong_code,
)
from shoudan.onboarding.models import Application, Contract, PhoneCode, StatusHistory
from shoudan.onboarding.terms import ContractTerms, terms_for
from shoudan.sms.domain import validate_mobile
from shoudan.sms.service import SmsProvider, charge_address

log = logging.getLogger(__name__)

NAME_CONTEXT = "onboarding:applicant_name"
PHONE_CONTEXT = "onboarding:phone"
ID_CONTEXT = "onboarding:id_number"
CARD_CONTEXT = "onboarding:bank_card"
TOKEN_PREFIX = "apt_"  # noqa: S105 (a prefix, not a secret)
DEFAULT_MCC = "5411"  # grocery stores: the reviewer sets the real one at approval
SMS_PURPOSE = "onboarding.otp"
TEXT_MAX = 500
MAX_ID_LENGTH = 32


# -- inputs and views ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ApplicationInput:
    applicant_name: str
    phone: str
    province: str
    city: str
    product: str
    merchant_type: str
    id_number: str
    bank_card: str
    business_name: str
    business_address: str
    credit_code: str | None = None  # required for an enterprise
    bank_name: str | None = None  # used only when the card's BIN is not in our table
    area_code: str | None = None  # UnionPay area code; derived from the city when known
    mcc: str | None = None


@dataclass(frozen=True, slots=True)
class MaterialsUpdate:
    """The applicant's answer to a request for information: the fields given replace the
    application's (the phone cannot change: it was verified)."""

    applicant_name: str | None = None
    province: str | None = None
    city: str | None = None
    product: str | None = None
    merchant_type: str | None = None
    id_number: str | None = None
    bank_card: str | None = None
    business_name: str | None = None
    business_address: str | None = None
    credit_code: str | None = None
    bank_name: str | None = None
    area_code: str | None = None
    mcc: str | None = None


@dataclass(frozen=True, slots=True)
class ApplicationView:
    id: str
    status: ApplicationStatus
    kyc_status: KycStatus
    kyc_reasons: tuple[str, ...]
    merchant_type: MerchantType
    product: str
    business_name: str
    business_address: str
    province: str
    city: str
    area_code: str | None
    mcc: str | None
    credit_code: str | None
    applicant_name: str  # masked: 张*
    phone: str  # masked: 138****5678
    phone_verified_at: datetime | None
    id_number: str  # masked: 1101**********002X
    bank_card: str  # masked: 621700*********5677
    bank_name: str
    warnings: tuple[str, ...]
    info_request: str | None
    rejection_reason: str | None
    merchant_id: str | None
    contract_id: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class CodeSent:
    application_id: str
    phone: str  # masked
    sent_at: datetime
    expires_at: datetime
    resend_after: datetime


@dataclass(frozen=True, slots=True)
class SubmittedApplication:
    application: ApplicationView
    application_token: str  # shown once; only its hash is kept
    code: CodeSent


@dataclass(frozen=True, slots=True)
class ContractView:
    contract_id: str
    merchant_id: str
    application_id: str | None
    product: str
    terms: ContractTerms
    text: str
    sha256: str
    status: ContractStatus
    accepted_at: datetime | None
    accepted_ip: str | None
    accepted_user_agent: str | None
    accepted_sha256: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StatusChange:
    subject_type: str
    subject_id: str
    from_status: str | None
    to_status: str
    reason: str
    actor: str
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class ApplicationPage:
    items: list[ApplicationView]
    next_cursor: Keyset | None


# -- cleaning ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Clean:
    applicant_name: str
    phone: str
    province: str
    city: str
    product: str
    merchant_type: MerchantType
    id_number: str
    bank_card: str
    bank_name: str
    warnings: list[str]
    business_name: str
    business_address: str
    credit_code: str | None
    area_code: str | None
    mcc: str | None


def _optional(value: str | None) -> str | None:
    return value.strip() or None if isinstance(value, str) else value


def _clean_credit_code(value: str | None, merchant_type: MerchantType) -> str | None:
    if _optional(value) is None:
        if merchant_type is MerchantType.ENTERPRISE:
            raise DomainError(
                ErrorCode.INVALID_CREDIT_CODE,
                "credit code: required for an enterprise",
                field="credit_code",
                check="missing",
            )
        return None
    return validate_credit_code(value)


def _bank_name(card: str, given: str | None) -> str:
    known = bank_for_card(card)
    if known is not None:
        return known
    if _optional(given) is None:
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            "bank_name: the card's bank is not in our BIN table, give its name",
            field="bank_name",
        )
    return validate_name(given, "bank_name")


def _clean(data: ApplicationInput, now: datetime) -> _Clean:
    merchant_type = validate_merchant_type(data.merchant_type)
    card = clean_card_number(data.bank_card)
    area_code, mcc = _optional(data.area_code), _optional(data.mcc)
    return _Clean(
        applicant_name=validate_name(data.applicant_name, "applicant_name", 50),
        phone=validate_mobile(data.phone),
        province=validate_name(data.province, "province", 32),
        city=validate_name(data.city, "city", 32),
        product=terms_for(data.product).product,
        merchant_type=merchant_type,
        id_number=validate_id_number(data.id_number, now.astimezone(SHANGHAI).date()),
        bank_card=card,
        bank_name=_bank_name(card, data.bank_name),
        warnings=card_warnings(card),
        business_name=validate_name(data.business_name, "business_name", 100),
        business_address=validate_name(data.business_address, "business_address", 255),
        credit_code=_clean_credit_code(data.credit_code, merchant_type),
        area_code=None if area_code is None else validate_area_code(area_code),
        mcc=None if mcc is None else validate_mcc(mcc),
    )


def _columns(vault: Vault, clean: _Clean) -> dict[str, Any]:
    """Every application column that comes from the applicant (the phone aside)."""
    return {
        "applicant_name_enc": vault.encrypt(clean.applicant_name, NAME_CONTEXT),
        "applicant_name_masked": mask_name(clean.applicant_name),
        "id_number_enc": vault.encrypt(clean.id_number, ID_CONTEXT),
        "id_number_hash": vault.lookup_hash(clean.id_number, ID_CONTEXT),
        "id_number_masked": mask_id_number(clean.id_number),
        "card_enc": vault.encrypt(clean.bank_card, CARD_CONTEXT),
        "card_hash": vault.lookup_hash(clean.bank_card, CARD_CONTEXT),
        "card_masked": mask_card(clean.bank_card),
        "bank_name": clean.bank_name,
        "warnings": json.dumps(clean.warnings),
        "merchant_type": clean.merchant_type.value,
        "product": clean.product,
        "business_name": clean.business_name,
        "business_address": clean.business_address,
        "province": clean.province,
        "city": clean.city,
        "area_code": clean.area_code,
        "mcc": clean.mcc,
        "credit_code": clean.credit_code,
    }


def _decrypted_input(vault: Vault, row: Application) -> ApplicationInput:
    return ApplicationInput(
        applicant_name=vault.decrypt(row.applicant_name_enc, NAME_CONTEXT),
        phone=vault.decrypt(row.phone_enc, PHONE_CONTEXT),
        province=row.province, city=row.city, product=row.product,
        merchant_type=row.merchant_type,
        id_number=vault.decrypt(row.id_number_enc, ID_CONTEXT),
        bank_card=vault.decrypt(row.card_enc, CARD_CONTEXT),
        business_name=row.business_name, business_address=row.business_address,
        credit_code=row.credit_code, bank_name=row.bank_name, area_code=row.area_code,
        mcc=row.mcc,
    )  # fmt: skip


# -- helpers -------------------------------------------------------------------------------------
def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def application_not_found() -> DomainError:
    return DomainError(ErrorCode.APPLICATION_NOT_FOUND, "application not found")


def contract_not_found() -> DomainError:
    return DomainError(ErrorCode.CONTRACT_NOT_FOUND, "contract not found")


def _load(session: Session, application_id: str, *, for_update: bool = False) -> Application:
    if not isinstance(application_id, str) or len(application_id) > MAX_ID_LENGTH:
        raise application_not_found()
    row: Application | None = load_row(
        session, Application.id, application_id, for_update=for_update
    )
    if row is None:
        raise application_not_found()
    return row


def _applicant_row(
    session: Session, application_id: str, token: str | None, *, for_update: bool = False
) -> Application:
    """The application if ``token`` is its token; otherwise the same not-found as a missing
    one (a token does not tell whether another application exists)."""
    row = _load(session, application_id, for_update=for_update)
    if not token or not hmac.compare_digest(_token_hash(token), row.token_hash):
        raise application_not_found()
    return row


def _contract_id_of(session: Session, application_id: str) -> str | None:
    return session.scalar(
        select(Contract.contract_id)
        .where(Contract.application_id == application_id)
        .order_by(Contract.created_at.desc())
        .limit(1)
    )


def _view(session: Session, row: Application) -> ApplicationView:
    return ApplicationView(
        id=row.id, status=ApplicationStatus(row.status), kyc_status=KycStatus(row.kyc_status),
        kyc_reasons=tuple(json.loads(row.kyc_reasons)),
        merchant_type=MerchantType(row.merchant_type), product=row.product,
        business_name=row.business_name, business_address=row.business_address,
        province=row.province, city=row.city, area_code=row.area_code, mcc=row.mcc,
        credit_code=row.credit_code, applicant_name=row.applicant_name_masked,
        phone=row.phone_masked, phone_verified_at=row.phone_verified_at,
        id_number=row.id_number_masked, bank_card=row.card_masked, bank_name=row.bank_name,
        warnings=tuple(json.loads(row.warnings)), info_request=row.info_request,
        rejection_reason=row.rejection_reason, merchant_id=row.merchant_id,
        contract_id=_contract_id_of(session, row.id), created_at=row.created_at,
        updated_at=row.updated_at,
    )  # fmt: skip


def _history(
    session: Session, subject_type: str, subject_id: str, from_status: str | None,
    to_status: str, *, reason: str, actor: str, at: datetime,
) -> None:  # fmt: skip
    session.add(
        StatusHistory(
            id=new_id(), subject_type=subject_type, subject_id=subject_id,
            from_status=from_status, to_status=to_status, reason=reason[:TEXT_MAX],
            actor=actor, occurred_at=at,
        )
    )  # fmt: skip


def _move(
    session: Session, row: Application, target: ApplicationStatus, *, reason: str, actor: str,
    clock: Clock, action: str, columns: dict[str, Any] | None = None,
) -> ApplicationView:  # fmt: skip
    """Change the application's status (and ``columns``) with its history row and audit
    record."""
    before = _view(session, row)
    source = row.status
    for name, value in (columns or {}).items():
        setattr(row, name, value)
    row.status = transition(source, target).value
    row.updated_at = clock.now()
    _history(session, "application", row.id, source, row.status, reason=reason, actor=actor,
             at=row.updated_at)  # fmt: skip
    session.flush()
    after = _view(session, row)
    record(
        session, actor=actor, action=action, subject_type="application", subject_id=row.id,
        before=asdict(before), after=asdict(after), clock=clock,
    )  # fmt: skip
    return after


def _applicant(application_id: str) -> str:
    return f"applicant:{application_id}"


def _text(value: object, field: str) -> str:
    return validate_name(value, field, TEXT_MAX)


# -- phone codes ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Outgoing:
    phone: str
    code: str
    code_id: str
    sent: CodeSent


def _issue_code(session: Session, vault: Vault, row: Application, now: datetime) -> _Outgoing:
    """A new code for the application's phone, within the phone's limits (the caller holds the
    application's row lock)."""
    sent_today = session.scalar(
        select(func.count()).select_from(PhoneCode).where(
            PhoneCode.phone_hash == row.phone_hash,
            PhoneCode.created_at >= shanghai_day_start(now),
        )
    ) or 0  # fmt: skip
    last_sent_at = session.scalar(
        select(func.max(PhoneCode.created_at)).where(PhoneCode.phone_hash == row.phone_hash)
    )
    check_can_send(now, last_sent_at, sent_today)
    code, code_id = new_code(), new_id("otp_")
    session.add(
        PhoneCode(
            id=code_id, application_id=row.id, phone_hash=row.phone_hash,
            code_hash=vault.lookup_hash(code, f"onboarding:otp:{code_id}"), attempts=0,
            created_at=now, expires_at=now + CODE_TTL, used_at=None,
        )
    )  # fmt: skip
    session.flush()
    phone = vault.decrypt(row.phone_enc, PHONE_CONTEXT)
    sent = CodeSent(row.id, row.phone_masked, now, now + CODE_TTL, now + RESEND_INTERVAL)
    return _Outgoing(phone, code, code_id, sent)


def _deliver(sms: SmsProvider, outgoing: _Outgoing) -> None:
    # after the commit: the code exists even if the provider fails (the applicant resends)
    sms.send(outgoing.phone, code_message(outgoing.code), SMS_PURPOSE, f"otp:{outgoing.code_id}")


def _latest_code(session: Session, application_id: str) -> PhoneCode | None:
    return session.scalars(
        select(PhoneCode)
        .where(PhoneCode.application_id == application_id)
        .order_by(PhoneCode.created_at.desc(), PhoneCode.id.desc())
        .limit(1)
        .with_for_update()
    ).first()


def _try_code(
    session: Session, vault: Vault, row: Application, code: str, now: datetime
) -> DomainError | None:
    """Check ``code`` against the application's latest code. A dead code raises (nothing
    changes); a wrong one counts an attempt and returns the error to raise after commit."""
    latest = _latest_code(session, row.id)
    if latest is None:
        raise DomainError(ErrorCode.VERIFICATION_CODE_INVALID, "no code was sent: ask for one")
    check_code_usable(now, latest.expires_at, latest.attempts)
    expected = latest.code_hash
    given = vault.lookup_hash(code, f"onboarding:otp:{latest.id}") if code_shape_ok(code) else ""
    if not hmac.compare_digest(expected, given):
        latest.attempts += 1
        return wrong_code(latest.attempts)
    latest.used_at = now
    return None


def _already_verified() -> DomainError:
    return DomainError(ErrorCode.INVALID_TRANSITION, "the phone is already verified")


# -- the applicant's steps -----------------------------------------------------------------------
def submit_application(
    database: Database, vault: Vault, sms: SmsProvider, data: ApplicationInput, *, clock: Clock,
    client: str | None = None,
) -> SubmittedApplication:  # fmt: skip
    """Validate and store an application, text a verification code to its phone, and return
    the application token (once). Any refusal stores nothing and sends nothing. ``client``
    (the requester's network address) is charged one code of its daily budget."""
    now = clock.now()
    clean = _clean(data, now)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with database.transaction() as session:
        if client is not None:
            charge_address(session, vault, client, now)
        row = Application(
            id=new_id("app_"), status=ApplicationStatus.PHONE_PENDING.value,
            kyc_status=KycStatus.PENDING.value, kyc_reasons="[]",
            phone_enc=vault.encrypt(clean.phone, PHONE_CONTEXT),
            phone_hash=vault.lookup_hash(clean.phone, PHONE_CONTEXT),
            phone_masked=mask_phone(clean.phone), token_hash=_token_hash(token),
            created_at=now, updated_at=now, **_columns(vault, clean),
        )  # fmt: skip
        session.add(row)
        session.flush()
        outgoing = _issue_code(session, vault, row, now)
        actor = _applicant(row.id)
        _history(session, "application", row.id, None, row.status, reason="submitted",
                 actor=actor, at=now)  # fmt: skip
        view = _view(session, row)
        record(
            session, actor=actor, action="application.submit", subject_type="application",
            subject_id=row.id, after=asdict(view), clock=clock,
        )  # fmt: skip
    _deliver(sms, outgoing)
    return SubmittedApplication(view, token, outgoing.sent)


def send_code(
    database: Database, vault: Vault, sms: SmsProvider, application_id: str, token: str | None,
    *, clock: Clock, client: str | None = None,
) -> CodeSent:  # fmt: skip
    """Text a new code (the previous one stops working): 60 s after the last one to this
    phone at the earliest, 10 a day per phone at most, and within ``client``'s daily budget
    of codes (``sms.domain.CODES_PER_ADDRESS_PER_DAY``)."""
    with database.transaction() as session:
        row = _applicant_row(session, application_id, token, for_update=True)
        if row.status != ApplicationStatus.PHONE_PENDING.value:
            raise _already_verified()
        if client is not None:
            charge_address(session, vault, client, clock.now())
        outgoing = _issue_code(session, vault, row, clock.now())
    _deliver(sms, outgoing)
    return outgoing.sent


def verify_phone(
    database: Database, vault: Vault, verifier: RealNameVerifier, application_id: str,
    token: str | None, code: str, *, clock: Clock,
) -> ApplicationView:  # fmt: skip
    """Check the SMS code; on success the application goes to review and the real-name check
    runs. A wrong code counts one attempt of the five."""
    with database.transaction() as session:
        row = _applicant_row(session, application_id, token, for_update=True)
        if row.status != ApplicationStatus.PHONE_PENDING.value:
            raise _already_verified()
        now = clock.now()
        failure = _try_code(session, vault, row, code, now)
        if failure is None:
            _move(
                session, row, ApplicationStatus.IN_REVIEW, reason="phone verified",
                actor=_applicant(row.id), clock=clock, action="application.verify_phone",
                columns={"phone_verified_at": now},
            )  # fmt: skip
    if failure is not None:
        raise failure
    return run_kyc(database, vault, verifier, application_id, actor="system:kyc", clock=clock)


def run_kyc(
    database: Database, vault: Vault, verifier: RealNameVerifier, application_id: str, *,
    actor: str, clock: Clock,
) -> ApplicationView:  # fmt: skip
    """Ask the real-name verifier about the application's four elements and keep its answer
    and reasons (the verifier is called outside any transaction)."""
    with database.read() as session:
        row = _load(session, application_id)
        data = _decrypted_input(vault, row)
    subject = RealNameSubject(data.applicant_name, data.id_number, data.bank_card, data.phone)
    result = verifier.verify(subject)
    with database.transaction() as session:
        row = _load(session, application_id, for_update=True)
        return _record_kyc(session, row, result, actor=actor, clock=clock)


def _record_kyc(
    session: Session, row: Application, result: KycResult, *, actor: str, clock: Clock
) -> ApplicationView:
    before = row.kyc_status
    row.kyc_status = (KycStatus.PASSED if result.passed else KycStatus.FAILED).value
    row.kyc_reasons = json.dumps(list(result.reasons))
    row.kyc_provider = result.provider[:32]
    row.kyc_checked_at = row.updated_at = clock.now()
    reason = "passed" if result.passed else "failed: " + ", ".join(result.reasons)
    _history(session, "kyc", row.id, before, row.kyc_status, reason=reason, actor=actor,
             at=row.kyc_checked_at)  # fmt: skip
    session.flush()
    record(
        session, actor=actor, action="application.kyc", subject_type="application",
        subject_id=row.id, before={"kyc_status": before},
        after={"kyc_status": row.kyc_status, "reasons": list(result.reasons),
               "provider": row.kyc_provider}, clock=clock,
    )  # fmt: skip
    return _view(session, row)


def submit_materials(
    database: Database, vault: Vault, verifier: RealNameVerifier, application_id: str,
    token: str | None, changes: MaterialsUpdate, *, clock: Clock,
) -> ApplicationView:  # fmt: skip
    """Answer a request for information: the given fields replace the application's, which
    goes back to review; the real-name check runs again."""
    with database.transaction() as session:
        row = _applicant_row(session, application_id, token, for_update=True)
        transition(row.status, ApplicationStatus.IN_REVIEW)  # only after request-info
        given = {f.name: getattr(changes, f.name) for f in fields(changes)}
        merged = replace(
            _decrypted_input(vault, row), **{k: v for k, v in given.items() if v is not None}
        )
        columns = _columns(vault, _clean(merged, clock.now()))
        columns.update(kyc_status=KycStatus.PENDING.value, kyc_reasons="[]")
        _move(session, row, ApplicationStatus.IN_REVIEW, reason="materials submitted",
              actor=_applicant(row.id), clock=clock, action="application.materials",
              columns=columns)  # fmt: skip
    return run_kyc(database, vault, verifier, application_id, actor="system:kyc", clock=clock)


def get_application(session: Session, application_id: str, token: str | None) -> ApplicationView:
    """The applicant's view of their application (``token`` required)."""
    return _view(session, _applicant_row(session, application_id, token))


def application_for_staff(session: Session, application_id: str) -> ApplicationView:
    return _view(session, _load(session, application_id))


def list_applications(
    session: Session, *, status: ApplicationStatus | None, limit: int, cursor: Keyset | None
) -> ApplicationPage:
    """Newest first (the review queue: ``status=in_review``)."""
    query = select(Application)
    if status is not None:
        query = query.where(Application.status == status.value)
    rows = list(session.scalars(newest_first(query, Application, limit + 1, cursor)))
    page = rows[:limit]
    more = len(rows) > limit
    return ApplicationPage(
        [_view(session, r) for r in page], (page[-1].created_at, page[-1].id) if more else None
    )


def history(session: Session, subject_id: str) -> list[StatusChange]:
    """Every status change of an application (and its KYC) or a contract, oldest first."""
    rows = session.scalars(
        select(StatusHistory)
        .where(StatusHistory.subject_id == subject_id)
        .order_by(StatusHistory.occurred_at, StatusHistory.id)
    )
    return [
        StatusChange(r.subject_type, r.subject_id, r.from_status, r.to_status, r.reason,
                     r.actor, r.occurred_at)
        for r in rows
    ]  # fmt: skip


# -- staff review --------------------------------------------------------------------------------
def reject_application(
    session: Session, application_id: str, *, reason: str, actor: str, clock: Clock
) -> ApplicationView:
    reason = _text(reason, "reason")
    row = _load(session, application_id, for_update=True)
    transition(row.status, ApplicationStatus.REJECTED)
    return _move(session, row, ApplicationStatus.REJECTED, reason=reason, actor=actor,
                 clock=clock, action="application.reject",
                 columns={"rejection_reason": reason, "reviewed_by": actor})  # fmt: skip


def request_info(
    session: Session, application_id: str, *, message: str, actor: str, clock: Clock
) -> ApplicationView:
    message = _text(message, "message")
    row = _load(session, application_id, for_update=True)
    transition(row.status, ApplicationStatus.INFO_REQUESTED)
    return _move(session, row, ApplicationStatus.INFO_REQUESTED, reason=message, actor=actor,
                 clock=clock, action="application.request_info",
                 columns={"info_request": message, "reviewed_by": actor})  # fmt: skip


def _area_code(row: Application, override: str | None) -> str:
    code = _optional(override) or row.area_code or area_code_for(row.city)
    if code is None:
        raise DomainError(
            ErrorCode.INVALID_AREA_CODE,
            f"no area code known for {row.city!r}: give area_code",
            field="area_code",
        )
    return validate_area_code(code)


def approve_application(
    session: Session, vault: Vault, ledger: Ledger, application_id: str, *, actor: str,
    clock: Clock, mcc: str | None = None, area_code: str | None = None,
) -> ApplicationView:  # fmt: skip
    """Create the merchant (number, ledger accounts, settlement account — verified when the
    real-name check passed) and its contract for the product applied for. The card must pass
    Luhn here (``invalid_card``): a warned card needs new materials first."""
    row = _load(session, application_id, for_update=True)
    transition(row.status, ApplicationStatus.APPROVED)
    data = _decrypted_input(vault, row)
    terms = terms_for(row.product)
    merchant = create_merchant(
        session, vault, ledger,
        MerchantInput(
            legal_name=row.business_name, merchant_type=row.merchant_type,
            mcc=validate_mcc(_optional(mcc) or row.mcc or DEFAULT_MCC),
            area_code=_area_code(row, area_code), contact_phone=data.phone,
            fee_plan_code=terms.fee_plan_code,
            settlement_account=SettlementAccountInput(
                data.applicant_name, row.bank_name, data.bank_card
            ),
        ),
        actor=actor, clock=clock,
    )  # fmt: skip
    if row.kyc_status == KycStatus.PASSED.value:
        verify_settlement_account(session, merchant.merchant_id, actor=actor, clock=clock)
    generate_contract(
        session, merchant_id=merchant.merchant_id, product=row.product, clock=clock,
        actor=actor, terms=terms, application_id=row.id,
    )  # fmt: skip
    return _move(session, row, ApplicationStatus.APPROVED, reason="approved", actor=actor,
                 clock=clock, action="application.approve",
                 columns={"merchant_id": merchant.merchant_id, "reviewed_by": actor})  # fmt: skip


# -- contracts -----------------------------------------------------------------------------------
def _contract_view(row: Contract) -> ContractView:
    return ContractView(
        contract_id=row.contract_id, merchant_id=row.merchant_id,
        application_id=row.application_id, product=row.product,
        terms=ContractTerms.from_dict(json.loads(row.terms)), text=row.text, sha256=row.sha256,
        status=ContractStatus(row.status), accepted_at=row.accepted_at,
        accepted_ip=row.accepted_ip, accepted_user_agent=row.accepted_user_agent,
        accepted_sha256=row.accepted_sha256, created_at=row.created_at,
    )  # fmt: skip


def _load_contract(session: Session, contract_id: str, *, for_update: bool = False) -> Contract:
    if not isinstance(contract_id, str) or len(contract_id) > MAX_ID_LENGTH:
        raise contract_not_found()
    row: Contract | None = load_row(
        session, Contract.contract_id, contract_id, for_update=for_update
    )
    if row is None:
        raise contract_not_found()
    return row


def _contract_audit(view: ContractView) -> dict[str, Any]:
    data = asdict(view)
    data.pop("text")  # the hash stands for it
    data["terms"] = view.terms.as_dict()
    return data


def generate_contract(
    session: Session, *, merchant_id: str, product: str, clock: Clock, actor: str,
    terms: ContractTerms | None = None, application_id: str | None = None,
) -> ContractView:  # fmt: skip
    """Freeze ``terms`` (default: the product's current ones) into a contract text for the
    merchant; the text and its SHA-256 never change afterwards."""
    terms = terms or terms_for(product)
    if terms.product != product:
        raise DomainError(
            ErrorCode.INVALID_INPUT, "the terms are for another product", field="product"
        )
    merchant = get_merchant(session, merchant_id)
    now = clock.now()
    contract_id = new_id("ctr_")
    text = render_contract_text(
        contract_id=contract_id, merchant_id=merchant_id, legal_name=merchant.legal_name,
        terms=terms, issued=now.astimezone(SHANGHAI).date(),
    )  # fmt: skip
    row = Contract(
        contract_id=contract_id, merchant_id=merchant_id, application_id=application_id,
        product=product, terms=json.dumps(terms.as_dict(), sort_keys=True), text=text,
        sha256=text_sha256(text), status=ContractStatus.GENERATED.value, created_at=now,
    )  # fmt: skip
    session.add(row)
    _history(session, "contract", contract_id, None, row.status, reason="generated",
             actor=actor, at=now)  # fmt: skip
    session.flush()
    view = _contract_view(row)
    record(
        session, actor=actor, action="contract.generate", subject_type="contract",
        subject_id=contract_id, after=_contract_audit(view), clock=clock,
    )  # fmt: skip
    return view


def get_contract(session: Session, contract_id: str) -> ContractView:
    return _contract_view(_load_contract(session, contract_id))


def merchant_contract(session: Session, contract_id: str, *, merchant_id: str) -> ContractView:
    """The contract if it is the merchant's; another merchant's answers not found."""
    row = _load_contract(session, contract_id)
    if row.merchant_id != merchant_id:
        raise contract_not_found()
    return _contract_view(row)


def applicant_contract(session: Session, contract_id: str, token: str | None) -> ContractView:
    """The contract if it was generated for the application ``token`` belongs to."""
    row = _load_contract(session, contract_id)
    application = _by_token(session, token)
    if application is None or row.application_id != application.id:
        raise contract_not_found()
    return _contract_view(row)


def _by_token(session: Session, token: str | None) -> Application | None:
    if not token:
        return None
    found: Application | None = load_row(session, Application.token_hash, _token_hash(token))
    return found


def accept_contract(
    session: Session, contract_id: str, *, merchant_id: str, ip: str, user_agent: str,
    clock: Clock, actor: str | None = None, expected_sha256: str | None = None,
) -> ContractView:  # fmt: skip
    """Record the merchant's acceptance: time, client address, user agent and the SHA-256 of
    the exact text. ``expected_sha256`` (what the client showed) must match when given."""
    row = _load_contract(session, contract_id, for_update=True)
    if row.merchant_id != merchant_id:
        raise contract_not_found()
    if row.status == ContractStatus.ACCEPTED.value:
        raise DomainError(
            ErrorCode.CONTRACT_ALREADY_ACCEPTED, "the contract was already accepted",
            accepted_at=row.accepted_at,
        )  # fmt: skip
    digest = text_sha256(row.text)
    if digest != row.sha256:
        raise DomainError(ErrorCode.INTERNAL_ERROR, "the contract text does not match its hash")
    if expected_sha256 is not None and expected_sha256.lower() != digest:
        raise DomainError(
            ErrorCode.INVALID_INPUT, "sha256: not the hash of this contract's text",
            field="sha256",
        )  # fmt: skip
    before = _contract_view(row)
    now = clock.now()
    row.status = ContractStatus.ACCEPTED.value
    row.accepted_at, row.accepted_sha256 = now, digest
    row.accepted_ip, row.accepted_user_agent = ip[:64], user_agent[:512]
    row.accepted_by = (actor or f"merchant:{merchant_id}")[:128]
    _history(session, "contract", contract_id, before.status.value, row.status,
             reason="accepted", actor=row.accepted_by, at=now)  # fmt: skip
    session.flush()
    view = _contract_view(row)
    record(
        session, actor=row.accepted_by, action="contract.accept", subject_type="contract",
        subject_id=contract_id, before=_contract_audit(before), after=_contract_audit(view),
        clock=clock,
    )  # fmt: skip
    return view


def accept_contract_as_applicant(
    session: Session, contract_id: str, token: str | None, *, ip: str, user_agent: str,
    clock: Clock, expected_sha256: str | None = None,
) -> ContractView:  # fmt: skip
    """The applicant (application token) accepts the contract of their approved application."""
    view = applicant_contract(session, contract_id, token)
    return accept_contract(
        session, contract_id, merchant_id=view.merchant_id, ip=ip, user_agent=user_agent,
        clock=clock, actor=_applicant(view.application_id or ""),
        expected_sha256=expected_sha256,
    )  # fmt: skip


def accepted_contract(session: Session, contract_id: str, *, merchant_id: str) -> ContractView:
    """The merchant's accepted contract, or ``contract_not_found`` / ``contract_not_accepted``."""
    view = merchant_contract(session, contract_id, merchant_id=merchant_id)
    if view.status is not ContractStatus.ACCEPTED:
        raise DomainError(
            ErrorCode.CONTRACT_NOT_ACCEPTED, "the merchant has not accepted this contract",
            contract_id=contract_id,
        )  # fmt: skip
    return view


def latest_accepted_contract(
    session: Session, merchant_id: str, product: str
) -> ContractView | None:
    """The merchant's most recently accepted contract for ``product``, if any."""
    row = session.scalars(
        select(Contract)
        .where(
            Contract.merchant_id == merchant_id,
            Contract.product == product,
            Contract.status == ContractStatus.ACCEPTED.value,
        )
        .order_by(Contract.accepted_at.desc(), Contract.contract_id.desc())
        .limit(1)
    ).first()
    return None if row is None else _contract_view(row)
