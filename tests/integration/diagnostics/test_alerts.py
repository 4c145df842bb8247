"""Alerts against a real HTTP server on loopback standing in for Slack, Feishu and a generic
webhook: formats, signatures, retry after a 500, dedup, and outcomes on posttrain.alerts."""

from __future__ import annotations

import hashlib
import hmac

import pytest
import pytest_asyncio

from posttrain.diagnostics.alerts import Alerter, AlertSender, send_alert
from posttrain.diagnostics.core.alerting import Alert, AlertDedup
from posttrain.diagnostics.core.config import AlertChannel, AlertConfig, ConfigBook
from posttrain.events.kafka import EventConsumer
from posttrain.events.messages.diagnostics import AlertFailed, AlertSent, AnomalyDetected
from posttrain.events.topics import Topic
from tests.integration.diagnostics.helpers import Receiver
from tests.waiting import wait_for

ALERT = Alert(
    job_id="job-1",
    anomaly_type="nan_inf",
    message="non-finite values at step 41: loss=nan",
    severity="critical",
    anomaly_id="a-1",
    step=41,
    pipeline_id="p-1",
    stage="sft",
    suggestions=("Pause the run.",),
)
FAST = AlertConfig(max_attempts=3, backoff_s=0.01, timeout_s=5)


@pytest_asyncio.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest_asyncio.fixture
async def sender():
    s = AlertSender()
    yield s
    await s.aclose()


async def test_slack_incoming_webhook_format(receiver, sender):
    channel = AlertChannel(name="slack", kind="slack", url=receiver.url + "/slack/T0/B0/x")
    delivery = await sender.deliver(channel, ALERT, FAST)
    assert (delivery.ok, delivery.attempts) == (True, 1)
    (body,) = receiver.bodies("/slack/T0/B0/x")
    assert "nan_inf" in body["text"] and "job-1" in body["text"]
    assert body["blocks"][0]["type"] == "section"
    assert "loss=nan" in body["blocks"][0]["text"]["text"]
    assert "Pause the run." in body["blocks"][1]["elements"][0]["text"]


async def test_feishu_bot_signature_checked_by_the_receiver(receiver, sender):
    receiver.feishu_secret = "feishu-secret"
    good = AlertChannel(name="feishu", kind="feishu", url=receiver.url + "/feishu/hook")
    signed = good.model_copy(update={"secret": "feishu-secret"})
    wrong = good.model_copy(update={"secret": "not-the-secret"})
    assert (await sender.deliver(signed, ALERT, FAST)).ok
    bad = await sender.deliver(wrong, ALERT, FAST)
    assert not bad.ok and bad.attempts == 1 and "19021" in bad.error  # a bad sign is not retried
    unsigned = await sender.deliver(good, ALERT, FAST)
    assert not unsigned.ok
    first = receiver.bodies("/feishu/hook")[0]
    assert first["msg_type"] == "text" and "loss=nan" in first["content"]["text"]
    assert first["timestamp"].isdigit() and first["sign"]


async def test_generic_webhook_is_signed_with_hmac_sha256(receiver, sender):
    channel = AlertChannel(name="hook", kind="webhook", url=receiver.url + "/hook", secret="k3y")
    assert (await sender.deliver(channel, ALERT, FAST)).ok
    ((headers, raw),) = receiver.requests["/hook"]
    timestamp = headers["X-Posttrain-Timestamp"]
    expected = hmac.new(b"k3y", timestamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
    assert headers["X-Posttrain-Signature"] == "sha256=" + expected
    body = receiver.bodies("/hook")[0]
    # The seed's payload, plus the details.
    assert {k: body[k] for k in ("job_uuid", "anomaly", "message")} == {
        "job_uuid": "job-1",
        "anomaly": "nan_inf",
        "message": ALERT.message,
    }
    assert body["timestamp"] == int(timestamp) and body["step"] == 41


async def test_retry_after_a_500_then_delivered(receiver, sender):
    receiver.script["/flaky"] = [500, 503]
    channel = AlertChannel(name="flaky", kind="webhook", url=receiver.url + "/flaky")
    delivery = await sender.deliver(channel, ALERT, FAST)
    assert (delivery.ok, delivery.attempts) == (True, 3)
    assert len(receiver.requests["/flaky"]) == 3


async def test_gives_up_after_max_attempts_and_never_retries_a_4xx(receiver, sender):
    receiver.script["/down"] = [500, 500, 500, 500]
    receiver.script["/gone"] = [404]
    down = AlertChannel(name="down", kind="webhook", url=receiver.url + "/down")
    gone = AlertChannel(name="gone", kind="slack", url=receiver.url + "/gone")
    failed = await sender.deliver(down, ALERT, FAST)
    assert (failed.ok, failed.attempts) == (False, 3) and "HTTP 500" in failed.error
    not_found = await sender.deliver(gone, ALERT, FAST)
    assert (not_found.ok, not_found.attempts) == (False, 1)
    unreachable = AlertChannel(name="x", kind="webhook", url="http://127.0.0.1:9/nothing")
    refused = await sender.deliver(unreachable, ALERT, FAST)
    assert not refused.ok and refused.attempts == 3 and "ConnectError" in refused.error


def _anomaly(anomaly_id: str, job: str = "job-1", kind: str = "nan_inf", step: int = 41):
    return AnomalyDetected(
        anomaly_id=anomaly_id,
        job_id=job,
        anomaly_type=kind,
        severity="critical",
        step=step,
        value=None,
        message=f"{kind} at step {step}",
        pipeline_id="p-1",
        stage="sft",
        attempt=1,
    )


async def test_dedup_per_job_and_type_with_cooldown_and_routing(receiver):
    now = [1000.0]
    book = ConfigBook(
        {
            "alerts": {
                "cooldown_s": 60,
                "backoff_s": 0.01,
                "channels": [{"name": "hook", "kind": "webhook", "url": receiver.url + "/d"}],
            }
        },
        pipelines={"quiet": {"alerts": {"channels": []}}},
    )
    alerter = Alerter(book, clock=lambda: now[0])
    dedups: dict[str, AlertDedup] = {}

    async def offer(event: AnomalyDetected) -> bool:
        dedup = dedups.setdefault(event.job_id, AlertDedup())
        send, held = alerter.admit(event, dedup)
        if send:
            await alerter.deliver(event, held)
        return send

    try:
        assert await offer(_anomaly("a1"))
        assert not await offer(_anomaly("a1"))  # the same anomaly again (redelivery)
        assert not await offer(_anomaly("a2", step=50))  # same job and type, inside cooldown
        assert await offer(_anomaly("a3", kind="loss_spike"))  # another type
        assert await offer(_anomaly("a4", job="job-2"))  # another job
        now[0] += 61
        assert await offer(_anomaly("a5", step=90))  # cooldown over
        quiet = _anomaly("a6", job="job-3").model_copy(update={"pipeline_id": "quiet"})
        assert not await offer(quiet)  # routed nowhere
        # A low-severity anomaly below the channel's min_severity is not sent.
        info = _anomaly("a7", job="job-4", kind="new_best_reward").model_copy(
            update={"severity": "info"}
        )
        assert not await offer(info)
    finally:
        await alerter.aclose()
    bodies = receiver.bodies("/d")
    assert [(b["job_uuid"], b["anomaly"], b["step"]) for b in bodies] == [
        ("job-1", "nan_inf", 41),
        ("job-1", "loss_spike", 41),
        ("job-2", "nan_inf", 41),
        ("job-1", "nan_inf", 90),
    ]
    assert "1 more held back" in bodies[-1]["message"]


async def test_send_alert_seed_entry_point(receiver):
    book = ConfigBook(
        {"alerts": {"channels": [{"name": "s", "kind": "slack", "url": receiver.url + "/s"}]}}
    )
    (delivery,) = await send_alert("job-9", "grad_explosion", "grad_norm 1e4", book=book)
    assert delivery.ok
    assert "grad_explosion" in receiver.bodies("/s")[0]["text"]


@pytest.mark.integration
async def test_outcomes_are_recorded_on_the_alerts_topic(receiver, kafka_settings, producer):
    receiver.script["/bad"] = [500, 500]
    book = ConfigBook(
        {
            "alerts": {
                "max_attempts": 2,
                "backoff_s": 0.01,
                "channels": [
                    {"name": "ok", "kind": "webhook", "url": receiver.url + "/ok"},
                    {"name": "bad", "kind": "webhook", "url": receiver.url + "/bad"},
                ],
            }
        }
    )
    alerter = Alerter(book, producer=producer)
    try:
        await alerter.deliver(_anomaly("a-out", job="job-out"))
    finally:
        await alerter.aclose()
    async with EventConsumer(kafka_settings, [Topic.ALERTS], group_id=None, name="t") as c:
        seen = []

        async def both():
            seen.extend(r.envelope.data for r in await c.getmany(timeout_ms=200))
            return len(seen) >= 2

        await wait_for(both, timeout=20, what="AlertSent and AlertFailed")
    by_channel = {m.channel: m for m in seen}
    assert isinstance(by_channel["ok"], AlertSent) and by_channel["ok"].attempts == 1
    assert isinstance(by_channel["bad"], AlertFailed) and by_channel["bad"].attempts == 2
    assert "HTTP 500" in by_channel["bad"].error
    assert {m.anomaly_id for m in seen} == {"a-out"} and {m.job_id for m in seen} == {"job-out"}
