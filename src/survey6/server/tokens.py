"""Bootstrap tokens, as kubeadm has them: ``[a-z0-9]{6}.[a-z0-9]{16}``, an id and a secret.

The id is stored as it is (it names the token in lists and logs); only a SHA-256 of the secret is
stored, and it is compared in constant time. Error messages name the token id, never the secret.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from survey6.server.errors import TokenError, TokenGuessError
from survey6.server.registry.models import BootstrapToken, Event, utcnow

TOKEN_PATTERN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
TOKEN_ALPHABET = string.ascii_lowercase + string.digits
# Expired and revoked tokens are kept this long (visible in `token list`), then deleted.
EXPIRED_TOKEN_RETENTION = dt.timedelta(days=1)


@dataclass(frozen=True)
class TokenInfo:
    token_id: str
    description: str
    created_at: dt.datetime
    expires_at: dt.datetime
    usages_left: int | None
    used_count: int
    revoked_at: dt.datetime | None

    def status(self, now: dt.datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        if self.usages_left == 0:
            return "used up"
        return "valid"


def _secret_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _random(length: int) -> str:
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(length))


def create_token(session: Session, *, ttl: dt.timedelta, usages: int | None, description: str = "") -> str:
    """Creates a token and returns it whole: the only time the secret is ever shown."""
    if ttl <= dt.timedelta(0):
        raise TokenError("a token's time to live must be positive")
    if usages is not None and usages < 1:
        raise TokenError("a token must allow at least one use")
    token_id = _random(6)
    while session.get(BootstrapToken, token_id) is not None:
        token_id = _random(6)
    secret = _random(16)
    now = utcnow()
    session.add(
        BootstrapToken(
            token_id=token_id,
            secret_sha256=_secret_sha256(secret),
            description=description,
            created_at=now,
            expires_at=now + ttl,
            usages_left=usages,
        )
    )
    session.add(Event(kind="token", detail=f"token {token_id} created, expires {(now + ttl).isoformat()}"))
    return f"{token_id}.{secret}"


def list_tokens(session: Session) -> list[TokenInfo]:
    delete_stale_tokens(session)
    rows = session.scalars(select(BootstrapToken).order_by(BootstrapToken.created_at)).all()
    return [
        TokenInfo(
            r.token_id, r.description, r.created_at, r.expires_at, r.usages_left, r.used_count, r.revoked_at
        )
        for r in rows
    ]


def revoke_token(session: Session, token_id: str) -> None:
    token_id = token_id.split(".", 1)[0]  # a whole token is accepted too
    row = session.get(BootstrapToken, token_id)
    if row is None:
        raise TokenError(f"no token with id {token_id!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(Event(kind="token", detail=f"token {token_id} revoked"))


def delete_stale_tokens(session: Session) -> int:
    """Deletes tokens expired or revoked more than a day ago."""
    cutoff = utcnow() - EXPIRED_TOKEN_RETENTION
    result = session.execute(
        delete(BootstrapToken).where(
            (BootstrapToken.expires_at < cutoff)
            | (BootstrapToken.revoked_at.is_not(None) & (BootstrapToken.revoked_at < cutoff))
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


def consume_token(session: Session, token: str) -> str:
    """Checks a token and uses it once; returns its id.

    The use is one conditional ``UPDATE`` (usable, not revoked, not expired, uses left) whose row
    count says whether it took: joins in parallel can never use a token more often than allowed,
    whatever the database's isolation (SQLite takes no row lock for ``SELECT ... FOR UPDATE``).
    The use is undone with the caller's transaction if the join fails later.

    Raises:
        TokenGuessError: malformed, unknown, or a wrong secret.
        TokenError: expired, revoked or used up. The caller
            tells the client only that the token was refused and why in general terms.
    """
    match = TOKEN_PATTERN.match(token)
    if match is None:
        raise TokenGuessError("malformed token: expected [a-z0-9]{6}.[a-z0-9]{16}")
    token_id, secret = match.groups()
    stored_sha256 = session.scalar(
        select(BootstrapToken.secret_sha256).where(BootstrapToken.token_id == token_id)
    )
    if stored_sha256 is None or not hmac.compare_digest(stored_sha256, _secret_sha256(secret)):
        raise TokenGuessError(f"unknown token {token_id}")
    now = utcnow()
    result = session.execute(
        update(BootstrapToken)
        .where(
            BootstrapToken.token_id == token_id,
            BootstrapToken.revoked_at.is_(None),
            BootstrapToken.expires_at > now,
            BootstrapToken.usages_left.is_(None) | (BootstrapToken.usages_left > 0),
        )
        .values(
            usages_left=BootstrapToken.usages_left - 1,  # NULL (unlimited) stays NULL
            used_count=BootstrapToken.used_count + 1,
        )
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) == 1:
        return token_id
    raise TokenError(_refusal(session, token_id, now))


def _refusal(session: Session, token_id: str, now: dt.datetime) -> str:
    """Why the token could not be used, read again now that the conditional update refused it."""
    row = session.execute(
        select(BootstrapToken.revoked_at, BootstrapToken.expires_at, BootstrapToken.usages_left).where(
            BootstrapToken.token_id == token_id
        )
    ).one_or_none()
    if row is None:
        return f"unknown token {token_id}"  # deleted meanwhile
    revoked_at, expires_at, usages_left = row
    if revoked_at is not None:
        return f"token {token_id} has been revoked"
    if now >= expires_at:
        return f"token {token_id} has expired"
    if usages_left is not None and usages_left <= 0:
        return f"token {token_id} has been used up"
    return f"token {token_id} could not be used; try again"
