"""``Idempotency-Key`` on submissions, kept in the gateway's ``idempotency_keys`` table
(migrations/0001_idempotency.sql), so that every gateway instance agrees.

The first request with a key claims it (a row with no response yet), is processed, and stores
its response. A request that repeats the key with the same body gets that stored response (and
nothing is sent again); with another body it is refused (``KeyReused``). A repeat that arrives
while the first is still being processed waits for its response a little, then is refused
(``KeyInFlight``). A request that fails without a response releases its key. Keys are kept for
a day.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import Any

import orjson

# An asyncpg pool (asyncpg ships no type hints).
Db = Any

KEEP = "24 hours"


class KeyReused(Exception):
    """The key was used before with another request body."""


class KeyInFlight(Exception):
    """The first request with this key has not finished yet."""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: Any


def request_digest(content_type: str, body: bytes) -> str:
    """What makes two submissions the same request: the content type and the exact body."""
    media = content_type.split(";", 1)[0].strip().lower()
    return hashlib.sha256(media.encode() + b"\0" + body).hexdigest()


async def claim(db: Db, key: str, digest: str, *, wait_s: float = 10.0) -> StoredResponse | None:
    """None when this request now owns ``key`` (process it, then ``store`` or ``release``);
    the stored response when the key was used with the same request before."""
    await db.execute(f"DELETE FROM idempotency_keys WHERE created_at < now() - interval '{KEEP}'")
    claimed = await db.fetchval(
        """
        INSERT INTO idempotency_keys (key, request_hash) VALUES ($1, $2)
        ON CONFLICT (key) DO NOTHING RETURNING 1
        """,
        key,
        digest,
    )
    if claimed is not None:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        row = await db.fetchrow(
            "SELECT request_hash, status, response FROM idempotency_keys WHERE key = $1", key
        )
        if row is None:  # released by a request that failed: take it over
            return await claim(db, key, digest, wait_s=max(0.0, deadline - time.monotonic()))
        if row["request_hash"] != digest:
            raise KeyReused(key)
        if row["status"] is not None:
            return StoredResponse(row["status"], orjson.loads(row["response"]))
        if time.monotonic() >= deadline:
            raise KeyInFlight(key)
        await asyncio.sleep(0.1)


async def store(db: Db, key: str, status: int, body: Any) -> None:
    await db.execute(
        "UPDATE idempotency_keys SET status = $2, response = $3::jsonb WHERE key = $1",
        key,
        status,
        orjson.dumps(body).decode(),
    )


async def release(db: Db, key: str) -> None:
    await db.execute("DELETE FROM idempotency_keys WHERE key = $1 AND status IS NULL", key)
