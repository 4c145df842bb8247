"""Structured logs: one JSON object per line, with every ``extra`` field a call passes.

log.info("ingest starting", extra={"batch_rows": 100})
{"time":"2025-01-02T03:04:05.678Z","level":"info","logger":"...","message":"ingest starting",
 "batch_rows":100}
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

# Attributes every LogRecord has; anything else on a record came from ``extra``. ``taskName``
# is listed for Python 3.12+, whose records carry it.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """time (UTC, ISO 8601, milliseconds), level, logger, message, then every ``extra`` field;
    ``exception`` and ``stack`` when the record has them. A value JSON cannot hold is written
    as its ``str``: a log call never fails for what it carries."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # what ``default`` cannot save: an int beyond 64 bits, a cycle
            return orjson.dumps({k: _plain(v) for k, v in doc.items()}).decode()


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | float | str):
        return value
    if isinstance(value, int) and -(2**63) <= value < 2**64:
        return value
    return str(value)


def configure_json_logging(level: int | str = "INFO") -> None:
    """Send every log record to stderr as one JSON line, replacing the root logger's handlers
    (so that calling it twice does not log each line twice)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)


def without_password(url: str) -> str:
    """A connection URL fit for a log line or a message: its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
