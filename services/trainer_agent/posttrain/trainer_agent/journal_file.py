"""The agent's journal on local disk: an append-only JSONL file of ``core.events``, folded by
``core.state``.

Each event is written and fsync'ed before the agent acts on it (launches, reports), so that
after a crash the journal never says less than what happened: a launched stage is known, a
finished one is answered from here and never trained again under the same command id. Lines
written by older agents are upcast on reading (``core.events.from_record``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import orjson

from posttrain.trainer_agent.core.events import JournalEvent, from_record, to_record
from posttrain.trainer_agent.core.state import Entry, fold


def read_events(path: Path) -> Iterator[JournalEvent]:
    """The events of a journal file, in order (a line torn by a crash, or unknown, skipped)."""
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                return  # torn by a crash mid-write: it was never acted on
            with contextlib.suppress(ValueError):
                doc = orjson.loads(line)
                event = from_record(doc) if isinstance(doc, dict) else None
                if event is not None:
                    yield event


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line torn by a crash, or the next event would be appended to it and be lost
    with it."""
    with contextlib.suppress(FileNotFoundError), open(path, "r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        fh.seek(0)
        data = fh.read()
        fh.truncate(data.rfind(b"\n") + 1)
        fh.flush()
        os.fsync(fh.fileno())


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, Entry] = fold(read_events(path))
        _drop_torn_tail(path)
        self._fh = open(path, "ab")  # noqa: SIM115 (open for the agent's life)

    def append(self, event: JournalEvent) -> Entry | None:
        """Write ``event`` to disk (fsync'ed), then apply it; the entry it is about, after."""
        self._fh.write(orjson.dumps(to_record(event, time.time())) + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.entries = fold([event], self.entries)
        return self.entries.get(event.command_id)

    def get(self, command_id: str) -> Entry | None:
        return self.entries.get(command_id)

    def snapshot(self) -> Mapping[str, Entry]:
        return dict(self.entries)

    def close(self) -> None:
        self._fh.close()
