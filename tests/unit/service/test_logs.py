"""Structured logs: one JSON object per line that a log shipper can read whatever was logged."""

from __future__ import annotations

import io
import logging
import sys

import orjson

from posttrain.service.logs import JsonFormatter, configure_json_logging


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "posttrain.x", "levelname": "INFO", "levelno": 20})
    record.msg, record.args = msg, args
    record.created, record.msecs = 1_700_000_000.25, 250.0
    record.__dict__.update(extra)
    return record


def test_a_line_holds_time_level_logger_message_and_every_extra_field() -> None:
    line = JsonFormatter().format(_record("owns partitions %s", [0, 1], port=9465, host="h"))
    assert orjson.loads(line) == {
        "time": "2023-11-14T22:13:20.250Z",
        "level": "info",
        "logger": "posttrain.x",
        "message": "owns partitions [0, 1]",
        "port": 9465,
        "host": "h",
    }
    assert "\n" not in line


def test_values_json_cannot_hold_are_written_as_text() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque"

    doc = orjson.loads(JsonFormatter().format(_record("m", thing=Opaque(), by_id={1: "a"})))
    assert doc["thing"] == "opaque"
    assert doc["by_id"] == {"1": "a"}
    # Beyond what orjson writes at all: the line is still written, the odd value as text.
    doc = orjson.loads(JsonFormatter().format(_record("m", huge=2**70, n=1)))
    assert (doc["message"], doc["huge"], doc["n"]) == ("m", str(2**70), 1)


def test_an_exception_is_one_field_of_the_same_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = _record("failed", exc_info=sys.exc_info())
    line = JsonFormatter().format(record)
    doc = orjson.loads(line)
    assert doc["message"] == "failed"
    assert "RuntimeError: boom" in doc["exception"]
    assert "exc_info" not in doc and "\n" not in line


def test_configure_json_logging_replaces_the_root_handlers(monkeypatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_json_logging("debug")
        configure_json_logging("debug")  # twice: still one line per record
        logging.getLogger("posttrain.y").debug("hello", extra={"n": 1})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = err.getvalue().splitlines()
    assert [orjson.loads(line)["message"] for line in lines] == ["hello"]
    assert orjson.loads(lines[0])["n"] == 1
