"""Starting and stopping the aiokafka client a producer or consumer of ours wraps, and
``async with`` over the two."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self


class ClientLifecycle:
    """``start`` and ``stop`` of the aiokafka client in ``_client``; ``async with`` does both."""

    _client: Any

    async def start(self) -> None:
        try:
            await self._client.start()
        except BaseException:
            # A broker that cannot be reached: close what start opened, or the client is left
            # half-open ("Unclosed AIOKafkaProducer" when it is collected).
            await self._client.stop()
            raise

    async def stop(self) -> None:
        await self._client.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
