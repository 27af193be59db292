"""Web accounts: a name, an argon2 hash of the password and a role.

``admin`` may act (commands to probes, tokens); ``viewer`` may only look. Every function takes an
open session; the caller owns the transaction.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from survey6.server.registry.models import WebUser
from survey6.server.web.errors import UserError

ADMIN, VIEWER = "admin", "viewer"
ROLES = (ADMIN, VIEWER)
USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MIN_PASSWORD_CHARS = 10
# Longer passwords only cost hashing time: a bound keeps a login form from being a CPU sink.
MAX_PASSWORD_CHARS = 1024


@dataclass(frozen=True)
class Account:
    username: str
    role: str
    created_at: dt.datetime

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


def _account(row: WebUser) -> Account:
    return Account(row.username, row.role, row.created_at)


def _check_password(password: str) -> None:
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise UserError(f"a password needs {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters")


def add_user(session: Session, username: str, password: str, role: str) -> Account:
    """Adds an account.

    Raises:
        UserError: a bad name, role or password, or the name is taken.
    """
    if not USERNAME_PATTERN.match(username):
        raise UserError(f"bad user name {username!r}: letters, digits and _.@- only, at most 64")
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    _check_password(password)
    if session.get(WebUser, username) is not None:
        raise UserError(f"user {username} already exists")
    row = WebUser(username=username, password_hash=PasswordHasher().hash(password), role=role)
    session.add(row)
    session.flush()
    return _account(row)


def set_password(session: Session, username: str, password: str) -> None:
    _check_password(password)
    _get(session, username).password_hash = PasswordHasher().hash(password)


def set_role(session: Session, username: str, role: str) -> None:
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    row = _get(session, username)
    if row.role == ADMIN and role != ADMIN:
        _keep_an_admin(session, username)
    row.role = role


def remove_user(session: Session, username: str) -> None:
    """Removes an account; the last admin cannot be removed (nobody could act any more)."""
    row = _get(session, username)
    if row.role == ADMIN:
        _keep_an_admin(session, username)
    session.delete(row)


def list_users(session: Session) -> list[Account]:
    return [_account(r) for r in session.scalars(select(WebUser).order_by(WebUser.username))]


def get_account(session: Session, username: str) -> Account | None:
    row = session.get(WebUser, username)
    return None if row is None else _account(row)


def _get(session: Session, username: str) -> WebUser:
    row = session.get(WebUser, username)
    if row is None:
        raise UserError(f"no user {username!r}")
    return row


def _keep_an_admin(session: Session, leaving: str) -> None:
    others = session.scalar(
        select(func.count()).select_from(WebUser).where(WebUser.role == ADMIN, WebUser.username != leaving)
    )
    if not others:
        raise UserError(f"{leaving} is the last admin; add another admin first")


class PasswordChecker:
    """Checks passwords against the stored argon2 hashes."""

    def __init__(self) -> None:
        self._hasher = PasswordHasher()
        # Unknown names are checked against this, so a login takes as long whether or not the
        # name exists (no user enumeration by timing).
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    def authenticate(self, session: Session, username: str, password: str) -> Account | None:
        """The account when the password is right, else None. Upgrades an outdated hash."""
        row = session.get(WebUser, username) if USERNAME_PATTERN.match(username) else None
        if len(password) > MAX_PASSWORD_CHARS:
            return None
        try:
            self._hasher.verify(row.password_hash if row else self._dummy_hash, password)
        except (VerificationError, InvalidHashError):
            return None
        if row is None:
            return None
        if self._hasher.check_needs_rehash(row.password_hash):
            row.password_hash = self._hasher.hash(password)
        return _account(row)
