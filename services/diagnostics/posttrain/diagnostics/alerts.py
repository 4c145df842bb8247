"""Alert delivery over HTTP: Slack, Feishu/Lark and a signed generic webhook, with retries and
backoff, deduplication per (job, type), and every outcome recorded on posttrain.alerts.

    await send_alert(job_uuid, anomaly_type, message)   # the seed's entry point
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from posttrain.diagnostics.core.alerting import (
    Alert,
    AlertDedup,
    backoff_delays,
    build_request,
    response_ok,
    route,
)
from posttrain.diagnostics.core.config import AlertChannel, AlertConfig, ConfigBook
from posttrain.diagnostics.core.messages import alert_for
from posttrain.diagnostics.settings import DiagnosticsSettings
from posttrain.events import Envelope
from posttrain.events.kafka import EventProducer
from posttrain.events.messages.diagnostics import AlertFailed, AlertSent, AnomalyDetected
from posttrain.events.topics import Topic

log = logging.getLogger(__name__)
MAX_RETRY_AFTER_S = 30.0


@dataclass(frozen=True, slots=True)
class Delivery:
    channel: str
    ok: bool
    attempts: int
    error: str = ""


def load_config_book(path: str | os.PathLike[str] | None = None) -> ConfigBook:
    """The configuration named by ``path`` or $POSTTRAIN_DIAGNOSTICS_CONFIG (JSON, or YAML when
    PyYAML is installed); the defaults when neither is set."""
    where = path or DiagnosticsSettings().config
    if not where:
        return ConfigBook()
    text = Path(where).read_text(encoding="utf-8")
    if str(where).endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    return ConfigBook.from_dict(data)


class AlertSender:
    """Delivers alerts to channels with retries; one shared HTTP client."""

    def __init__(
        self,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self._client = client or httpx.AsyncClient()
        self._own_client = client is None
        self._clock = clock
        self._sleep = sleep

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def deliver(self, channel: AlertChannel, alert: Alert, config: AlertConfig) -> Delivery:
        delays = backoff_delays(config)
        error = ""
        for attempt in range(1, config.max_attempts + 1):
            # Re-signed on each attempt: Feishu rejects a timestamp older than an hour.
            request = build_request(channel, alert, int(self._clock()))
            retry_after: float | None = None
            try:
                response = await self._client.post(
                    request.url,
                    content=request.body,
                    headers=request.headers,
                    timeout=config.timeout_s,
                )
                ok, retryable, error = response_ok(channel, response.status_code, response.content)
                if ok:
                    return Delivery(channel.name, True, attempt)
                header = response.headers.get("Retry-After")
                if header and header.isdigit():
                    retry_after = min(float(header), MAX_RETRY_AFTER_S)
            except httpx.HTTPError as exc:
                ok, retryable, error = False, True, f"{type(exc).__name__}: {exc}"
            if not retryable or attempt == config.max_attempts:
                return Delivery(channel.name, False, attempt, error)
            delay = delays[attempt - 1]
            await self._sleep(max(delay, retry_after or 0.0))
        return Delivery(channel.name, False, config.max_attempts, error)

    async def deliver_all(
        self, channels: Sequence[AlertChannel], alert: Alert, config: AlertConfig
    ) -> list[Delivery]:
        return list(await asyncio.gather(*(self.deliver(c, alert, config) for c in channels)))


class Alerter:
    """Routes an anomaly to its pipeline's channels, deduplicates, delivers, and records each
    outcome (AlertSent/AlertFailed on posttrain.alerts, keyed by job)."""

    def __init__(
        self,
        book: ConfigBook,
        *,
        producer: EventProducer | None = None,
        sender: AlertSender | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.book = book
        self.producer = producer
        self.sender = sender or AlertSender(clock=clock)
        self._clock = clock

    async def aclose(self) -> None:
        await self.sender.aclose()

    def admit(self, event: AnomalyDetected, dedup: AlertDedup) -> tuple[bool, int]:
        """Whether to alert (dedup and cooldown), recorded in ``dedup``; call before delivering."""
        config = self.book.for_pipeline(event.pipeline_id).alerts
        if not route(config, event.severity, event.anomaly_type):
            return False, 0
        return dedup.decide(event.anomaly_type, self._clock(), config.cooldown_s, event.anomaly_id)

    async def deliver(self, event: AnomalyDetected, held_back: int = 0) -> list[Delivery]:
        config = self.book.for_pipeline(event.pipeline_id).alerts
        channels = route(config, event.severity, event.anomaly_type)
        alert = alert_for(event)
        if held_back:
            alert = dataclasses.replace(
                alert, message=f"{alert.message} ({held_back} more held back by the cooldown)"
            )
        deliveries = await self.sender.deliver_all(channels, alert, config)
        await self._record(event.anomaly_id, event.job_id, deliveries)
        return deliveries

    async def _record(self, anomaly_id: str, job_id: str, deliveries: list[Delivery]) -> None:
        if self.producer is None or not deliveries:
            return
        envelopes = []
        for d in deliveries:
            message: AlertSent | AlertFailed
            if d.ok:
                message = AlertSent(
                    anomaly_id=anomaly_id, job_id=job_id, channel=d.channel, attempts=d.attempts
                )
            else:
                message = AlertFailed(
                    anomaly_id=anomaly_id,
                    job_id=job_id,
                    channel=d.channel,
                    attempts=d.attempts,
                    error=d.error[:1000],
                )
                log.warning(
                    "alert failed",
                    extra={"channel": d.channel, "job_id": job_id, "error": d.error},
                )
            envelopes.append(Envelope.create(message, key=job_id))
        await self.producer.send_many(Topic.ALERTS, envelopes)


async def send_alert(
    job_uuid: str,
    anomaly_type: str,
    message: str,
    *,
    severity: str = "warning",
    pipeline_id: str | None = None,
    book: ConfigBook | None = None,
    sender: AlertSender | None = None,
) -> list[Delivery]:
    """The seed's ``send_alert``: send one alert to the channels configured for the pipeline
    (or the default channels), with retries. No deduplication: the caller asked for this one."""
    book = book or load_config_book()
    config = book.for_pipeline(pipeline_id).alerts
    alert = Alert(
        job_id=job_uuid,
        anomaly_type=anomaly_type,
        message=message,
        severity=severity,
        pipeline_id=pipeline_id,
    )
    own = sender is None
    sender = sender or AlertSender()
    try:
        return await sender.deliver_all(route(config, severity, anomaly_type), alert, config)
    finally:
        if own:
            await sender.aclose()
