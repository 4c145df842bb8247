"""The topic registry: every topic's name, key, partitions, retention, cleanup and message types.

Topics are declared here once and created by the project (``posttrain stack up`` or
``ensure_topics``), never by broker auto-create. The names here are logical: a namespace (per test
run, per environment) prefixes them on the broker, so runs never see each other's data.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

DAY_MS = 24 * 60 * 60 * 1000

# pipeline.commands, pipeline.events and stage.reports are co-partitioned by pipeline_id: the
# orchestrator instance that owns a partition sees every message about its pipelines.
PIPELINE_PARTITIONS = 6
# A partition's snapshot is one record: room for thousands of running pipelines (compressed).
SNAPSHOT_MAX_BYTES = 32 * 1024 * 1024


class Topic(StrEnum):
    PIPELINE_COMMANDS = "posttrain.pipeline.commands"
    PIPELINE_EVENTS = "posttrain.pipeline.events"
    AGENT_COMMANDS = "posttrain.agent.commands"
    STAGE_REPORTS = "posttrain.stage.reports"
    AGENTS = "posttrain.agents"
    METRICS = "posttrain.metrics"
    ANOMALIES = "posttrain.anomalies"
    ALERTS = "posttrain.alerts"
    DLQ = "posttrain.dlq"
    ORCHESTRATOR_SNAPSHOTS = "posttrain.orchestrator.snapshots"
    STAGE_CACHE = "posttrain.stage.cache"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    topic: Topic
    key: str
    partitions: int
    retention_ms: int  # -1: kept for ever
    cleanup_policy: str  # "delete" or "compact"
    message_types: tuple[str, ...]
    description: str
    # The largest record the broker takes on this topic (None: the broker's default, 1 MiB).
    max_message_bytes: int | None = None
    # What the values are, on a topic whose values are not envelopes (no message types).
    value_format: str | None = None

    @property
    def name(self) -> str:
        return self.topic.value

    def configs(self) -> dict[str, str]:
        """The topic-level broker configuration this spec asks for."""
        configs = {
            "cleanup.policy": self.cleanup_policy,
            "retention.ms": str(self.retention_ms),
        }
        if self.max_message_bytes is not None:
            configs["max.message.bytes"] = str(self.max_message_bytes)
        return configs


_REPORT_TYPES = (
    "StageStarted",
    "StageSucceeded",
    "StageFailed",
    "StageRejected",
    "StagePaused",
    "CheckpointSaved",
    "ActionApplied",
    "ActionRefused",
)

_SPECS: tuple[TopicSpec, ...] = (
    TopicSpec(
        Topic.PIPELINE_COMMANDS,
        key="pipeline_id",
        partitions=PIPELINE_PARTITIONS,
        retention_ms=7 * DAY_MS,
        cleanup_policy="delete",
        message_types=(
            "SubmitPipeline",
            "ResumePipeline",
            "CancelPipeline",
            "RetryStage",
            "RequestAction",
            "TickClock",
        ),
        description="What users, the gateway and diagnostics ask the orchestrator to do.",
    ),
    TopicSpec(
        Topic.PIPELINE_EVENTS,
        key="pipeline_id",
        partitions=PIPELINE_PARTITIONS,
        retention_ms=-1,
        cleanup_policy="delete",
        message_types=(
            "PipelineSubmitted",
            "PipelineRejected",
            "PipelineResumed",
            "PipelineSucceeded",
            "PipelineFailed",
            "PipelineCancelled",
            "StageDispatched",
            "StageWaiting",
            "StageRetryScheduled",
            "StageLost",
            "StageCancelled",
            "StageCached",
            "ActionRequested",
            "CommandRefused",
            "TickClock",
            *_REPORT_TYPES,
        ),
        description="THE event log of pipelines; only the orchestrator writes it. Kept for ever.",
    ),
    TopicSpec(
        Topic.AGENT_COMMANDS,
        key="agent_id",
        partitions=6,
        retention_ms=7 * DAY_MS,
        cleanup_policy="delete",
        message_types=(
            "RunStage",
            "CancelStage",
            "PauseStage",
            "ResumeStage",
            "AdjustLearningRate",
            "ForceCheckpoint",
            "RollbackStage",
        ),
        description="Work and control for trainer agents, addressed by agent_id.",
    ),
    TopicSpec(
        Topic.STAGE_REPORTS,
        key="pipeline_id",
        partitions=PIPELINE_PARTITIONS,
        retention_ms=7 * DAY_MS,
        cleanup_policy="delete",
        message_types=_REPORT_TYPES,
        description="What agents report about the stages they run.",
    ),
    TopicSpec(
        Topic.AGENTS,
        key="agent_id",
        partitions=3,
        retention_ms=-1,
        cleanup_policy="compact",
        message_types=("AgentHeartbeat",),
        description="Agent liveness and capacity; compacted, read in full as a global table.",
    ),
    TopicSpec(
        Topic.METRICS,
        key="job_id",
        partitions=6,
        retention_ms=7 * DAY_MS,
        cleanup_policy="delete",
        message_types=("MetricsReported",),
        description="Training metric points, many per message; PostgreSQL holds them for ever.",
    ),
    TopicSpec(
        Topic.ANOMALIES,
        key="job_id",
        partitions=6,
        retention_ms=30 * DAY_MS,
        cleanup_policy="delete",
        message_types=("AnomalyDetected", "ActionRecommended"),
        description="Anomalies found by the diagnostics stream and batch scans.",
    ),
    TopicSpec(
        Topic.ALERTS,
        key="job_id",
        partitions=3,
        retention_ms=30 * DAY_MS,
        cleanup_policy="delete",
        message_types=("AlertSent", "AlertFailed"),
        description="The outcome of every alert delivery.",
    ),
    TopicSpec(
        Topic.STAGE_CACHE,
        key="cache_key",
        partitions=3,
        retention_ms=-1,
        cleanup_policy="compact",
        message_types=("StageOutputsCached",),
        description=(
            "The outputs of every succeeded cache: true stage by the key of its inputs; "
            "compacted, read in full by every orchestrator instance as a global table."
        ),
    ),
    TopicSpec(
        Topic.ORCHESTRATOR_SNAPSHOTS,
        key="p<partition> (a partition's state) or pipeline/<pipeline_id> (an ended pipeline's)",
        # Partition p holds the snapshots of the events topic's partition p.
        partitions=PIPELINE_PARTITIONS,
        retention_ms=-1,
        cleanup_policy="compact",
        message_types=(),
        description=(
            "The orchestrator's state per events partition (running pipelines, the events "
            "offset it stands for) and each ended pipeline's final state, written in the "
            "transactions of the events they cover; an optimisation: the event log wins."
        ),
        max_message_bytes=SNAPSHOT_MAX_BYTES,
        value_format="zlib-compressed msgpack of the orchestrator's state, with a schema version",
    ),
    TopicSpec(
        Topic.DLQ,
        key="the original message's key",
        partitions=1,
        retention_ms=30 * DAY_MS,
        cleanup_policy="delete",
        message_types=(),
        description=(
            "Messages no consumer could read: original key, value and headers, plus dlq-* "
            "headers giving the reason, source topic, partition, offset and consumer."
        ),
    ),
)

TOPICS: dict[Topic, TopicSpec] = {spec.topic: spec for spec in _SPECS}


def physical_name(topic: Topic | str, namespace: str = "") -> str:
    """The topic's name on the broker: the logical name, prefixed by the namespace if any."""
    name = topic.value if isinstance(topic, Topic) else topic
    return f"{namespace}.{name}" if namespace else name


def topics_for_type(type_name: str) -> list[Topic]:
    """Every topic that carries messages of this type."""
    return [spec.topic for spec in _SPECS if type_name in spec.message_types]
