"""Bearer tokens with roles: a viewer reads pipelines and metrics; an operator also submits,
resumes, cancels and retries."""

from __future__ import annotations

from enum import IntEnum


class Role(IntEnum):
    VIEWER = 1
    OPERATOR = 2


def parse_tokens(spec: str) -> dict[str, Role]:
    """``"TOKEN:ROLE,TOKEN:ROLE"`` (``POSTTRAIN_API_TOKENS``) as a table; a bad entry raises
    ``ValueError`` naming it (without the token)."""
    tokens: dict[str, Role] = {}
    for number, entry in enumerate((e.strip() for e in spec.split(",")), start=1):
        if not entry:
            continue
        token, _, role = entry.rpartition(":")
        if not token or role.upper() not in Role.__members__:
            raise ValueError(
                f"token entry {number}: expected TOKEN:ROLE with ROLE one of "
                f"{', '.join(r.name.lower() for r in Role)}"
            )
        tokens[token] = Role[role.upper()]
    return tokens


def role_of(authorization: str | None, tokens: dict[str, Role]) -> Role | None:
    """The role an ``Authorization: Bearer TOKEN`` header carries; None if it carries none."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return tokens.get(token.strip())
