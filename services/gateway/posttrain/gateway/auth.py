"""API tokens and their roles.

A viewer reads; a submitter also submits pipelines, and resumes, cancels and retries the ones it
submitted (``submitted_by`` is the token's name); an admin does everything. Tokens are made by
``posttrain token create --name NAME --role ROLE``, which prints the token once: only its hash is
kept, in the gateway's own table ``gateway_tokens`` (migration ``gateway/0002_tokens``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any

import asyncpg

# A token is 32 random bytes (256 bits). Guessing it, or a preimage of its hash, is out of
# reach, so a plain SHA-256 is the right digest here: a slow password hash (bcrypt, argon2)
# only protects low-entropy secrets chosen by people, and would cost every request its time.
TOKEN_BYTES = 32
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@")

# asyncpg is untyped: a connection or a pool.
Db = Any


class Role(IntEnum):
    """Ordered: each role may do what the ones below it may."""

    VIEWER = 1
    SUBMITTER = 2
    ADMIN = 3

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(
                f"unknown role {text!r}: one of {', '.join(r.name.lower() for r in cls)}"
            ) from None


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: a token's name and role."""

    name: str
    role: Role

    def may_steer(self, submitted_by: str | None) -> bool:
        """Whether it may resume, cancel or retry a pipeline submitted by ``submitted_by``."""
        return self.role >= Role.ADMIN or (
            self.role >= Role.SUBMITTER and submitted_by is not None and submitted_by == self.name
        )


# --no-auth: a single-user machine, where the caller is an admin.
ANONYMOUS_ADMIN = Principal("local", Role.ADMIN)


@dataclass(frozen=True)
class TokenInfo:
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None


class TokenError(ValueError):
    """A token that cannot be made or revoked (bad name, name taken, no such token)."""


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header; None if it carries none."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def create_token(db: Db, name: str, role: Role) -> str:
    """Make a token named ``name`` with ``role``; returns the token (kept nowhere but in the
    caller's hands: only its hash is stored). Raises ``TokenError`` for a bad or taken name."""
    if not name or len(name) > 64 or not set(name) <= NAME_CHARS:
        raise TokenError(
            f"bad token name {name!r}: 1 to 64 letters, digits and - _ . @ (it becomes the "
            "submitted_by of what the token submits)"
        )
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        await db.execute(
            "INSERT INTO gateway_tokens (name, role, token_hash) VALUES ($1, $2, $3)",
            name,
            role.name.lower(),
            token_hash(token),
        )
    except asyncpg.UniqueViolationError:
        raise TokenError(
            f"a token named {name!r} exists already (revoked or not): choose another name"
        ) from None
    return token


async def revoke_token(db: Db, name: str) -> None:
    """Revoke the token named ``name`` (at once, for every gateway). Raises ``TokenError`` if
    there is none (revoking a revoked one again changes nothing)."""
    row = await db.fetchrow(
        "UPDATE gateway_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE name = $1 "
        "RETURNING name",
        name,
    )
    if row is None:
        raise TokenError(f"no token named {name!r}: `posttrain token list` shows them")


async def list_tokens(db: Db) -> list[TokenInfo]:
    """Every token's name, role and times (never the token, which is kept nowhere)."""
    rows = await db.fetch(
        "SELECT name, role, created_at, revoked_at FROM gateway_tokens ORDER BY created_at, name"
    )
    return [
        TokenInfo(r["name"], Role.parse(r["role"]), r["created_at"], r["revoked_at"]) for r in rows
    ]


async def authenticate(db: Db, authorization: str | None) -> Principal | None:
    """The principal an ``Authorization`` header names; None for no token, an unknown token or
    a revoked one."""
    token = bearer_token(authorization)
    if token is None:
        return None
    digest = token_hash(token)
    row = await db.fetchrow(
        "SELECT name, role, token_hash FROM gateway_tokens "
        "WHERE token_hash = $1 AND revoked_at IS NULL",
        digest,
    )
    # The index lookup above finds the row; comparing again in constant time keeps the answer's
    # timing independent of how many leading bytes of a guessed hash matched.
    if row is None or not hmac.compare_digest(bytes(row["token_hash"]), digest):
        return None
    return Principal(row["name"], Role.parse(row["role"]))
