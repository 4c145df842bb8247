"""Metrics from a training loop to ``posttrain.metrics`` without ever blocking the step.

``create_training_callback(job_uuid)`` (SEED.md section 2, mode A) returns a callable::

    report = create_training_callback("job-42")
    for step in ...:
        report(step=step, epoch=epoch, policy_loss=..., grad_norm_actor=..., my_metric=...)
    report.close()

The call only stamps the time, takes a sequence number and puts the raw values on a bounded
queue (a few microseconds). A background thread maps the names onto ``MetricPoint``'s canonical
fields (``posttrain.events.aliases``), batches the points into ``MetricsReported`` messages and
sends them with the idempotent producer. When Kafka cannot be reached, or the queue is full,
points go to a local spill file (``spill``) and are sent once the broker answers again, by this
reporter or, if the process is gone, by the next reporter of the same job. Every point is
identified by ``(job_id, source, seq)`` for ever, so a re-sent point is deduplicated by ingest.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import itertools
import logging
import operator
import os
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from posttrain.events import Envelope
from posttrain.events.aliases import canonical_fields, to_point
from posttrain.events.codec import encode
from posttrain.events.kafka import KafkaSettings
from posttrain.events.kafka.blocking import BlockingProducer, Record
from posttrain.events.messages import MetricPoint, MetricsReported
from posttrain.events.messages.metrics import reporter_source
from posttrain.events.topics import Topic
from posttrain.events.writers import (
    LoggedStep,
    metrics_reported,
    point_document,
    step_document,
    step_points,
)
from posttrain.trainer_agent.core.batching import Routing, contiguous_batches
from posttrain.trainer_agent.spill import (
    OrphanFiles,
    SpilledPoint,
    SpillFile,
    adopt_orphans,
    default_spill_dir,
    read_points,
)

log = logging.getLogger(__name__)

# Environment the agent sets for a stage's process, so that a user's script calling
# ``create_training_callback(job_id)`` routes its points to the right pipeline stage.
ENV_JOB_ID = "POSTTRAIN_JOB_ID"
ENV_PIPELINE_ID = "POSTTRAIN_PIPELINE_ID"
ENV_STAGE = "POSTTRAIN_STAGE"
ENV_ATTEMPT = "POSTTRAIN_ATTEMPT"


@dataclass(frozen=True, slots=True)
class ReporterOptions:
    """Tuning of the background delivery; the defaults suit a training loop of any speed."""

    queue_size: int = 20_000
    # Points per MetricsReported message: keeps a message far below the 512 KiB batch limit
    # even with a few hundred custom fields per point.
    max_points_per_message: int = 256
    # How long the sender sleeps between batches: the worst-case wait of a point before it
    # leaves, and so most of the platform's detection latency (the goal is a second from the
    # step to the anomaly). Each batch costs the sender a few hundred microseconds of CPU (a
    # wake-up, librdkafka's produce and acknowledgement), each point a few tens (mapping the
    # names, writing the JSON). Measured (bench.detect_latency, bench.callback_overhead): at
    # 0.25 s detection p99 was 0.33-0.35 s and the whole callback 0.7-0.9% of a 9 ms CPU step.
    # No benchmark sets its own.
    linger_s: float = 0.25
    send_timeout_s: float = 10.0
    retry_min_s: float = 0.5
    retry_max_s: float = 10.0


def new_source() -> str:
    """A reporter's source name: unique per process and reporter, readable by a human."""
    return reporter_source()


# One item of the queue: (source, seq, point) for a ready point (the tailer's), or (source, seq,
# *step) for a step as logged (``writers.LoggedStep``: step, epoch, timestamp, names, values),
# which the sender thread maps, keeping the mapping off the training step.
#
# Flat, and no dict in it: the queue holds thousands of items in the training process, and the
# cyclic garbage collector untracks a tuple only once everything in it is untracked, a nesting
# level per collection (a tuple holding a dict, never). Nested as (source, seq, (step, ...,
# fields)), every item reached the oldest generation still tracked, and collections took about
# half of the training thread's CPU per call (2.7 of 5.4 us with the collector on vs off,
# bench.ingest's reporters at 48,000 points/s); flat, they are untracked before they get there
# (about 1.5 us left, the collections of the sender's own short-lived objects).
_Item = tuple[Any, ...]


class MetricsReporter:
    """Delivers points of one job to ``posttrain.metrics`` from a background thread.

    ``submit`` never blocks. ``flush(timeout)`` waits until every point submitted so far is on
    the broker; ``wait_durable(timeout)`` only until each is on the broker or in the spill file.
    """

    def __init__(
        self,
        job_id: str,
        *,
        pipeline_id: str | None = None,
        stage: str | None = None,
        attempt: int | None = None,
        settings: KafkaSettings | None = None,
        spill_dir: str | Path | None = None,
        source: str | None = None,
        options: ReporterOptions | None = None,
    ) -> None:
        self.job_id = job_id
        self.source = source or new_source()
        self.routing = Routing(job_id, pipeline_id, stage, attempt)
        self.settings = settings or KafkaSettings.from_env(client_id="posttrain-metrics")
        self.options = options or ReporterOptions()
        self.spill_dir = Path(spill_dir) if spill_dir is not None else default_spill_dir()
        self._spill = SpillFile(self.spill_dir, job_id, self.source)
        # A deque, not a queue.Queue: append and popleft are atomic under the GIL, so neither
        # side takes a lock or wakes the other; the bound is checked before appending (a
        # racing second thread may overshoot it by an item, which is harmless).
        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._closed = False  # the same as ``_closing``, read without a call
        self._queue_size = self.options.queue_size
        # Counters; ``_accepted`` is written by the submitting thread only, the others by the
        # sender thread only (each under the condition when waiters care).
        self._accepted_counter = itertools.count(1)
        self._accepted = 0
        self._settled = 0  # delivered or spilled, of this reporter's own points
        self._delivered = 0  # of this reporter's own points, from the queue or its spill file
        self._spilled = 0
        self._adopted_delivered = 0
        self._dropped = 0
        self._connected = False
        self._last_error: str | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"posttrain-metrics-{job_id}", daemon=True
        )
        self._thread.start()
        _LIVE.add(self)

    # --- the training thread's side ---------------------------------------------------------

    def submit(self, source: str, seq: int, point: MetricPoint) -> None:
        """Queue one ready point with its identity (the tailer's path). Never blocks."""
        self._enqueue((source, seq, point))

    def _enqueue(self, item: _Item) -> None:
        # On the training loop's every step: plain attributes only (an Event's is_set is a
        # Python-level call).
        self._accepted = next(self._accepted_counter)
        if self._closed:
            # Too late for the sender: on disk, for the next reporter of this job to deliver.
            self._spill_items([item], from_queue=False)
            return
        if len(self._queue) < self._queue_size:
            self._queue.append(item)
        else:
            # The sender is behind (or the broker is away and the disk slow): the point goes
            # to the spill file now rather than make the training step wait.
            self._spill_items([item], from_queue=False)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every point submitted before this call is on the broker; False if the
        timeout passed first (the rest stays queued or spilled, and is sent later)."""
        target = self._accepted
        self._wake.set()
        with self._cond:
            return self._cond.wait_for(lambda: self._delivered >= target, timeout)

    def wait_durable(self, timeout: float | None = 10.0) -> bool:
        """Wait until every point submitted so far is on the broker or in the spill file."""
        target = self._accepted
        self._wake.set()
        with self._cond:
            return self._cond.wait_for(lambda: self._settled >= target, timeout)

    def close(self, timeout: float = 10.0) -> int:
        """Deliver what can be delivered within ``timeout``, stop the sender; returns how many
        of this reporter's points are left in the spill file for a later reporter."""
        if not self._closing.is_set():
            self._closed = True
            self._closing.set()
            self._wake.set()
            self._thread.join(timeout)
            if self._thread.is_alive():
                # The sender is stuck in a send: keep what is still queued on disk.
                self._spill_items(self._take(len(self._queue)), from_queue=True)
            self._spill.close()
            _LIVE.discard(self)
        return max(0, self._accepted - self._delivered)

    def stats(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "accepted": self._accepted,
            "delivered": self._delivered,
            "spilled": self._spilled,
            "adopted_delivered": self._adopted_delivered,
            "dropped": self._dropped,
            "queued": len(self._queue),
            "connected": self._connected,
            "last_error": self._last_error,
            "spill_file": str(self._spill.path),
        }

    def __enter__(self) -> MetricsReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the sender thread ------------------------------------------------------------------

    def _run(self) -> None:
        sender = _Sender(self)
        try:
            while True:
                items: list[_Item] = []
                batch: _Batch | None = None
                try:
                    items = self._drain()
                    batch = self._encode(items)
                    self._deliver(sender, batch)
                except Exception:
                    # The sender must never die: say why, keep the batch on disk, go on.
                    log.exception("metrics sender failed", extra={"job_id": self.job_id})
                    self._spill_items(batch.items if batch else items, from_queue=True)
                    sender.stop()
                    time.sleep(self.options.retry_min_s)
                if self._closing.is_set() and not self._queue:
                    with contextlib.suppress(Exception):
                        if sender.backlog_waiting() and sender.ready():
                            sender.deliver_backlog()
                    break
        finally:
            sender.stop()
            with self._cond:
                self._cond.notify_all()

    def _deliver(self, sender: _Sender, batch: _Batch) -> None:
        if not batch.items:
            if sender.backlog_waiting() and sender.ready():
                sender.deliver_backlog()
            return
        # Spilled points go first, so that new points never overtake a backlog for long.
        count = len(batch.items)
        if sender.ready() and sender.deliver_backlog() and sender.send_records(batch.records):
            self._settle(count, delivered=count)
        else:
            self._spill_items(batch.items, from_queue=True)

    def _encode(self, items: Sequence[_Item]) -> _Batch:
        """The Kafka records of queued items: one ``MetricsReported`` per run of consecutive
        sequence numbers of a source, at most ``max_points_per_message`` points each.

        A run of the steps a training loop logs (plain finite floats) is written whole by the
        events library's fast writer (``step_points``). Any other run goes point by point: each
        step's names are mapped onto the canonical fields and written by ``point_document``; a
        value of an unusual kind goes through ``MetricPoint``, which judges it. An item that
        cannot be a point (a step that is not a number) does not take the others with it: it
        is counted as dropped and logged, loudly."""
        batch = _Batch([], [])
        for run in _runs(items, self.options.max_points_per_message):
            logged = _READY_POINT not in map(len, run)
            points = step_points([item[2:] for item in run]) if logged else None
            if points is None:
                self._encode_each(batch, run)
                continue
            batch.items.extend(run)
            self._write_run(batch, run, points)
        return batch

    def _encode_each(self, batch: _Batch, items: Sequence[_Item]) -> None:
        """``_encode`` of a run point by point (an item dropped splits it)."""
        run: list[_Item] = []
        documents: list[Any] = []
        for item in items:
            try:
                document = _document(_payload(item))
            except Exception as exc:
                self._drop(item, exc)
                continue
            batch.items.append(item)
            if run and item[1] != run[-1][1] + 1:
                self._write_run(batch, run, documents)
                run, documents = [], []
            run.append(item)
            documents.append(document)
        if run:
            self._write_run(batch, run, documents)

    def _write_run(
        self, batch: _Batch, run: list[_Item], documents: list[Any] | orjson.Fragment
    ) -> None:
        routing = self.routing
        record = metrics_reported(
            routing.job_id,
            run[0][0],
            run[0][1],
            documents,
            pipeline_id=routing.pipeline_id,
            stage=routing.stage,
            attempt=routing.attempt,
        )
        if record is not None:
            batch.records.append(record)
        else:  # a value orjson cannot write: the models write it
            batch.records.extend(_records(self._map(run), len(run)))

    def _drain(self) -> list[_Item]:
        """The next batch: everything queued after sleeping ``linger_s`` (less when woken by
        flush or close, none when a full batch is already waiting).

        The thread sleeps instead of waiting on the queue: waking for every point would hand
        the interpreter lock back and forth with the training loop at every step."""
        limit = self.options.max_points_per_message * 8
        if len(self._queue) < limit and self._wake.wait(self.options.linger_s):
            self._wake.clear()
        return self._take(limit)

    def _take(self, limit: int) -> list[_Item]:
        items: list[_Item] = []
        popleft = self._queue.popleft
        with contextlib.suppress(IndexError):
            for _ in range(limit):
                items.append(popleft())
        return items

    def _as_spilled(self, item: _Item) -> SpilledPoint:
        source, seq, payload = item[0], item[1], _payload(item)
        if isinstance(payload, MetricPoint):
            point = payload
        else:
            step, epoch, timestamp, names, values = payload
            point = to_point(step, epoch, timestamp, dict(zip(names, values, strict=True)))
        routing = self.routing
        return SpilledPoint(
            routing.job_id, source, seq, point, routing.pipeline_id, routing.stage, routing.attempt
        )

    def _map(self, items: Sequence[_Item]) -> list[SpilledPoint]:
        """Points for queued items (to spill them, or for a message the fast writer cannot
        write); an item that cannot be a point is dropped as in ``_encode``."""
        points: list[SpilledPoint] = []
        for item in items:
            try:
                points.append(self._as_spilled(item))
            except Exception as exc:
                self._drop(item, exc)
        return points

    def _drop(self, item: _Item, exc: Exception) -> None:
        self._dropped += 1
        self._settle(1, delivered=0)
        log.error(
            "metric point dropped: not a valid point",
            extra={"job_id": self.job_id, "seq": item[1], "error": str(exc)[:500]},
        )

    def _spill_items(self, items: Sequence[_Item], *, from_queue: bool) -> None:
        if items:
            self._spill_points(self._map(items))

    def _spill_points(self, points: Sequence[SpilledPoint]) -> None:
        try:
            written = self._spill.append(points)
        except OSError as exc:
            # Nothing is dropped silently: this is loud, counted and visible in stats().
            self._dropped += len(points)
            log.error(
                "metric points lost: spill file not writable",
                extra={"job_id": self.job_id, "points": len(points), "error": str(exc)},
            )
            written = 0
        self._spilled += written
        self._settle(len(points), delivered=0)

    def _settle(self, settled: int, *, delivered: int) -> None:
        with self._cond:
            self._settled += settled
            self._delivered += delivered
            self._cond.notify_all()


class _Sender:
    """The sender thread's connection to Kafka, with reconnection and backlog delivery."""

    def __init__(self, reporter: MetricsReporter) -> None:
        self.reporter = reporter
        self.producer: BlockingProducer | None = None
        self.retry_at = 0.0
        self.retry_s = reporter.options.retry_min_s
        self._outage_logged = False
        self._orphans_checked = False

    def ready(self) -> bool:
        """Connected, or connected now; False while the broker is away (and between retries)."""
        if self.producer is not None:
            return True
        now = time.monotonic()
        if now < self.retry_at and not self.reporter._closing.is_set():
            return False
        producer = BlockingProducer(
            self.reporter.settings, timeout_s=self.reporter.options.send_timeout_s
        )
        try:
            producer.probe(Topic.METRICS)
        except Exception as exc:
            self._failed(exc)
            self._discard(producer)
            return False
        self.producer = producer
        self.reporter._connected = True
        self.retry_s = self.reporter.options.retry_min_s
        if self._outage_logged:
            log.warning("metrics: Kafka reachable again", extra={"job_id": self.reporter.job_id})
            self._outage_logged = False
        return True

    def send(self, points: Sequence[SpilledPoint]) -> bool:
        return self.send_records(_records(points, self.reporter.options.max_points_per_message))

    def send_records(self, records: Sequence[Record]) -> bool:
        producer = self.producer
        if producer is None:
            return False
        try:
            producer.send(Topic.METRICS, records)
        except Exception as exc:
            # A timed-out batch may still land later: ingest dedups it by (job, source, seq).
            self._failed(exc)
            self._discard(producer)
            self.producer = None
            self.reporter._connected = False
            return False
        return True

    def backlog_waiting(self) -> bool:
        return not self._orphans_checked or self.reporter._spill.has_pending()

    def deliver_backlog(self) -> bool:
        """Send the spill file (and, once, the files of earlier reporters of the same job);
        True when nothing is left waiting, so that new points may go straight out."""
        reporter = self.reporter
        if not self._orphans_checked:
            for orphans in adopt_orphans(reporter.spill_dir, reporter.job_id, reporter._spill.stem):
                if not self._deliver_orphans(orphans):
                    return False
            self._orphans_checked = True
        while reporter._spill.has_pending():
            points = reporter._spill.take()
            if points and not self.send(points):
                return False
            reporter._spill.acknowledge()
            own = sum(1 for p in points if p.source == reporter.source)
            reporter._settle(0, delivered=own)
        return True

    def _deliver_orphans(self, orphans: OrphanFiles) -> bool:
        for path in orphans.files:
            points = read_points(path)
            if points and not self.send(points):
                orphans.abandon()
                return False
            self.reporter._adopted_delivered += len(points)
        orphans.release()
        return True

    def stop(self) -> None:
        if self.producer is not None:
            self._discard(self.producer)
            self.producer = None

    def _discard(self, producer: BlockingProducer) -> None:
        with contextlib.suppress(Exception):
            producer.close()

    def _failed(self, exc: BaseException) -> None:
        reporter = self.reporter
        reporter._connected = False
        reporter._last_error = f"{type(exc).__name__}: {exc}"
        self.retry_at = time.monotonic() + self.retry_s
        self.retry_s = min(self.retry_s * 2, reporter.options.retry_max_s)
        if not self._outage_logged:
            log.warning(
                "metrics: Kafka unreachable, spilling points to disk",
                extra={"job_id": reporter.job_id, "error": reporter._last_error},
            )
            self._outage_logged = True


def _records(points: Iterable[SpilledPoint], max_points: int) -> list[Record]:
    """The Kafka records of identified points, written by the models."""
    return [
        encode(
            Envelope.create(
                MetricsReported(
                    job_id=routing.job_id,
                    source=source,
                    first_seq=first_seq,
                    points=batch,
                    pipeline_id=routing.pipeline_id,
                    stage=routing.stage,
                    attempt=routing.attempt,
                ),
                key=routing.job_id,
            )
        )
        for routing, source, first_seq, batch in contiguous_batches(points, max_points)
    ]


_SOURCE, _SEQ = operator.itemgetter(0), operator.itemgetter(1)


_READY_POINT = 3  # the length of an item holding a ready point


def _payload(item: _Item) -> MetricPoint | LoggedStep:
    """A queued item's point, or its step as logged."""
    return item[2] if len(item) == _READY_POINT else item[2:]


def _runs(items: Sequence[_Item], limit: int) -> Iterable[list[_Item]]:
    """Runs of consecutive sequence numbers of one source, at most ``limit`` items each."""
    for start in range(0, len(items), limit):
        chunk = list(items[start : start + limit])
        # The usual chunk, one callback's steps in order, is told by calls that loop in C.
        first = chunk[0][1]
        if len(set(map(_SOURCE, chunk))) == 1 and list(map(_SEQ, chunk)) == list(
            range(first, first + len(chunk))
        ):
            yield chunk
        else:
            yield from _split_runs(chunk)


def _split_runs(items: Sequence[_Item]) -> Iterable[list[_Item]]:
    run: list[_Item] = []
    for item in items:
        if run and (item[0] != run[0][0] or item[1] != run[-1][1] + 1):
            yield run
            run = []
        run.append(item)
    if run:
        yield run


def _document(payload: MetricPoint | LoggedStep) -> Any:
    """What the fast writer puts in a message for one queued payload."""
    if isinstance(payload, MetricPoint):  # a ready point (the tailer's): as its model writes it
        return orjson.Fragment(payload.model_dump_json())
    step, epoch, timestamp, names, values = payload
    fields = dict(zip(names, values, strict=True))
    document = step_document(step, epoch, timestamp, fields)
    if document is not None:  # the usual step: plain, finite floats
        return document
    canonical, custom = canonical_fields(fields)
    document = point_document(step, epoch, timestamp, canonical, custom)
    if document is None:  # an unusual value: the model judges it (and may refuse it)
        return orjson.Fragment(to_point(step, epoch, timestamp, fields).model_dump_json())
    return document


@dataclass(slots=True)
class _Batch:
    """Queued items of valid points, and the records that carry them."""

    items: list[_Item]
    records: list[Record]


class TrainingCallback(MetricsReporter):
    """The callable that ``create_training_callback`` returns."""

    def __call__(self, step: int, epoch: float | None = None, **fields: Any) -> None:
        """Report one step's values under any names (the seed's, TRL's, verl's, your own).

        Known names become canonical fields; the rest is kept under ``custom``. Never blocks
        the caller; NaN values are kept as NaN."""
        # ``writers.logged_step`` inline, flat in the item (``_Item``): a call less per step.
        self._enqueue(
            (
                self.source,
                next(self._seq),
                step,
                epoch,
                time.time(),
                tuple(fields),
                tuple(fields.values()),
            )
        )

    def __init__(self, job_id: str, **kwargs: Any) -> None:
        self._seq = itertools.count(0)
        super().__init__(job_id, **kwargs)


def _routing_from_env(job_uuid: str) -> tuple[str | None, str | None, int | None]:
    if os.environ.get(ENV_JOB_ID) != job_uuid:
        return None, None, None
    attempt = os.environ.get(ENV_ATTEMPT)
    return (
        os.environ.get(ENV_PIPELINE_ID) or None,
        os.environ.get(ENV_STAGE) or None,
        int(attempt) if attempt and attempt.isdigit() else None,
    )


def create_training_callback(
    job_uuid: str,
    *,
    pipeline_id: str | None = None,
    stage: str | None = None,
    attempt: int | None = None,
    settings: KafkaSettings | None = None,
    spill_dir: str | Path | None = None,
    options: ReporterOptions | None = None,
) -> TrainingCallback:
    """A callable ``callback(step=..., epoch=..., **fields)`` that reports to the platform.

    Under the trainer agent, the pipeline, stage and attempt come from the environment it sets
    for the stage (``POSTTRAIN_*``) when not given. Kafka's address comes from
    ``KAFKA_BOOTSTRAP_SERVERS``; the spill directory from ``POSTTRAIN_SPILL_DIR`` (default
    ``~/.cache/posttrain/spill``). Call ``close()`` at the end (an exit hook does it otherwise).
    """
    env_pipeline, env_stage, env_attempt = _routing_from_env(job_uuid)
    return TrainingCallback(
        job_uuid,
        pipeline_id=pipeline_id if pipeline_id is not None else env_pipeline,
        stage=stage if stage is not None else env_stage,
        attempt=attempt if attempt is not None else env_attempt,
        settings=settings,
        spill_dir=spill_dir,
        options=options,
    )


# Reporters still open at interpreter exit are closed (flushed, or left spilled) by this hook.
_LIVE: weakref.WeakSet[MetricsReporter] = weakref.WeakSet()


@atexit.register
def _close_live_reporters() -> None:
    for reporter in list(_LIVE):
        with contextlib.suppress(Exception):
            reporter.close(timeout=5.0)


__all__ = [
    "MetricsReporter",
    "ReporterOptions",
    "TrainingCallback",
    "create_training_callback",
    "new_source",
]
