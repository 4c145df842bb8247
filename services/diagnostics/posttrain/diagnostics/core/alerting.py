"""Alerts without I/O: each channel's payload, the signatures, and deduplication per
(job, anomaly type) with a cooldown. Times are passed in: nothing here reads a clock.

Formats:
- Slack incoming webhook: ``{"text": ..., "blocks": [...]}`` (``text`` is the notification
  fallback Slack requires next to blocks).
- Feishu/Lark custom bot: ``{"msg_type": "text", "content": {"text": ...}}``; with a signature
  secret also ``timestamp`` (seconds) and ``sign`` = base64(HMAC-SHA256(key=f"{timestamp}\\n
  {secret}", message=b"")), as Feishu documents it.
- Generic webhook: the seed's payload (job_uuid, anomaly, message, timestamp) plus the anomaly's
  details, signed with ``X-Posttrain-Signature: sha256=<hex HMAC-SHA256(secret,
  f"{timestamp}.{body}")>`` and ``X-Posttrain-Timestamp``, so a receiver can check the body and
  reject replays.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import orjson

from posttrain.diagnostics.core.anomaly import SEVERITY_RANK
from posttrain.diagnostics.core.config import AlertChannel, AlertConfig

JsonDict = dict[str, Any]
SIGNATURE_HEADER = "X-Posttrain-Signature"
TIMESTAMP_HEADER = "X-Posttrain-Timestamp"
_EMOJI = {"critical": ":rotating_light:", "warning": ":warning:", "info": ":information_source:"}


@dataclass(frozen=True, slots=True)
class Alert:
    """What an alert says, whatever the channel."""

    job_id: str
    anomaly_type: str
    message: str
    severity: str = "warning"
    anomaly_id: str | None = None
    step: int | None = None
    value: float | None = None
    pipeline_id: str | None = None
    stage: str | None = None
    suggestions: tuple[str, ...] = ()

    def title(self) -> str:
        where = f" in {self.pipeline_id}/{self.stage}" if self.pipeline_id and self.stage else ""
        at = f" at step {self.step}" if self.step is not None else ""
        return f"[{self.severity}] {self.anomaly_type} on job {self.job_id}{where}{at}"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    url: str
    body: bytes
    headers: dict[str, str]


def feishu_sign(timestamp: int, secret: str) -> str:
    string_to_sign = f"{timestamp}\n{secret}".encode()
    digest = hmac.new(string_to_sign, b"", digestmod=hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def webhook_signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def _text(alert: Alert) -> str:
    lines = [alert.title(), alert.message]
    if alert.suggestions:
        lines.append("Suggestions:")
        lines += [f"- {s}" for s in alert.suggestions]
    return "\n".join(lines)


def slack_payload(alert: Alert) -> JsonDict:
    emoji = _EMOJI.get(alert.severity, "")
    body = f"{emoji} *{alert.title()}*\n{alert.message}"
    blocks: list[JsonDict] = [{"type": "section", "text": {"type": "mrkdwn", "text": body}}]
    if alert.suggestions:
        tips = "\n".join(f"• {s}" for s in alert.suggestions)
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": tips}]})
    return {"text": f"{alert.title()}: {alert.message}", "blocks": blocks}


def feishu_payload(alert: Alert, timestamp: int, secret: str | None) -> JsonDict:
    payload: JsonDict = {"msg_type": "text", "content": {"text": _text(alert)}}
    if secret:
        payload = {"timestamp": str(timestamp), "sign": feishu_sign(timestamp, secret), **payload}
    return payload


def webhook_payload(alert: Alert, timestamp: int) -> JsonDict:
    return {
        "job_uuid": alert.job_id,
        "anomaly": alert.anomaly_type,
        "message": alert.message,
        "timestamp": timestamp,
        "severity": alert.severity,
        "anomaly_id": alert.anomaly_id,
        "step": alert.step,
        "value": alert.value,
        "pipeline_id": alert.pipeline_id,
        "stage": alert.stage,
        "suggestions": list(alert.suggestions),
    }


def build_request(channel: AlertChannel, alert: Alert, timestamp: int) -> HttpRequest:
    """The HTTP request that delivers ``alert`` to ``channel`` (timestamp in Unix seconds)."""
    headers = {"Content-Type": "application/json"}
    if channel.kind == "slack":
        body = orjson.dumps(slack_payload(alert))
    elif channel.kind == "feishu":
        body = orjson.dumps(feishu_payload(alert, timestamp, channel.secret))
    else:
        body = orjson.dumps(webhook_payload(alert, timestamp))
        headers[TIMESTAMP_HEADER] = str(timestamp)
        if channel.secret:
            headers[SIGNATURE_HEADER] = webhook_signature(channel.secret, timestamp, body)
    return HttpRequest(channel.url, body, headers)


def response_ok(channel: AlertChannel, status: int, body: bytes) -> tuple[bool, bool, str]:
    """(delivered, worth retrying, error) for a channel's HTTP response."""
    if status == 429 or status >= 500:
        return False, True, f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"
    if status >= 300:
        return False, False, f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"
    if channel.kind == "feishu":
        # Feishu answers 200 with {"code": <non-zero>, "msg": ...} for a bad signature or payload.
        try:
            doc = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            doc = {}
        code = doc.get("code", doc.get("StatusCode", 0)) if isinstance(doc, dict) else 0
        if code not in (0, None):
            return False, False, f"Feishu code {code}: {doc.get('msg', doc.get('StatusMessage'))}"
    return True, False, ""


def backoff_delays(config: AlertConfig) -> list[float]:
    """The wait before each retry: backoff_s, x multiplier, ... (max_attempts - 1 of them)."""
    return [config.backoff_s * config.backoff_multiplier**i for i in range(config.max_attempts - 1)]


def route(config: AlertConfig, severity: str, anomaly_type: str) -> list[AlertChannel]:
    """The channels an alert of this severity and type goes to."""
    rank = SEVERITY_RANK.get(severity, 1)
    return [
        c
        for c in config.channels
        if rank >= SEVERITY_RANK[c.min_severity] and (c.types is None or anomaly_type in c.types)
    ]


class AlertDedup:
    """Per job: when each anomaly type was last alerted, how many were held back since, and the
    anomaly ids already handled (a redelivered anomaly is never alerted twice). JSON-able."""

    MAX_IDS = 64

    def __init__(self, data: JsonDict | None = None) -> None:
        data = data or {}
        self.last_sent: dict[str, float] = {
            k: float(v) for k, v in data.get("last_sent", {}).items()
        }
        self.suppressed: dict[str, int] = {k: int(v) for k, v in data.get("suppressed", {}).items()}
        self.handled: list[str] = [str(x) for x in data.get("handled", [])]

    def decide(
        self, anomaly_type: str, now: float, cooldown_s: float, anomaly_id: str | None = None
    ) -> tuple[bool, int]:
        """(send it?, how many of this type were held back before it); records the decision."""
        if anomaly_id is not None:
            if anomaly_id in self.handled:
                return False, 0
            self.handled = [*self.handled[-(self.MAX_IDS - 1) :], anomaly_id]
        last = self.last_sent.get(anomaly_type)
        if last is not None and now - last < cooldown_s:
            self.suppressed[anomaly_type] = self.suppressed.get(anomaly_type, 0) + 1
            return False, 0
        held = self.suppressed.pop(anomaly_type, 0)
        self.last_sent[anomaly_type] = now
        return True, held

    def to_dict(self) -> JsonDict:
        return {
            "last_sent": dict(self.last_sent),
            "suppressed": dict(self.suppressed),
            "handled": list(self.handled),
        }
