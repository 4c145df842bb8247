"""The ingest service: ``posttrain.metrics`` -> PostgreSQL, every point exactly once.

Two tasks share one event loop:

- the reader polls Kafka, turns each message into rows (or parks it on the dead-letter topic),
  and closes a batch when the policy says so;
- the writer writes closed batches in order, retrying with backoff while PostgreSQL is away, and
  commits each batch's offsets only after its rows are committed.

A crash anywhere loses nothing: offsets lag the rows, so what was written but not committed is
read again, and the unique index makes the second write a no-op. Memory stays bounded: while
more than ``max_pending_rows`` rows wait, the reader pauses its partitions (it keeps polling, so
the group does not think it dead) and resumes once the writer has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from tenacity import AsyncRetrying
from tenacity.wait import wait_base

from posttrain.events.codec import DecodeError, decode
from posttrain.events.kafka import EventProducer, KafkaSettings
from posttrain.events.kafka.dlq import DeadLetters
from posttrain.events.messages.metrics import MetricsReported
from posttrain.events.topics import Topic
from posttrain.metrics_ingest.core.batching import DEFAULT_POLICY, Batch, Batcher, BatchPolicy
from posttrain.metrics_ingest.core.rows import ReportRows, RowError
from posttrain.metrics_ingest.core.wire import read_report, rows_from_message
from posttrain.metrics_ingest.flushing import advertised_client_id
from posttrain.metrics_ingest.stats import IngestStats
from posttrain.metrics_ingest.store import Connector, MetricsWriter, WriteResult, is_data_error
from posttrain.service.retry import backoff as retry_backoff
from posttrain.service.retry import retrying

log = logging.getLogger(__name__)

GROUP_ID = "metrics-ingest"
NAME = "metrics-ingest"


class Pending(NamedTuple):
    """A message's rows, with the record they came from (to park it if PostgreSQL refuses)."""

    report: ReportRows
    record: Any


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    """Kafka consumer tuning. Fetch sizes bound what the client prefetches per partition, which
    counts in memory on top of ``max_pending_rows``."""

    max_poll_records: int = 64
    fetch_max_bytes: int = 16 * 1024 * 1024
    max_partition_fetch_bytes: int = 2 * 1024 * 1024
    # The broker holds a fetch until this much is there or ``fetch_max_wait_ms`` passed. With
    # aiokafka's default (a byte), a trickle of small messages (many jobs stepping once a
    # second, a message each) is fetched a few messages at a time, and parsing each fetch's
    # request and response in Python cost more than the rows themselves. The wait is well
    # inside a batch's age (``BatchPolicy.max_age_s``); a busy topic fills it at once.
    fetch_min_bytes: int = 64 * 1024
    fetch_max_wait_ms: int = 50
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 2_000
    # Static membership: a restarted instance with the same id takes its partitions back at
    # once instead of waiting for its old session to expire.
    group_instance_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# Services running in this process, for ``flush_metrics()`` (``flushing.py``).
_RUNNING: weakref.WeakSet[IngestService] = weakref.WeakSet()


class IngestService:
    """Consumes ``posttrain.metrics`` in a consumer group and writes PostgreSQL."""

    def __init__(
        self,
        kafka: KafkaSettings,
        database_url: str,
        *,
        policy: BatchPolicy = DEFAULT_POLICY,
        group_id: str = GROUP_ID,
        name: str = NAME,
        backoff: wait_base | None = None,
        consumer: ConsumerOptions | None = None,
        migrate: bool = True,
        http_address: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kafka = kafka
        self.policy = policy
        self.name = name
        self.backoff = backoff or retry_backoff()
        self.stats = IngestStats()
        self._clock = clock
        options = consumer or ConsumerOptions()
        self._max_poll_records = options.max_poll_records
        # The group's member list is how ``flush_metrics()`` in another process finds this
        # instance's /flush: the client id carries the endpoints' address.
        self.group = kafka.group(group_id)
        self.client_id = advertised_client_id(f"{kafka.client_id}-{name}", http_address)
        self._consumer = AIOKafkaConsumer(
            **kafka.client_options(),
            client_id=self.client_id,
            group_id=self.group,
            group_instance_id=options.group_instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            fetch_max_bytes=options.fetch_max_bytes,
            max_partition_fetch_bytes=options.max_partition_fetch_bytes,
            fetch_min_bytes=options.fetch_min_bytes,
            fetch_max_wait_ms=options.fetch_max_wait_ms,
            session_timeout_ms=options.session_timeout_ms,
            heartbeat_interval_ms=options.heartbeat_interval_ms,
            **options.extra,
        )
        self._producer = EventProducer(kafka, linger_ms=0)
        self._dlq = DeadLetters.acknowledged(self._producer, name)
        self._connector = Connector(database_url, migrate=migrate)
        self._writer = MetricsWriter()
        self._batcher: Batcher[TopicPartition, Pending] = Batcher(policy)
        self._queue: asyncio.Queue[Batch[TopicPartition, Pending] | None] = asyncio.Queue()
        self._inflight_rows = 0
        self._sealed = 0  # batches handed to the writer
        self._written = 0  # batches the writer has finished
        self._progress = asyncio.Condition()
        self._committed: dict[TopicPartition, int] = {}
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.last_poll_at = clock()
        # The group has given this instance its partitions (perhaps none) at least once: what is
        # sent from now on is read. Until then /healthz says "starting".
        self.assigned = False

    # --- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._producer.start()
        await self._consumer.start()
        topic = self.kafka.topic(Topic.METRICS)
        await self._wait_for_topic(topic)
        self._consumer.subscribe([topic], listener=_Rebalance(self))
        self._tasks = [
            asyncio.create_task(self._read_loop(), name=f"{self.name}-reader"),
            asyncio.create_task(self._write_loop(), name=f"{self.name}-writer"),
        ]
        _RUNNING.add(self)

    async def _wait_for_topic(self, topic: str) -> None:
        """Subscribe only once the broker's metadata shows the topic: a group that assigns
        before then gets no partitions, and would only notice at the next metadata refresh."""
        attempt = 0
        while topic not in await self._consumer.topics():
            attempt += 1
            if attempt % 20 == 1:
                log.warning("waiting for topic %s to exist", topic, extra={"topic": topic})
            await asyncio.sleep(min(1.0, 0.05 * attempt))

    async def stop(self, *, drain: bool = True, timeout_s: float = 30.0) -> None:
        """Stop reading; with ``drain``, write and commit what was read (within ``timeout_s``,
        after which the rest is simply read again by the next instance)."""
        _RUNNING.discard(self)
        self._stopping.set()
        reader, writer = self._tasks or (None, None)
        if reader is not None:
            await asyncio.gather(reader, return_exceptions=True)
        if writer is not None:
            if drain and not writer.done():
                self._seal()
            self._queue.put_nowait(None)
            await asyncio.wait({writer}, timeout=timeout_s)
            if not writer.done():
                writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        await self._consumer.stop()
        await self._producer.stop()
        await self._connector.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (or a task fails), then stop cleanly."""
        await self.start()
        try:
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait(
                [stopper, *self._tasks], return_when=asyncio.FIRST_COMPLETED
            )
            stopper.cancel()
            for task in done:
                if task is not stopper and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            await self.stop()

    @property
    def alive(self) -> bool:
        """Both tasks are running (or were stopped on purpose)."""
        return bool(self._tasks) and not any(
            t.done() and not t.cancelled() and t.exception() is not None for t in self._tasks
        )

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    # --- flushing on demand -----------------------------------------------------------------

    async def flush(self, timeout_s: float | None = 60.0) -> int:
        """Write what has been read so far, now, and wait until it is durable; returns the rows
        inserted meanwhile."""
        before = self.stats.rows_inserted
        self._seal()
        target = self._sealed
        async with self._progress:
            await asyncio.wait_for(
                self._progress.wait_for(lambda: self._written >= target), timeout_s
            )
        return self.stats.rows_inserted - before

    # --- the reader ---------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        consumer = self._consumer
        batcher = self._batcher
        while not self._stopping.is_set():
            self._apply_backpressure()
            wait = batcher.seconds_until_due(self._clock())
            timeout_ms = 100 if wait is None else max(0, min(100, int(wait * 1000)))
            try:
                fetched = await consumer.getmany(
                    timeout_ms=timeout_ms, max_records=self._max_poll_records
                )
            except KafkaError as exc:
                log.warning("polling Kafka failed", extra={"error": repr(exc)})
                await asyncio.sleep(0.5)
                continue
            self.last_poll_at = now = self._clock()
            max_rows = self.policy.max_rows
            for tp, records in fetched.items():
                for record in records:
                    # The fast reader inline: a coroutine per message is a good part of the
                    # cost of a one-point message (a job that steps once a second).
                    report = read_report(record.value)
                    pending = (
                        Pending(report, record)
                        if report is not None
                        else await self._read_slowly(record)
                    )
                    rows = len(pending.report.rows) if pending is not None else 0
                    batcher.add(tp, record.offset + 1, pending, rows, now)
                    self.stats.messages += 1
                    if batcher.rows >= max_rows:
                        self._seal()  # a poll may bring many batches' worth
            if batcher.due(self._clock()):
                self._seal()
            self.stats.pending_rows = batcher.rows + self._inflight_rows

    async def _read_slowly(self, record: Any) -> Pending | None:
        """The rows of a record the fast reader could not vouch for (``read_report``), read the
        contract's way, or None after parking it on the dead-letter topic."""
        try:
            envelope = decode(record.value, record.headers)
        except DecodeError as exc:
            await self._park(record, exc.reason, exc.detail)
            return None
        message = envelope.data
        if not isinstance(message, MetricsReported):
            await self._park(
                record, "unexpected_type", f"{message.TYPE} does not belong on posttrain.metrics"
            )
            return None
        try:
            return Pending(rows_from_message(message), record)
        except RowError as exc:
            await self._park(record, exc.reason, str(exc))
            return None

    async def _park(self, record: Any, reason: str, detail: str) -> None:
        """Put a record on the dead-letter topic, retrying until the broker has it: moving past
        it before that would lose it."""
        await retrying("writing to the DLQ", transient=KafkaError, wait=self.backoff)(
            self._dlq.park, record, reason, detail
        )
        self.stats.dead_letters += 1

    def _seal(self) -> None:
        """Hand the open batch to the writer (if it holds anything to write or commit)."""
        if self._batcher.empty:
            return
        batch = self._batcher.take()
        self._inflight_rows += batch.rows
        self._sealed += 1
        self._queue.put_nowait(batch)

    def _apply_backpressure(self) -> None:
        pending = self._batcher.rows + self._inflight_rows
        self.stats.pending_rows = pending
        consumer = self._consumer
        if self.stats.paused:
            if self.policy.may_resume(pending):
                consumer.resume(*consumer.assignment())
                self.stats.paused = False
                log.info("consumption resumed", extra={"pending_rows": pending})
            else:
                # Partitions assigned since the pause (a rebalance) must be paused too.
                consumer.pause(*consumer.assignment())
        elif self.policy.should_pause(pending):
            consumer.pause(*consumer.assignment())
            self.stats.paused = True
            # Routine while catching up on a backlog; worth a warning when PostgreSQL is away.
            log.log(
                logging.INFO if self.stats.db_up else logging.WARNING,
                "consumption paused: writing is behind reading",
                extra={"pending_rows": pending, "database_up": self.stats.db_up},
            )

    def _revoked(self, partitions: set[TopicPartition]) -> None:
        dropped = self._batcher.drop_partitions(partitions)
        for tp in partitions:
            self._committed.pop(tp, None)
        if dropped:
            log.info(
                "partitions revoked; their unwritten rows are left to the new owner",
                extra={"rows": dropped},
            )

    # --- the writer ---------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            batch = await self._queue.get()
            if batch is None:
                return
            try:
                await self._write(batch)
                await self._commit(batch)
            finally:
                self._inflight_rows -= batch.rows
                self.stats.pending_rows = self._batcher.rows + self._inflight_rows
            async with self._progress:
                self._written += 1
                self._progress.notify_all()

    async def _write(self, batch: Batch[TopicPartition, Pending]) -> None:
        """Write the batch's rows, retrying until PostgreSQL has them."""
        if not batch.entries:
            return
        pending = batch.items
        try:
            result: WriteResult = await self._until_stored("writing a batch to PostgreSQL")(
                self._write_once, [p.report for p in pending]
            )
        except Exception as exc:
            if not is_data_error(exc):
                raise
            await self._write_one_by_one(pending)
            return
        self._record(result)

    async def _write_once(self, reports: list[ReportRows]) -> WriteResult:
        conn = await self._connector.connection()
        return await self._writer.write(conn, reports)

    async def _write_one_by_one(self, pending: list[Pending]) -> None:
        """A value in the batch was refused: write message by message and park the ones that
        PostgreSQL refuses, so that one bad message does not hold up the others."""
        for item in pending:
            try:
                result: WriteResult = await self._until_stored("writing a message to PostgreSQL")(
                    self._write_once, [item.report]
                )
            except Exception as exc:
                if not is_data_error(exc):
                    raise
                await self._park(item.record, "unstorable", f"PostgreSQL refused: {exc}")
                continue
            self._record(result)

    def _until_stored(self, what: str) -> AsyncRetrying:
        """Retries while PostgreSQL is away; a value it refuses is raised at once."""
        return retrying(
            what,
            transient=lambda exc: not is_data_error(exc),
            wait=self.backoff,
            on_failure=self._write_failed,
        )

    async def _write_failed(self, exc: BaseException) -> None:
        self.stats.write_failures += 1
        self.stats.db_up = False
        await self._connector.discard()

    def _record(self, result: WriteResult) -> None:
        self.stats.db_up = True
        self.stats.batch_written(result.offered, result.inserted, result.via_staging, self._clock())

    async def _commit(self, batch: Batch[TopicPartition, Pending]) -> None:
        """Commit the batch's offsets, for the partitions still ours. A refused commit loses
        nothing: the rows are stored, and reading them again inserts nothing."""
        assigned = self._consumer.assignment()
        offsets = {tp: off for tp, off in batch.offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (KafkaError, ValueError) as exc:
            self.stats.commit_failures += 1
            log.warning("offset commit refused", extra={"error": repr(exc)})
            return
        self._committed.update(offsets)

    # --- observation ------------------------------------------------------------------------

    async def lag(self) -> dict[tuple[str, int], int]:
        """Per assigned partition: messages on the broker not yet durable in PostgreSQL."""
        out: dict[tuple[str, int], int] = {}
        consumer = self._consumer
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue  # nothing fetched from it yet
            done = self._committed.get(tp)
            if done is None:
                # Nothing committed by this instance yet: ask the group what it has.
                with contextlib.suppress(KafkaError):
                    done = await consumer.committed(tp)
                if done is not None:
                    self._committed.setdefault(tp, done)
            out[(tp.topic, tp.partition)] = max(0, high - (done or 0))
        return out

    def health(self) -> dict[str, Any]:
        now = self._clock()
        return {
            "alive": self.alive,
            "ready": self.alive and self.assigned,
            "database_up": self.stats.db_up,
            "paused": self.stats.paused,
            "pending_rows": self.stats.pending_rows,
            "seconds_since_poll": round(now - self.last_poll_at, 3),
            "assigned_partitions": sorted(tp.partition for tp in self._consumer.assignment()),
            "rows_inserted": self.stats.rows_inserted,
            "dead_letters": self.stats.dead_letters,
        }


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: IngestService) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._service._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._service.assigned = True
        log.info(
            "partitions assigned", extra={"partitions": sorted(tp.partition for tp in assigned)}
        )


def running_here() -> dict[str, IngestService]:
    """The ingest services running in this process, by Kafka client id."""
    return {service.client_id: service for service in list(_RUNNING)}


async def flush_here(service: IngestService, timeout_s: float | None = 60.0) -> int:
    """Flush a service of this process from any thread's event loop; returns rows inserted."""
    loop = service.loop
    if loop is None or loop is asyncio.get_running_loop():
        return await service.flush(timeout_s)
    future = asyncio.run_coroutine_threadsafe(service.flush(timeout_s), loop)
    return await asyncio.wrap_future(future)
