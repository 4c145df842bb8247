"""The diagnostics stream: a Faust app over posttrain.metrics, keyed by job.

Agents (each with concurrency 1: faust-streaming can lose messages on restart with more, see
DESIGN.md; scale by partitions):

- ``detect`` reads each MetricsReported through the views decoder (one msgspec pass), folds it
  into its job's ``JobState`` (a changelog-backed table) and emits AnomalyDetected on
  posttrain.anomalies. A restarted worker restores the table from
  its changelog; the points it reads again (offsets not yet committed) are recognised by their
  (source, seq) and raise nothing twice.
- ``failures`` turns StageFailed(kind=oom) reports into gpu_oom anomalies, once per command.
- ``act`` applies the action policy to each anomaly (per-job cooldowns in a table) and sends a
  RequestAction on posttrain.pipeline.commands, keyed by pipeline, or in dry-run mode an
  ActionRecommended on posttrain.anomalies.
- ``alert`` routes each anomaly to its pipeline's channels, deduplicated per (job, type) with a
  cooldown in a table; the table entry is flushed to its changelog before the HTTP call, so a
  crash never sends the same alert twice.

Topics are the project's (namespaced by KafkaSettings, never declared here); only Faust's own
changelog topics are created by Faust, with the partition count of the topic they shadow.

    python -m posttrain.diagnostics.stream  # KAFKA_BOOTSTRAP_SERVERS, POSTTRAIN_TOPIC_NAMESPACE

Also: POSTTRAIN_DIAGNOSTICS_CONFIG (per-pipeline thresholds, alert channels, action policy),
POSTTRAIN_DIAGNOSTICS_SCAN_S with DATABASE_URL (periodic scan of failed jobs),
POSTTRAIN_DIAGNOSTICS_WEB_PORT (Faust's web server on 127.0.0.1, for liveness).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import faust
import orjson
import typer
from aiokafka.errors import KafkaConnectionError
from faust.sensors import Monitor, Sensor
from faust.serializers import codecs

from posttrain.diagnostics.alerts import Alerter, load_config_book
from posttrain.diagnostics.batch import DiagnosticService
from posttrain.diagnostics.core.alerting import AlertDedup
from posttrain.diagnostics.core.config import ConfigBook
from posttrain.diagnostics.core.messages import detect, oom_detected
from posttrain.diagnostics.core.policy import PolicyState, decide, to_message
from posttrain.diagnostics.core.state import JobState
from posttrain.diagnostics.settings import DiagnosticsSettings
from posttrain.events import DecodeError, Envelope, decode, encode
from posttrain.events.kafka import KafkaSettings, NewTopicSpec, await_leaders, ensure_named_topics
from posttrain.events.kafka.admin import LEADERS_TIMEOUT_S
from posttrain.events.kafka.dlq import DeadLetters
from posttrain.events.messages.diagnostics import AnomalyDetected
from posttrain.events.messages.metrics import MetricsReported
from posttrain.events.messages.pipeline import RequestAction
from posttrain.events.messages.stage import StageFailed
from posttrain.events.topics import TOPICS, Topic
from posttrain.events.views import ViewDecoder
from posttrain.service.commands import command_app, run_app
from posttrain.service.prometheus import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE
from posttrain.service.prometheus import Exposition
from posttrain.service.settings import posttrain_home

log = logging.getLogger(__name__)
APP_NAME = "posttrain-diagnostics"
# How long a stream started while the broker is away waits for it before it gives up.
BROKER_WAIT_S = 120.0
# The detect agent takes up to this many messages at a time, waiting at most this long for more:
# per batch, each job's state is written to the changelog once.
DETECT_BATCH = 500
DETECT_WITHIN_S = 0.005
# A job's state goes to its changelog at least this often (and before any anomaly it raises).
CHANGELOG_EVERY_S = 1.0


class _StateCodec(codecs.Codec):
    """Table values on the changelog: a state object's ``to_dict()`` as JSON; read back as the
    dict, turned into the state object (with its pipeline's configuration) on first use."""

    def _dumps(self, obj: Any) -> bytes:
        return orjson.dumps(obj.to_dict() if hasattr(obj, "to_dict") else obj)

    def _loads(self, s: bytes) -> Any:
        return orjson.loads(s)


codecs.register("posttrain_state", _StateCodec())


def _data_root() -> Path:
    root = posttrain_home() / "diagnostics"
    root.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    return root


def _broker_url(bootstrap_servers: str) -> str:
    return ";".join(f"kafka://{h.strip()}" for h in bootstrap_servers.split(",") if h.strip())


class _QuietMonitor(Monitor):
    """Faust's monitor without its per-message bookkeeping (kept: offsets, commits). At 1,000
    messages a second that bookkeeping costs a good share of a core; the figures it keeps are
    for Faust's web views, which this service does not serve."""

    on_message_in = Sensor.on_message_in
    on_stream_event_in = Sensor.on_stream_event_in
    on_stream_event_out = Sensor.on_stream_event_out
    on_message_out = Sensor.on_message_out
    on_table_get = Sensor.on_table_get
    on_table_set = Sensor.on_table_set
    on_send_initiated = Sensor.on_send_initiated
    on_send_completed = Sensor.on_send_completed


class DiagnosticsStream:
    """Builds the Faust app and its agents for one Kafka namespace and one configuration."""

    def __init__(
        self,
        settings: KafkaSettings,
        book: ConfigBook | None = None,
        *,
        alerter: Alerter | None = None,
        web_port: int | None = None,
        database_url: str | None = None,
        **faust_options: Any,
    ) -> None:
        self.settings = settings
        environment = DiagnosticsSettings()
        self.book = book or ConfigBook()
        self.alerter = alerter or Alerter(self.book)
        self.processed_messages = 0
        self.dead_lettered = 0
        self.anomalies_detected = 0  # by the detectors from metrics (OOMs and scans aside)
        self.actions_requested = 0
        self.alert_outcomes: Counter[str] = Counter()  # deliveries: "sent", "failed"
        metrics_partitions = TOPICS[Topic.METRICS].partitions
        options: dict[str, Any] = {
            "broker": _broker_url(settings.bootstrap_servers),
            "store": "memory://",
            "topic_partitions": metrics_partitions,
            "topic_disable_leader": True,
            "consumer_auto_offset_reset": "earliest",
            "key_serializer": "raw",
            "value_serializer": "raw",
            # Table changelog writes (one per message read) are batched into few produce
            # requests: with linger 0 each one is a request and a syscall of its own, which at
            # 1,000 messages/s costs more CPU than the detection itself.
            "producer_linger_ms": 5,
            "producer_max_batch_size": 512 * 1024,
            "web_enabled": web_port is not None,
            "table_cleanup_interval": 3600.0,
            # Tables live in memory, but Faust still makes a data directory, by default in the
            # working directory: keep it with the rest of posttrain's state.
            "datadir": str(_data_root() / settings.group(APP_NAME)),
            # A worker that died is replaced within ~10 s instead of the default minute: its
            # partitions (and so its jobs' detection) wait for the group to notice it is gone.
            "broker_session_timeout": environment.session_timeout_s,
            "broker_heartbeat_interval": 1.0,
        }
        credentials = settings.faust_credentials()
        if credentials is not None:
            options["broker_credentials"] = credentials
        if web_port is not None:
            options["web_port"] = web_port
            options["web_host"] = "127.0.0.1"
        options.update(faust_options)
        self.app = faust.App(settings.group(APP_NAME), monitor=_QuietMonitor(), **options)
        app = self.app

        def topic(t: Topic) -> Any:
            return app.topic(
                settings.topic(t),
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
                internal=False,
            )

        self.metrics = topic(Topic.METRICS)
        self.reports = topic(Topic.STAGE_REPORTS)
        self.anomalies = topic(Topic.ANOMALIES)
        self.commands = topic(Topic.PIPELINE_COMMANDS)
        self.alerts = topic(Topic.ALERTS)
        self.dlq = topic(Topic.DLQ)

        def table(name: str, partitions: int) -> Any:
            t = app.Table(name, default=None, partitions=partitions, key_type=str)
            t.value_serializer = "posttrain_state"  # type: ignore[attr-defined]
            return t

        # Keys as raw bytes with the producer's partitioner: a job's changelog entry lands on
        # the partition its metrics come from (murmur2 of the same bytes), which lets the detect
        # agent write a whole batch's states after the batch.
        self.jobs = app.Table(
            "jobs",
            default=None,
            partitions=metrics_partitions,
            key_type=bytes,
            use_partitioner=True,
        )
        self.jobs.value_serializer = "posttrain_state"  # type: ignore[attr-defined]
        self.failures_seen = table("failures-seen", TOPICS[Topic.STAGE_REPORTS].partitions)
        self.policies = table("policies", TOPICS[Topic.ANOMALIES].partitions)
        self.dedup = table("alert-dedup", TOPICS[Topic.ANOMALIES].partitions)

        self._views = ViewDecoder()
        # Job states changed since their last changelog write, and when each was written.
        self._dirty: dict[bytes, JobState] = {}
        self._written_at: dict[bytes, float] = {}
        self._flushed_at = time.monotonic()
        self.service: DiagnosticService | None = None
        scan_s = environment.scan_s
        if scan_s > 0 and database_url:
            # Failed jobs in the orchestrator's read model (e.g. OOM), raised with stable ids.
            self.service = DiagnosticService(database_url, self.book)
            app.timer(scan_s)(self._scan)
        app.agent(self.metrics, name="detect", concurrency=1)(self._detect)
        app.timer(CHANGELOG_EVERY_S)(self._flush_timer)
        app.agent(self.reports, name="failures", concurrency=1)(self._failures)
        app.agent(self.anomalies, name="act", concurrency=1)(self._act)
        if web_port is not None:
            self._add_pages()
        app.agent(self.anomalies, name="alert", concurrency=1)(self._alert)

    # --- helpers ---------------------------------------------------------------------------

    # --- /healthz and /metrics, on Faust's own web server --------------------------------------

    def changelog_topics(self) -> list[NewTopicSpec]:
        """Faust's changelog topics for the tables, as Faust would create them: compacted, with
        the partitions of the topic each table shadows."""
        return [
            NewTopicSpec(
                table.changelog_topic.get_topic_name(),
                table.partitions or TOPICS[Topic.METRICS].partitions,
                {"cleanup.policy": "compact"},
            )
            for table in (self.jobs, self.failures_seen, self.policies, self.dedup)
        ]

    def source_topics(self) -> list[str]:
        return [
            self.settings.topic(t) for t in (Topic.METRICS, Topic.STAGE_REPORTS, Topic.ANOMALIES)
        ]

    async def prepare_topics(self, timeout_s: float = LEADERS_TIMEOUT_S) -> None:
        """Before the worker starts: create the changelog topics and wait until every topic the
        worker subscribes to has its leaders. Faust creates its changelogs itself and subscribes
        at once; on a fresh broker the last one created is not yet in its metadata, the group's
        assignment leaves it out, and every write to that table then fails with
        PartitionsMismatch until a rebalance that nothing triggers."""
        names = self.source_topics() + [t.name for t in self.changelog_topics()]

        async def prepare() -> None:
            await ensure_named_topics(self.settings, self.changelog_topics(), wait_s=None)
            await await_leaders(self.settings, names, timeout_s)

        await self._until_the_broker_answers(prepare)

    @staticmethod
    async def _until_the_broker_answers(
        step: Callable[[], Awaitable[object]], wait_s: float = BROKER_WAIT_S
    ) -> None:
        """``step``, again while the broker cannot be reached, for up to ``wait_s``: a stream
        started while the broker restarts waits for it instead of exiting (the resilience
        suite restarted it just before a broker restart, and it ended with "Unable to
        bootstrap")."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                await step()
                return
            except KafkaConnectionError as exc:
                if time.monotonic() >= deadline:
                    raise
                log.warning("the broker does not answer yet (%s): waiting for it", exc)
                await asyncio.sleep(1.0)

    def ready(self) -> bool:
        """The worker owns partitions of the topics it reads, has restored its tables from their
        changelogs, and fetches: points sent now are read now."""
        app = self.app
        recovery = app.tables.recovery  # type: ignore[attr-defined]
        if app.rebalancing or not recovery.completed.is_set():
            return False
        assigned = app.assignor.assigned_actives() if app.assignor else set()
        return any(tp.topic in self.source_topics() for tp in assigned)

    def health(self) -> dict[str, Any]:
        assigned = self.app.assignor.assigned_actives() if self.app.assignor else set()
        ready = self.ready()
        return {
            "status": "ok" if ready else "starting",
            "ready": ready,
            "partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in assigned),
            "rebalancing": bool(self.app.rebalancing),
            "processed_messages": self.processed_messages,
            "dead_lettered": self.dead_lettered,
        }

    def prometheus(self) -> str:
        text = Exposition("posttrain_diagnostics")
        for name, help_, value in (
            ("messages_total", "Metric reports read.", self.processed_messages),
            ("dead_lettered_total", "Messages parked in the DLQ.", self.dead_lettered),
            ("anomalies_total", "Anomalies found in metric reports.", self.anomalies_detected),
            (
                "actions_requested_total",
                "Actions asked of the orchestrator.",
                self.actions_requested,
            ),
        ):
            text.add(name, "counter", help_, value)
        text.add(
            "alerts_total",
            "counter",
            "Alert deliveries, by outcome.",
            [({"outcome": o}, n) for o, n in sorted(self.alert_outcomes.items())],
        )
        return text.render()

    def _add_pages(self) -> None:
        stream = self

        # Faust makes each function the GET of a view: (view, request) -> response.
        async def healthz(view: Any, request: Any) -> Any:
            doc = stream.health()
            return view.web.json(doc, status=200 if doc["ready"] else 503)

        async def metrics(view: Any, request: Any) -> Any:
            # aiohttp adds the charset itself and refuses one in the content type.
            content_type = PROMETHEUS_CONTENT_TYPE.split("; charset")[0]
            return view.web.text(stream.prometheus(), content_type=content_type)

        self.app.page("/healthz")(healthz)
        self.app.page("/metrics")(metrics)

    async def _decode(self, event: Any, *, view: bool = False) -> Any:
        """The message as an envelope (with ``view``: of a view where its type has one, for
        code that only reads fields), or None once it is parked on the dead-letter topic."""
        message = event.message
        headers = message.headers
        pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        try:
            if view:
                return self._views.decode(message.value, pairs)
            return decode(message.value, pairs)
        except DecodeError as exc:
            self.dead_lettered += 1
            await DeadLetters(self.dlq.send, APP_NAME).park(message, exc.reason, exc.detail)
            return None

    async def _send(self, topic: Any, envelope: Envelope[Any]) -> None:
        key, value, headers = encode(envelope)
        await topic.send(key=key, value=value, headers=headers)

    def _job_state(self, key: bytes, pipeline_id: str | None) -> JobState:
        config = self.book.for_pipeline(pipeline_id).detectors
        current = self.jobs.get(key)
        if isinstance(current, JobState):
            return current
        return JobState(config, current if isinstance(current, dict) else None)

    def _write_state(self, key: bytes, state: JobState, now: float) -> None:
        self.jobs[key] = state
        self._written_at[key] = now
        self._dirty.pop(key, None)

    def _flush_states(self, now: float) -> None:
        """Write every state changed since its last write (also on a timer: a job that went
        quiet still has its last points in its changelog soon)."""
        for key, state in list(self._dirty.items()):
            self._write_state(key, state, now)
        self._flushed_at = now

    async def _flush_timer(self) -> None:
        self._flush_states(time.monotonic())

    async def _scan(self) -> None:
        if self.service is None:
            return
        try:
            found = await self.service.scan_failed_jobs()
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("failed-job scan failed", extra={"error": str(exc)})
            return
        for event in found:
            await self._send(self.anomalies, Envelope.create(event, key=event.job_id))

    # --- agents ----------------------------------------------------------------------------

    async def _detect(self, stream: Any) -> AsyncIterator[None]:
        async for events in stream.take_events(DETECT_BATCH, within=DETECT_WITHIN_S):
            touched: dict[bytes, JobState] = {}
            outputs: list[Envelope[Any]] = []
            for event in events:
                await self._detect_one(event, touched, outputs)
            # A job's state goes to the changelog before an anomaly of its leaves: a crash in
            # between re-reads these points, finds them folded in already, and raises nothing
            # twice. Other states go at most every CHANGELOG_EVERY_S (a write per job per
            # batch was a sixth of the stream's work): a crash folds the points since again,
            # from the older state, and the fold being deterministic, raises nothing new.
            raised = {out.key.encode() for out in outputs}
            now = time.monotonic()
            for key, state in touched.items():
                if key in raised or key not in self._written_at:
                    self._write_state(key, state, now)
                else:
                    self._dirty[key] = state
            if now - self._flushed_at >= CHANGELOG_EVERY_S:
                self._flush_states(now)
            for out in outputs:
                await self._send(self.anomalies, out)
            self.processed_messages += len(events)
            self.anomalies_detected += len(outputs)
            yield None

    async def _detect_one(
        self, event: Any, touched: dict[bytes, JobState], outputs: list[Envelope[Any]]
    ) -> None:
        envelope = await self._decode(event, view=True)
        if envelope is None or envelope.type != MetricsReported.TYPE:
            return
        # A view (one msgspec pass, ~1 us a point, NaN points too) unless the message needs the
        # contract's reader (another version): the rules only read field values.
        data: MetricsReported = envelope.data
        cause_id, correlation = envelope.id, envelope.correlation_id
        key = data.job_id.encode()
        state = touched.get(key) or self._job_state(key, data.pipeline_id)
        touched[key] = state
        source, first = data.source, data.first_seq
        sourced = ((source, first + i, point) for i, point in enumerate(data.points))
        for out in detect(
            state,
            data.job_id,
            sourced,
            pipeline_id=data.pipeline_id,
            stage=data.stage,
            attempt=data.attempt,
        ):
            outputs.append(
                Envelope.create(
                    out,
                    key=data.job_id,
                    correlation_id=correlation or cause_id,
                    causation_id=cause_id,
                )
            )

    async def _failures(self, stream: Any) -> AsyncIterator[None]:
        async for event in stream.events():
            envelope = await self._decode(event)
            if envelope is None or not isinstance(envelope.data, StageFailed):
                yield None
                continue
            failed: StageFailed = envelope.data
            if failed.kind != "oom" or self.failures_seen.get(failed.command_id):
                yield None
                continue
            self.failures_seen[failed.command_id] = {"job_id": failed.job_id}
            state = JobState(self.book.for_pipeline(failed.pipeline_id).detectors)
            step = failed.details.get("step")
            for anomaly in state.observe_failure(
                "oom",
                failed.error,
                attempt_key=failed.command_id,
                step=int(step) if isinstance(step, int) else 0,
            ):
                out = oom_detected(
                    failed.job_id,
                    failed.command_id,
                    anomaly,
                    pipeline_id=failed.pipeline_id,
                    stage=failed.stage,
                    attempt=failed.attempt,
                    emitted_at=failed.finished_at,
                )
                await self._send(self.anomalies, envelope.caused(out, key=failed.job_id))
            yield None

    async def _anomalies(self, stream: Any) -> AsyncIterator[Envelope[Any] | None]:
        """One item per event read, so that each is acknowledged in turn: the anomaly, or None
        for anything else (an unreadable message has gone to the DLQ)."""
        async for event in stream.events():
            envelope = await self._decode(event)
            ok = envelope is not None and isinstance(envelope.data, AnomalyDetected)
            yield envelope if ok else None

    async def _act(self, stream: Any) -> AsyncIterator[None]:
        async for envelope in self._anomalies(stream):
            if envelope is not None:
                await self._act_on(envelope, envelope.data)
            yield None

    async def _act_on(self, envelope: Envelope[Any], anomaly: AnomalyDetected) -> None:
        config = self.book.for_pipeline(anomaly.pipeline_id).actions
        stored = self.policies.get(anomaly.job_id)
        state = stored if isinstance(stored, PolicyState) else PolicyState(stored)
        decision = decide(anomaly, config, state)
        self.policies[anomaly.job_id] = state
        if decision is None:
            return
        message = to_message(anomaly, decision)
        if isinstance(message, RequestAction):
            await self._send(self.commands, envelope.caused(message, key=message.pipeline_id))
            self.actions_requested += 1
        else:
            await self._send(self.anomalies, envelope.caused(message, key=anomaly.job_id))

    async def _alert(self, stream: Any) -> AsyncIterator[None]:
        async for envelope in self._anomalies(stream):
            if envelope is not None:
                await self._alert_on(envelope, envelope.data)
            yield None

    async def _alert_on(self, envelope: Envelope[Any], anomaly: AnomalyDetected) -> None:
        stored = self.dedup.get(anomaly.job_id)
        dedup = stored if isinstance(stored, AlertDedup) else AlertDedup(stored)
        send, held_back = self.alerter.admit(anomaly, dedup)
        self.dedup[anomaly.job_id] = dedup
        if send:
            # At most once: the decision is durable before the HTTP call.
            await self.app.producer.flush()
            for d in await self.alerter.deliver(anomaly, held_back):
                await self._send(self.alerts, envelope.caused(_outcome(anomaly, d)))
                self.alert_outcomes["sent" if d.ok else "failed"] += 1


def _outcome(anomaly: AnomalyDetected, d: Any) -> Any:
    from posttrain.events.messages.diagnostics import AlertFailed, AlertSent

    if d.ok:
        return AlertSent(
            anomaly_id=anomaly.anomaly_id,
            job_id=anomaly.job_id,
            channel=d.channel,
            attempts=d.attempts,
        )
    return AlertFailed(
        anomaly_id=anomaly.anomaly_id,
        job_id=anomaly.job_id,
        channel=d.channel,
        attempts=d.attempts,
        error=d.error[:1000],
    )


def create_stream(
    settings: KafkaSettings | None = None, book: ConfigBook | None = None, **options: Any
) -> DiagnosticsStream:
    settings = settings or KafkaSettings.from_env(client_id=APP_NAME)
    return DiagnosticsStream(settings, book or load_config_book(), **options)


def create_app(
    settings: KafkaSettings | None = None, book: ConfigBook | None = None, **options: Any
) -> faust.App:
    return create_stream(settings, book, **options).app


cli = command_app()


@cli.command(
    help="The streaming diagnostics service: anomalies from posttrain.metrics, alerts, and "
    "automatic actions through the orchestrator.",
    epilog="Environment: KAFKA_BOOTSTRAP_SERVERS, POSTTRAIN_TOPIC_NAMESPACE, "
    "POSTTRAIN_DIAGNOSTICS_CONFIG (thresholds, alert channels, action policy), "
    "POSTTRAIN_DIAGNOSTICS_WEB_PORT (/healthz and /metrics), POSTTRAIN_DIAGNOSTICS_SCAN_S "
    "with DATABASE_URL (a periodic scan of failed jobs), LOG_LEVEL.",
)
def serve(
    web_port: Annotated[
        int | None,
        typer.Option(
            help="serve /healthz and /metrics on 127.0.0.1:PORT "
            "(default: $POSTTRAIN_DIAGNOSTICS_WEB_PORT, else none)",
        ),
    ] = None,
) -> None:
    try:
        options: dict[str, Any] = {"web_port": web_port} if web_port else {}
        environment = DiagnosticsSettings(**options)
    except ValueError as exc:  # pydantic's ValidationError names the field
        raise typer.BadParameter(str(exc)) from None
    _serve(environment.web_port or None, environment.scan_database_url)


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(cli, argv, "posttrain-diagnostics")


def _serve(port: int | None, database_url: str | None) -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"))
    stream = create_stream(web_port=port, database_url=database_url)
    app = stream.app
    # On a loop of its own, not set as current: the worker makes and runs its own.
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(stream.prepare_topics())
    finally:
        loop.close()
    # The worker reads no arguments of its own: ours are parsed above.
    sys.argv = sys.argv[:1]
    worker = faust.Worker(app, loglevel=os.environ.get("LOG_LEVEL", "info").lower())
    started = time.time()
    identity = {
        "app": app.conf.id,
        "namespace": stream.settings.namespace,
        "kafka": stream.settings.bootstrap_servers,
        "http": f"127.0.0.1:{port}" if port else None,
        "pid": os.getpid(),
    }
    # Its logs are Faust's plain text, not JSON: the identity goes in the message itself.
    said = ", ".join(f"{k} {v}" for k, v in identity.items())
    log.info("diagnostics stream started: %s", said, extra={**identity, "t": started})
    try:
        worker.execute_from_commandline()
    finally:
        log.info("diagnostics stream stopped: %s", said, extra=identity)


if __name__ == "__main__":
    sys.exit(main())
