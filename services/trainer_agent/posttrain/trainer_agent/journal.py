"""The agent's journal on local disk: an append-only JSONL file, folded by ``core.journal``.

Each record is written and fsync'ed before the agent acts on it (launches, reports), so that
after a crash the journal never says less than what happened: a launched stage is known, a
finished one is answered from here and never trained again under the same command id.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from posttrain.trainer_agent.core.journal import Entry, fold


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, Entry] = fold(self._read())
        self._fh = open(path, "ab")  # noqa: SIM115 (open for the agent's life)

    def _read(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # torn by a crash mid-write: it was never acted on
                with contextlib.suppress(ValueError):
                    doc = orjson.loads(line)
                    if isinstance(doc, dict):
                        records.append(doc)
        return records

    def append(self, kind: str, command_id: str, **fields: Any) -> Entry | None:
        record: dict[str, Any] = {
            "kind": kind,
            "command_id": command_id,
            "at": time.time(),
            **fields,
        }
        self._fh.write(orjson.dumps(record) + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.entries = fold([record], self.entries)
        return self.entries.get(command_id)

    def get(self, command_id: str) -> Entry | None:
        return self.entries.get(command_id)

    def snapshot(self) -> Mapping[str, Entry]:
        return dict(self.entries)

    def close(self) -> None:
        self._fh.close()
