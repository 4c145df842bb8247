"""The anomaly recorder: ``posttrain.anomalies`` and the actions on the pipeline event log into
diagnostics' own tables, every anomaly exactly once.

    posttrain-diagnostics-recorder          # or: posttrain diagnose record
    # DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS, POSTTRAIN_TOPIC_NAMESPACE;
    # POSTTRAIN_RECORDER_HTTP (127.0.0.1:9467, ``off`` for none): /healthz and /metrics

One consumer group reads both topics. Each poll's records become anomaly and action records
(``core.records``), written in one transaction (``store.write_records``); the offsets are
committed only after that commit. A crash in between reads the records again, and writing them
again changes nothing (an anomaly is inserted once, an action only fills empty columns).

On ``posttrain.anomalies`` every message is ours: one that cannot be read, or of a type that does
not belong there, is parked on the dead-letter topic with the reason. The pipeline event log is
the orchestrator's, with many types: only the action events are read (picked by the type
header, before any decoding); an action event that cannot make a record is parked too.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import orjson
import typer
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from posttrain.diagnostics.core.records import (
    ACTION_EVENTS,
    ActionRecord,
    AnomalyRecord,
    InvalidRecord,
    action_record,
    anomaly_record,
    recommended_action,
)
from posttrain.diagnostics.store import WriteResult, write_records
from posttrain.events.codec import HEADER_TYPE, DecodeError, decode
from posttrain.events.kafka import EventConsumer, EventProducer, KafkaSettings
from posttrain.events.kafka.dlq import DeadLetters
from posttrain.events.messages.diagnostics import ActionRecommended, AnomalyDetected
from posttrain.events.topics import Topic
from posttrain.service import settings as service_settings
from posttrain.service.commands import DatabaseUrlOption, command_app, run_app
from posttrain.service.http import EndpointServer, Handler, Response, only, parse_address
from posttrain.service.logs import without_password
from posttrain.service.prometheus import CONTENT_TYPE, Exposition
from posttrain.service.retry import retrying

log = logging.getLogger("posttrain.diagnostics.recorder")

NAME = "posttrain-diagnostics-recorder"
GROUP = "posttrain-diagnostics-recorder"
DEFAULT_HTTP = "127.0.0.1:9467"
TOPICS = (Topic.ANOMALIES, Topic.PIPELINE_EVENTS)
# A reader that has not polled for this long is stuck (a poll returns at least every second).
STUCK_AFTER_S = 30.0


@dataclass
class RecorderStats:
    messages: int = 0
    anomalies_recorded: int = 0
    anomalies_known: int = 0  # read again (redelivery, a re-raised id): nothing written
    action_events: int = 0
    dead_letters: int = 0
    write_failures: int = 0
    commit_failures: int = 0


@dataclass
class _Batch:
    """What one poll read: records to write, each with the Kafka record it came from (to park
    it if PostgreSQL refuses it), and the offsets to commit once they are written."""

    anomalies: list[tuple[Any, AnomalyRecord]] = field(default_factory=list)
    actions: list[tuple[Any, ActionRecord]] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)


class _Unreadable(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _is_data_error(exc: BaseException) -> bool:
    """A value PostgreSQL (or the client's encoder) refuses: writing it again fails again."""
    return isinstance(exc, asyncpg.DataError | ValueError | TypeError | OverflowError)


def _header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return value.decode("utf-8", "replace")
    return None


class AnomalyRecorder:
    """Consumes ``posttrain.anomalies`` and ``posttrain.pipeline.events`` into diagnostics'
    tables. ``run(stop)`` until ``stop`` is set; ``health()`` for /healthz."""

    def __init__(
        self,
        settings: KafkaSettings,
        database_url: str,
        *,
        group_id: str = GROUP,
        migrate: bool = True,
        max_records: int = 500,
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        self.stats = RecorderStats()
        self._migrate = migrate
        self._max_records = max_records
        self._producer = EventProducer(settings)
        self._consumer = EventConsumer(settings, TOPICS, group_id=group_id, name=NAME)
        self._dlq = DeadLetters.acknowledged(self._producer, NAME)
        self._conn: asyncpg.Connection | None = None
        self.last_poll_at = time.monotonic()
        self.database_up = False
        self._started = False

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self._producer.start()
        await self._consumer.start(subscribe=False)
        await self._wait_for_topics()
        self._consumer.client.subscribe([self.settings.topic(t) for t in TOPICS])
        self._started = True

    async def _wait_for_topics(self) -> None:
        """Subscribe only once the broker's metadata shows the topics: a group that assigns
        before then gets no partitions of them until the next metadata refresh."""
        wanted = {self.settings.topic(t) for t in TOPICS}
        attempt = 0
        while not wanted <= await self._consumer.client.topics():
            attempt += 1
            if attempt % 20 == 1:
                log.warning("waiting for topics to exist", extra={"topics": sorted(wanted)})
            await asyncio.sleep(min(1.0, 0.05 * attempt))

    async def stop(self) -> None:
        self._started = False
        await self._consumer.stop()
        await self._producer.stop()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def run(self, stop: asyncio.Event) -> None:
        """Record until ``stop`` is set; the batch in hand is written and committed first."""
        await self.start()
        try:
            while not stop.is_set():
                await self.process_batch(timeout_ms=200)
        finally:
            await self.stop()

    # --- one poll -------------------------------------------------------------------------

    async def process_batch(self, timeout_ms: int = 1000) -> int:
        """Read one poll's records, write them, then commit their offsets; how many were read."""
        try:
            fetched = await self._consumer.client.getmany(
                timeout_ms=timeout_ms, max_records=self._max_records
            )
        except KafkaError as exc:
            log.warning("polling Kafka failed", extra={"error": repr(exc)})
            await asyncio.sleep(0.5)
            return 0
        self.last_poll_at = time.monotonic()
        if not fetched:
            return 0
        batch = _Batch()
        read = 0
        for tp, records in fetched.items():
            for record in records:
                await self._read(record, batch)
                read += 1
            batch.offsets[tp] = records[-1].offset + 1
        self.stats.messages += read
        await self._write(batch)
        await self._commit(batch.offsets)
        return read

    async def _read(self, record: Any, batch: _Batch) -> None:
        try:
            if record.topic == self.settings.topic(Topic.ANOMALIES):
                self._read_anomalies_message(record, batch)
            else:
                self._read_log_event(record, batch)
        except _Unreadable as exc:
            await self._park(record, exc.reason, exc.detail)

    def _read_anomalies_message(self, record: Any, batch: _Batch) -> None:
        try:
            envelope = decode(record.value, record.headers)
        except DecodeError as exc:
            raise _Unreadable(exc.reason, exc.detail) from None
        data = envelope.data
        if isinstance(data, AnomalyDetected):
            item = anomaly_record(data, event_id=envelope.id, occurred_at=envelope.occurred_at)
            batch.anomalies.append((record, item))
        elif isinstance(data, ActionRecommended):
            action = recommended_action(data, occurred_at=envelope.occurred_at)
            batch.actions.append((record, action))
        else:
            raise _Unreadable(
                "unexpected_type", f"{data.TYPE} does not belong on {Topic.ANOMALIES.value}"
            )

    def _read_log_event(self, record: Any, batch: _Batch) -> None:
        type_name = _header(record.headers, HEADER_TYPE)
        if type_name is not None and type_name not in ACTION_EVENTS:
            return  # the orchestrator's other events: not ours to read
        try:
            envelope = decode(record.value, record.headers)
        except DecodeError as exc:
            if exc.reason != "unknown_type":
                if type_name is None:
                    return  # no type header and unreadable: not known to be an action event
                raise _Unreadable(exc.reason, exc.detail) from None
            # A type this library does not know yet (ActionRefused before its schema lands
            # here): read its fields by name.
            type_name, data, occurred_at = _plain_event(record.value)
        else:
            type_name, occurred_at = envelope.data.TYPE, envelope.occurred_at
            if type_name not in ACTION_EVENTS:
                return
            data = envelope.data.model_dump()
        if type_name not in ACTION_EVENTS:
            return
        try:
            item = action_record(type_name, data, occurred_at=occurred_at)
        except InvalidRecord as exc:
            raise _Unreadable(exc.reason, exc.detail) from None
        batch.actions.append((record, item))
        self.stats.action_events += 1

    # --- writing and committing -------------------------------------------------------------

    async def _connection(self) -> asyncpg.Connection:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        if self._migrate:
            from posttrain.service.migrate import apply_migrations

            await asyncio.wait_for(apply_migrations(self.database_url, owner="diagnostics"), 30)
            self._migrate = False
        self._conn = await asyncpg.connect(self.database_url, timeout=5)
        return self._conn

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def _write(self, batch: _Batch) -> None:
        """Write the batch, retrying until PostgreSQL has it; a record it refuses is parked."""
        if not batch.anomalies and not batch.actions:
            return
        try:
            await self._write_until_stored(
                [a for _, a in batch.anomalies], [x for _, x in batch.actions]
            )
        except _Refused:
            # One value in the batch is refused: write record by record, parking the refused.
            for record, anomaly in batch.anomalies:
                await self._write_one(record, [anomaly], [])
            for record, action in batch.actions:
                await self._write_one(record, [], [action])

    async def _write_one(
        self, record: Any, anomalies: list[AnomalyRecord], actions: list[ActionRecord]
    ) -> None:
        try:
            await self._write_until_stored(anomalies, actions)
        except _Refused as exc:
            await self._park(record, "unstorable", f"PostgreSQL refused it: {exc.__cause__}")

    async def _write_until_stored(
        self, anomalies: list[AnomalyRecord], actions: list[ActionRecord]
    ) -> None:
        try:
            result: WriteResult = await retrying(
                "writing records to PostgreSQL",
                transient=lambda exc: not _is_data_error(exc),
                on_failure=self._write_failed,
            )(self._write_records, anomalies, actions)
        except Exception as exc:
            if _is_data_error(exc):
                raise _Refused() from exc
            raise
        self.database_up = True
        self.stats.anomalies_recorded += result.anomalies_inserted
        self.stats.anomalies_known += result.anomalies_known

    async def _write_records(
        self, anomalies: list[AnomalyRecord], actions: list[ActionRecord]
    ) -> WriteResult:
        return await write_records(await self._connection(), anomalies, actions)

    async def _write_failed(self, exc: BaseException) -> None:
        self.stats.write_failures += 1
        self.database_up = False
        await self._discard()

    async def _commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit the offsets of the partitions still ours. A refused commit loses nothing: the
        records are stored, and reading them again writes nothing new."""
        assigned = self._consumer.client.assignment()
        mine = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not mine:
            return
        try:
            await self._consumer.client.commit(mine)
        except (KafkaError, ValueError) as exc:
            self.stats.commit_failures += 1
            log.warning("offset commit refused", extra={"error": repr(exc)})

    async def _park(self, record: Any, reason: str, detail: str) -> None:
        """Put a record on the dead-letter topic, retrying until the broker has it: moving past
        it before that would lose it."""
        await retrying("writing to the DLQ", transient=KafkaError)(
            self._dlq.park, record, reason, detail
        )
        self.stats.dead_letters += 1

    # --- observation ----------------------------------------------------------------------

    def assigned_partitions(self) -> list[str]:
        if not self._started:
            return []
        return sorted(f"{tp.topic}:{tp.partition}" for tp in self._consumer.client.assignment())

    def health(self) -> dict[str, Any]:
        """Ready once the group gave this recorder partitions and it polls: only then does it
        read what is published."""
        assigned = self.assigned_partitions()
        since_poll = time.monotonic() - self.last_poll_at
        ready = bool(assigned) and since_poll < STUCK_AFTER_S
        return {
            "status": "ok" if ready else "not ready",
            "assigned_partitions": assigned,
            "seconds_since_poll": round(since_poll, 3),
            "database_up": self.database_up,
            **vars(self.stats),
        }

    def prometheus(self) -> str:
        text = Exposition("posttrain_diagnostics_recorder")
        for name, help_, value in (
            ("messages_total", "Messages read from both topics.", self.stats.messages),
            ("anomalies_recorded_total", "Anomalies written.", self.stats.anomalies_recorded),
            (
                "anomalies_known_total",
                "Anomalies read again and left as stored.",
                self.stats.anomalies_known,
            ),
            ("action_events_total", "Action events recorded.", self.stats.action_events),
            ("dead_lettered_total", "Messages parked in the DLQ.", self.stats.dead_letters),
            ("write_failures_total", "Failed writes (retried).", self.stats.write_failures),
        ):
            text.add(name, "counter", help_, value)
        return text.render()


class _Refused(Exception):
    """PostgreSQL refused a value (the cause): the same write would fail again."""


def _plain_event(value: bytes | None) -> tuple[str, dict[str, Any], datetime]:
    """Type, fields and time of an envelope whose type the codec does not know."""
    try:
        doc = orjson.loads(value or b"")
        type_name, data = doc["type"], doc["data"]
        occurred_at = datetime.fromisoformat(doc["occurred_at"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise _Unreadable("malformed", f"not an envelope: {exc!r}") from None
    if not isinstance(type_name, str) or not isinstance(data, dict):
        raise _Unreadable("malformed", "envelope needs string 'type' and object 'data'")
    return type_name, data, occurred_at


def routes(recorder: AnomalyRecorder) -> dict[str, Handler]:
    async def healthz(method: str) -> Response:
        health = recorder.health()
        status = 200 if health["status"] == "ok" else 503
        return status, "application/json", orjson.dumps(health)

    async def metrics(method: str) -> Response:
        return 200, CONTENT_TYPE, recorder.prometheus().encode()

    return {"/healthz": only("GET", healthz), "/metrics": only("GET", metrics)}


# --- the process ---------------------------------------------------------------------------


app = command_app()


@app.command(help="Keep every anomaly (once) and the actions taken on it in PostgreSQL.")
def record(
    http: Annotated[
        str,
        typer.Option(
            envvar="POSTTRAIN_RECORDER_HTTP",
            help="host:port of /healthz and /metrics; 'off' for none",
        ),
    ] = DEFAULT_HTTP,
    database_url: DatabaseUrlOption = None,
    no_migrate: Annotated[
        bool, typer.Option("--no-migrate", help="do not apply migrations")
    ] = False,
    log_level: Annotated[str, typer.Option(envvar="LOG_LEVEL")] = "INFO",
) -> None:
    from posttrain.service.logs import configure_json_logging

    configure_json_logging(log_level)
    options = Options(http, service_settings.database_url(database_url), no_migrate)
    asyncio.run(serve(options))


@dataclass(frozen=True, slots=True)
class Options:
    """What the command line asked for."""

    http: str
    database_url: str
    no_migrate: bool


async def serve(args: Options) -> None:
    recorder = AnomalyRecorder(
        KafkaSettings.from_env(client_id=NAME), args.database_url, migrate=not args.no_migrate
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    address = parse_address(args.http)
    endpoints = EndpointServer(routes(recorder), *address) if address is not None else None
    identity: dict[str, object] = {
        "namespace": recorder.settings.namespace,
        "kafka": recorder.settings.bootstrap_servers,
        "database": without_password(args.database_url),
        "http": None,
    }
    try:
        if endpoints is not None:
            port = await endpoints.start()
            identity["http"] = f"{endpoints.host}:{port}"
        log.info("recorder started", extra=identity)
        await recorder.run(stop)
    finally:
        if endpoints is not None:
            await endpoints.stop()
        log.info("recorder stopped", extra={**identity, **vars(recorder.stats)})


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, "posttrain-diagnostics-recorder")


if __name__ == "__main__":
    sys.exit(main())
