"""Use cases of the web console's accounts: create users, log in and out, sessions, passwords.

One ``database.transaction()`` per use case. A login attempt is answered with a
``LoginResult`` instead of an exception, because a refused attempt must still commit (the
failure counter, the lockout). Every refusal of an unknown account, a wrong password or a
wrong TOTP code is the same ``FAILED`` outcome: the page cannot be used to learn which phone
numbers or user names exist. Staff account creation and logins are written to the audit log.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import pyotp
from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session

from shoudan.audit import service as audit
from shoudan.auth.domain import Principal, Role, parse_role
from shoudan.core.clock import Clock
from shoudan.core.crypto import Vault, mask_phone
from shoudan.core.db import Database
from shoudan.core.errors import DomainError, ErrorCode
from shoudan.core.ids import new_id
from shoudan.merchants.service import get_merchant
from shoudan.onboarding.domain import (
    CODE_TTL,
    RESEND_INTERVAL,
    check_can_send,
    check_code_usable,
    code_message,
    code_shape_ok,
    new_code,
    shanghai_day_start,
    wrong_code,
)
from shoudan.sms.domain import validate_mobile
from shoudan.sms.service import SmsProvider, charge_address
from shoudan.web.domain import (
    DUMMY_PASSWORD_HASH,
    LAST_SEEN_RESOLUTION,
    SESSION_LIFETIME,
    LockState,
    PasswordProblem,
    SessionKind,
    hash_password,
    initial_password,
    new_session_token,
    normalize_phone,
    normalize_username,
    password_problems,
    session_alive,
    totp_step_acceptable,
    verify_password,
)
from shoudan.web.models import MerchantUser, PasswordResetCode, StaffUser, WebSession

PHONE_CONTEXT = "web:merchant_user:phone"
TOTP_CONTEXT = "web:staff_user:totp"
SESSION_CONTEXT = "web:session"
TOTP_ISSUER = "shoudan"
TOTP_PERIOD_SECONDS = 30
RESET_CODE_CONTEXT = "web:password_reset:code"
RESET_SMS_PURPOSE = "web.password_reset"


class LoginOutcome(StrEnum):
    OK = "ok"
    FAILED = "failed"  # unknown account, wrong password or wrong code: one answer
    LOCKED = "locked"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a live session belongs to (what every signed-in page needs)."""

    session_id: str
    kind: SessionKind
    user_id: str
    display_name: str  # masked phone or user name
    merchant_id: str | None = None
    roles: tuple[Role, ...] = ()

    @property
    def principal(self) -> Principal:
        """The principal handed to domain services. Staff with several roles act with the
        strongest (admin first); pages needing a given role check ``roles`` themselves."""
        if self.kind is SessionKind.MERCHANT:
            assert self.merchant_id is not None
            return Principal(self.user_id, Role.MERCHANT, self.merchant_id)
        role = Role.ADMIN if Role.ADMIN in self.roles else self.roles[0]
        return Principal(self.user_id, role)


@dataclass(frozen=True, slots=True)
class LoginResult:
    outcome: LoginOutcome
    token: str | None = None  # the session cookie's value, on OK only
    locked_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class NewMerchantUser:
    user_id: str
    merchant_id: str
    phone_masked: str
    password: str  # shown once


@dataclass(frozen=True, slots=True)
class NewStaffUser:
    user_id: str
    username: str
    roles: tuple[Role, ...]
    password: str  # shown once
    totp_secret: str  # shown once
    totp_uri: str


@dataclass(frozen=True, slots=True)
class ResetCodeSent:
    """What the 忘记密码 page may tell: the same whether the phone has a login or not."""

    expires_at: datetime
    resend_after: datetime


def parse_roles(values: list[str]) -> tuple[Role, ...]:
    roles = tuple(dict.fromkeys(parse_role(v) for v in values))
    if not roles or Role.MERCHANT in roles:
        raise DomainError(ErrorCode.INVALID_INPUT, "a staff user needs one or more staff roles")
    return roles


def _roles_of(row: StaffUser) -> tuple[Role, ...]:
    return tuple(Role(r) for r in row.roles.split(",") if r)


def _totp_step(moment: datetime) -> int:
    return int(moment.timestamp()) // TOTP_PERIOD_SECONDS


class WebAccounts:
    def __init__(self, database: Database, vault: Vault, clock: Clock) -> None:
        self.database = database
        self.vault = vault
        self.clock = clock

    # -- creating users (CLI, demo) ------------------------------------------------------------
    def create_merchant_user(
        self, merchant_id: str, phone: str, *, actor: str = "system:cli"
    ) -> NewMerchantUser:
        number = normalize_phone(phone)
        if number is None:
            raise DomainError(ErrorCode.INVALID_PHONE, "a mainland mobile number (11 digits)")
        password = initial_password()
        now = self.clock.now()
        phone_hash = self.vault.lookup_hash(number, PHONE_CONTEXT)
        with self.database.transaction() as session:
            get_merchant(session, merchant_id)  # merchant_not_found otherwise
            taken = session.scalar(
                select(MerchantUser.id).where(MerchantUser.phone_hash == phone_hash)
            )
            if taken is not None:
                raise DomainError(ErrorCode.INVALID_INPUT, "this phone number already has a login")
            row = MerchantUser(
                id=new_id("mu_"), merchant_id=merchant_id, phone_hash=phone_hash,
                phone_enc=self.vault.encrypt(number, PHONE_CONTEXT),
                phone_masked=mask_phone(number), password_hash=hash_password(password),
                failed_count=0, created_at=now, password_changed_at=now,
            )  # fmt: skip
            session.add(row)
            audit.record(
                session, actor=actor, action="web.merchant_user.create",
                subject_type="web_merchant_user", subject_id=row.id,
                after={"merchant_id": merchant_id, "phone": row.phone_masked}, clock=self.clock,
            )  # fmt: skip
        return NewMerchantUser(row.id, merchant_id, row.phone_masked, password)

    def create_staff_user(
        self, username: str, roles: tuple[Role, ...], *, actor: str = "system:cli"
    ) -> NewStaffUser:
        name = normalize_username(username)
        if name is None:
            raise DomainError(ErrorCode.INVALID_INPUT, "user name: 3–64 of [a-z0-9._-]")
        password, secret = initial_password(), pyotp.random_base32()
        now = self.clock.now()
        with self.database.transaction() as session:
            if session.scalar(select(StaffUser.id).where(StaffUser.username == name)):
                raise DomainError(ErrorCode.INVALID_INPUT, "this user name is taken")
            row = StaffUser(
                id=new_id("su_"), username=name, roles=",".join(roles),
                password_hash=hash_password(password),
                totp_secret_enc=self.vault.encrypt(secret, TOTP_CONTEXT),
                failed_count=0, created_at=now, password_changed_at=now,
            )  # fmt: skip
            session.add(row)
            audit.record(
                session, actor=actor, action="web.staff_user.create",
                subject_type="web_staff_user", subject_id=row.id,
                after={"username": name, "roles": list(roles)}, clock=self.clock,
            )  # fmt: skip
        uri = pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=TOTP_ISSUER)
        return NewStaffUser(row.id, name, roles, password, secret, uri)

    def staff_member(self, username: str, role: Role) -> str:
        """The id of the active staff member ``username``, who must hold ``role`` (or be an
        admin): the person an API key of that role is bound to (``apikey create
        --staff-user``), so that maker-checker sees one person behind both."""
        name = normalize_username(username)
        with self.database.read() as session:
            row = (
                session.scalar(select(StaffUser).where(StaffUser.username == name))
                if name is not None
                else None
            )
        if row is None or row.disabled_at is not None:
            raise DomainError(ErrorCode.NOT_FOUND, "no active staff user with this user name")
        held = set(row.roles.split(","))
        if role.value not in held and Role.ADMIN.value not in held:
            raise DomainError(
                ErrorCode.INVALID_INPUT, f"staff user {row.username} does not hold the role {role}"
            )
        return row.id

    # -- logging in and out ----------------------------------------------------------------------
    def login_merchant(self, phone: str, password: str) -> LoginResult:
        number = normalize_phone(phone)
        with self.database.transaction() as session:
            row = None
            if number is not None:
                row = session.scalar(
                    select(MerchantUser)
                    .where(MerchantUser.phone_hash == self.vault.lookup_hash(number, PHONE_CONTEXT))
                    .with_for_update()
                )
            return self._attempt(session, SessionKind.MERCHANT, row, password, None)

    def login_staff(self, username: str, password: str, totp_code: str) -> LoginResult:
        name = normalize_username(username)
        with self.database.transaction() as session:
            row = None
            if name is not None:
                row = session.scalar(
                    select(StaffUser).where(StaffUser.username == name).with_for_update()
                )
            return self._attempt(session, SessionKind.STAFF, row, password, totp_code)

    def _attempt(
        self,
        session: Session,
        kind: SessionKind,
        row: MerchantUser | StaffUser | None,
        password: str,
        totp_code: str | None,
    ) -> LoginResult:
        now = self.clock.now()
        if row is None or row.disabled_at is not None:
            verify_password(password, DUMMY_PASSWORD_HASH)  # same time as a real check
            return LoginResult(LoginOutcome.FAILED)
        state = LockState(row.failed_count, row.locked_until)
        if state.is_locked(now):
            return LoginResult(LoginOutcome.LOCKED, locked_until=row.locked_until)
        ok = verify_password(password, row.password_hash)
        if ok and isinstance(row, StaffUser):
            ok = self._totp_ok(row, totp_code or "", now)
        if not ok:
            state = state.after_failure(now)
            row.failed_count, row.locked_until = state.failed_count, state.locked_until
            if state.is_locked(now):
                self._audit_login(session, kind, row.id, "web.login.locked")
                return LoginResult(LoginOutcome.LOCKED, locked_until=state.locked_until)
            return LoginResult(LoginOutcome.FAILED)
        row.failed_count, row.locked_until, row.last_login_at = 0, None, now
        token = new_session_token()
        session.add(WebSession(
            id=new_id("ws_"), token_hash=self._token_hash(token), kind=kind.value,
            user_id=row.id, created_at=now, last_seen_at=now, expires_at=now + SESSION_LIFETIME,
        ))  # fmt: skip
        if kind is SessionKind.STAFF:
            self._audit_login(session, kind, row.id, "web.login")
        return LoginResult(LoginOutcome.OK, token=token)

    def _totp_ok(self, row: StaffUser, code: str, now: datetime) -> bool:
        secret = self.vault.decrypt(row.totp_secret_enc, TOTP_CONTEXT)
        totp = pyotp.TOTP(secret)
        for offset in (0, -1, 1):  # one step of clock drift either way
            step = _totp_step(now) + offset
            moment = datetime.fromtimestamp(step * TOTP_PERIOD_SECONDS, tz=now.tzinfo)
            if totp.at(moment) == code.strip() and totp_step_acceptable(step, row.totp_last_step):
                row.totp_last_step = step
                return True
        return False

    def _audit_login(self, session: Session, kind: SessionKind, user_id: str, action: str) -> None:
        audit.record(
            session, actor=f"{kind.value}:{user_id}", action=action,
            subject_type=f"web_{kind.value}_user", subject_id=user_id, clock=self.clock,
        )  # fmt: skip

    def _token_hash(self, token: str) -> str:
        return self.vault.lookup_hash(token, SESSION_CONTEXT)

    def resolve(self, token: str) -> Identity | None:
        """The live session behind a cookie, or ``None`` (unknown, expired, idle, revoked)."""
        now = self.clock.now()
        with self.database.transaction() as session:
            row = session.scalar(
                select(WebSession).where(WebSession.token_hash == self._token_hash(token))
            )
            if row is None or not session_alive(
                now, row.expires_at, row.last_seen_at, row.revoked_at
            ):
                return None
            identity = self._identity(session, row)
            if identity is not None and now - row.last_seen_at >= LAST_SEEN_RESOLUTION:
                row.last_seen_at = now
            return identity

    def _identity(self, session: Session, row: WebSession) -> Identity | None:
        kind = SessionKind(row.kind)
        if kind is SessionKind.MERCHANT:
            user = session.get(MerchantUser, row.user_id)
            if user is None or user.disabled_at is not None:
                return None
            return Identity(row.id, kind, user.id, user.phone_masked, merchant_id=user.merchant_id)
        staff = session.get(StaffUser, row.user_id)
        if staff is None or staff.disabled_at is not None:
            return None
        return Identity(row.id, kind, staff.id, staff.username, roles=_roles_of(staff))

    def logout(self, token: str) -> None:
        with self.database.transaction() as session:
            session.execute(
                update(WebSession)
                .where(WebSession.token_hash == self._token_hash(token))
                .where(WebSession.revoked_at.is_(None))
                .values(revoked_at=self.clock.now())
            )

    # -- account security --------------------------------------------------------------------------
    def other_sessions(self, identity: Identity) -> int:
        """How many other live sessions this user has (the 账户安全 page shows it)."""
        now = self.clock.now()
        with self.database.read() as session:
            others = self._sessions_of(identity).where(WebSession.id != identity.session_id)
            rows = session.scalars(others)
            return sum(
                session_alive(now, r.expires_at, r.last_seen_at, r.revoked_at) for r in rows
            )

    def sign_out_others(self, identity: Identity) -> int:
        with self.database.transaction() as session:
            return self._revoke_others(session, identity)

    def _sessions_of(self, identity: Identity) -> Select[WebSession]:
        return select(WebSession).where(
            WebSession.kind == identity.kind.value, WebSession.user_id == identity.user_id
        )

    def _revoke_others(self, session: Session, identity: Identity) -> int:
        result = session.execute(
            update(WebSession)
            .where(WebSession.kind == identity.kind.value)
            .where(WebSession.user_id == identity.user_id)
            .where(WebSession.id != identity.session_id)
            .where(WebSession.revoked_at.is_(None))
            .values(revoked_at=self.clock.now())
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def change_password(
        self, identity: Identity, current: str, new: str
    ) -> tuple[LoginOutcome, list[PasswordProblem]]:
        """``(outcome of the current password, problems)``; on success (OK, []) every other
        session of the user is signed out, since a password change usually means the old one
        leaked. A wrong current password counts toward the login lockout (FAILED, then LOCKED
        on the fifth): without that, a stolen session could guess the password here."""
        now = self.clock.now()
        with self.database.transaction() as session:
            row: MerchantUser | StaffUser | None
            if identity.kind is SessionKind.MERCHANT:
                row = session.get(MerchantUser, identity.user_id, with_for_update=True)
            else:
                row = session.get(StaffUser, identity.user_id, with_for_update=True)
            if row is None:
                raise DomainError(ErrorCode.NOT_FOUND, "user not found")
            state = LockState(row.failed_count, row.locked_until)
            if state.is_locked(now):
                return LoginOutcome.LOCKED, []
            if not verify_password(current, row.password_hash):
                state = state.after_failure(now)
                row.failed_count, row.locked_until = state.failed_count, state.locked_until
                if not state.is_locked(now):
                    return LoginOutcome.FAILED, []
                self._audit_login(session, identity.kind, row.id, "web.login.locked")
                return LoginOutcome.LOCKED, []
            row.failed_count = 0  # the right password ends a series of failures, as at login
            problems = password_problems(
                new, identities=self._identities(row), old_password=current
            )
            if problems:
                return LoginOutcome.OK, problems
            row.password_hash = hash_password(new)
            row.password_changed_at = now
            self._revoke_others(session, identity)
        return LoginOutcome.OK, []

    def _identities(self, row: MerchantUser | StaffUser) -> tuple[str, ...]:
        if isinstance(row, MerchantUser):
            phone = self.vault.decrypt(row.phone_enc, PHONE_CONTEXT)
            return (phone, phone[-8:])
        return (row.username,)

    # -- 忘记密码: a new password with an SMS code -------------------------------------------------
    def request_password_reset(
        self, phone: str, sms: SmsProvider, *, client: str | None = None
    ) -> ResetCodeSent:
        """Text a reset code to ``phone`` when it has a merchant login. A phone without one
        gets a row too (never texted), so the limits and the answers are the same and the
        page tells nobody which phones have an account. The onboarding code rules apply:
        60 s between codes and 10 a day per phone, 5 minutes of life, 5 attempts; and
        ``client``'s daily budget of codes (counted for unknown phones too)."""
        number = validate_mobile(normalize_phone(phone) or phone)
        now = self.clock.now()
        phone_hash = self.vault.lookup_hash(number, PHONE_CONTEXT)
        code, code_id = new_code(), new_id("prc_")
        with self.database.transaction() as session:
            user = session.scalar(
                select(MerchantUser).where(MerchantUser.phone_hash == phone_hash).with_for_update()
            )
            self._check_can_send_reset(session, phone_hash, now)
            if client is not None:
                charge_address(session, self.vault, client, now)
            user_id = user.id if user is not None and user.disabled_at is None else None
            session.add(PasswordResetCode(
                id=code_id, phone_hash=phone_hash, user_id=user_id,
                code_hash=self.vault.lookup_hash(code, f"{RESET_CODE_CONTEXT}:{code_id}"),
                attempts=0, created_at=now, expires_at=now + CODE_TTL, used_at=None,
            ))  # fmt: skip
            if user_id is not None:  # anyone may ask: the actor is not the user
                audit.record(
                    session, actor="public:forgot_password", action="web.password_reset.code",
                    subject_type="web_merchant_user", subject_id=user_id, clock=self.clock,
                )  # fmt: skip
        if user_id is not None:  # after the commit, like onboarding: the code exists first
            sms.send(number, code_message(code), RESET_SMS_PURPOSE, f"reset:{code_id}")
        return ResetCodeSent(now + CODE_TTL, now + RESEND_INTERVAL)

    def _check_can_send_reset(self, session: Session, phone_hash: str, now: datetime) -> None:
        of_phone = PasswordResetCode.phone_hash == phone_hash
        sent_today = session.scalar(
            select(func.count()).select_from(PasswordResetCode)
            .where(of_phone, PasswordResetCode.created_at >= shanghai_day_start(now))
        ) or 0  # fmt: skip
        last_sent_at = session.scalar(
            select(func.max(PasswordResetCode.created_at)).where(of_phone)
        )
        check_can_send(now, last_sent_at, sent_today)

    def reset_password(self, phone: str, code: str, new_password: str) -> list[PasswordProblem]:
        """Set a new password with the latest code texted to ``phone``. ``[]``: done — the code
        is used, every session of the user is signed out, a lockout is lifted (the code proves
        the phone; the lockout only stops password guessing), audited. Otherwise the policy's
        problems, and the code stays usable. A wrong code counts one attempt and raises
        ``verification_code_invalid`` (attempts left); a phone without a login fails exactly
        like a wrong code; an expired, used or worn-out code raises before any comparison."""
        now = self.clock.now()
        with self.database.transaction() as session:
            latest = self._live_reset_code(session, phone, now)
            user = self._reset_user(session, latest, code)
            if user is None:
                latest.attempts += 1
                failure = wrong_code(latest.attempts)
            else:
                problems = password_problems(new_password, identities=self._identities(user))
                if not problems and verify_password(new_password, user.password_hash):
                    problems = [PasswordProblem.SAME_AS_OLD]
                if problems:
                    return problems
                latest.used_at = now
                self._set_reset_password(session, user, new_password, now)
                return []
        raise failure

    def _live_reset_code(self, session: Session, phone: str, now: datetime) -> PasswordResetCode:
        """The latest code texted to ``phone`` (locked), if it can still be tried."""
        number = normalize_phone(phone)
        latest = None if number is None else session.scalars(
            select(PasswordResetCode)
            .where(PasswordResetCode.phone_hash == self.vault.lookup_hash(number, PHONE_CONTEXT))
            .order_by(PasswordResetCode.created_at.desc(), PasswordResetCode.id.desc())
            .limit(1).with_for_update()
        ).first()  # fmt: skip
        if latest is None:
            raise DomainError(ErrorCode.VERIFICATION_CODE_INVALID, "no code was sent: ask one")
        check_code_usable(now, latest.expires_at, latest.attempts)
        if latest.used_at is not None:
            raise DomainError(ErrorCode.VERIFICATION_CODE_EXPIRED, "the code was used: ask again")
        return latest

    def _reset_user(
        self, session: Session, latest: PasswordResetCode, code: str
    ) -> MerchantUser | None:
        """The user the code resets, when ``code`` is the right one."""
        context = f"{RESET_CODE_CONTEXT}:{latest.id}"
        given = self.vault.lookup_hash(code, context) if code_shape_ok(code) else ""
        if latest.user_id is None or not hmac.compare_digest(latest.code_hash, given):
            return None
        user = session.get(MerchantUser, latest.user_id, with_for_update=True)
        return None if user is None or user.disabled_at is not None else user

    def _set_reset_password(
        self, session: Session, user: MerchantUser, new_password: str, now: datetime
    ) -> None:
        was_locked = LockState(user.failed_count, user.locked_until).is_locked(now)
        user.password_hash = hash_password(new_password)
        user.password_changed_at = now
        user.failed_count, user.locked_until = 0, None
        revoked = session.execute(
            update(WebSession)
            .where(WebSession.kind == SessionKind.MERCHANT.value)
            .where(WebSession.user_id == user.id)
            .where(WebSession.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        audit.record(
            session, actor=f"merchant:{user.id}", action="web.password_reset",
            subject_type="web_merchant_user", subject_id=user.id,
            after={"sessions_revoked": int(revoked.rowcount or 0),  # type: ignore[attr-defined]
                   "lockout_cleared": was_locked}, clock=self.clock,
        )  # fmt: skip
