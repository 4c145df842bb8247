"""The registry is consistent and its generated documents are in step with it."""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.events import MESSAGE_TYPES, TOPICS
from posttrain.events.schema import export_json_schemas, topics_markdown
from posttrain.events.topics import PIPELINE_PARTITIONS, Topic, physical_name

ROOT = Path(__file__).resolve().parents[2]


def test_every_type_travels_on_some_topic_and_every_listed_type_exists():
    carried = {t for spec in TOPICS.values() for t in spec.message_types}
    assert carried == set(MESSAGE_TYPES)


def test_pipeline_topics_are_co_partitioned():
    counts = {
        TOPICS[t].partitions
        for t in (Topic.PIPELINE_COMMANDS, Topic.PIPELINE_EVENTS, Topic.STAGE_REPORTS)
    }
    assert counts == {PIPELINE_PARTITIONS}


def test_event_log_is_kept_forever_and_agents_compacted():
    assert TOPICS[Topic.PIPELINE_EVENTS].configs()["retention.ms"] == "-1"
    assert TOPICS[Topic.AGENTS].cleanup_policy == "compact"


def test_namespace_prefixes_physical_names():
    assert physical_name(Topic.METRICS, "") == "posttrain.metrics"
    assert physical_name(Topic.METRICS, "t42") == "t42.posttrain.metrics"


def test_docs_topics_md_is_generated_from_the_registry():
    assert (ROOT / "docs" / "topics.md").read_text() == topics_markdown()


def test_schema_export_writes_one_valid_schema_per_type(tmp_path):
    written = export_json_schemas(tmp_path)
    assert len(written) == len(MESSAGE_TYPES)
    schema = json.loads((tmp_path / "StageFailed.v2.schema.json").read_text())
    assert schema["properties"]["type"] == {"const": "StageFailed"}
    assert "kind" in schema["properties"]["data"]["required"]
    assert schema["x-topics"] == ["posttrain.pipeline.events", "posttrain.stage.reports"]
