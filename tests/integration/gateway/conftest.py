"""Tokens for gateway tests: one per role, made in the run's database as `posttrain token create`
makes them (only their hashes are stored)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import pytest_asyncio

from posttrain.gateway.auth import Role, create_token


@dataclass(frozen=True)
class Caller:
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


@pytest_asyncio.fixture
async def callers(database_url, run_id) -> dict[str, Caller]:
    """``viewer``, ``submitter``, ``other`` (a second submitter) and ``admin``, each with a
    fresh token named after the test."""
    conn = await asyncpg.connect(database_url)
    try:
        made = {}
        for key, role in (
            ("viewer", Role.VIEWER),
            ("submitter", Role.SUBMITTER),
            ("other", Role.SUBMITTER),
            ("admin", Role.ADMIN),
        ):
            name = f"{run_id}-{key}"
            made[key] = Caller(name, await create_token(conn, name, role))
        return made
    finally:
        await conn.close()
