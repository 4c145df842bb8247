"""Names on the agent's disk derived from ids (pure: no file is touched here)."""

from __future__ import annotations

import re
from pathlib import PurePath


def safe_name(text: str) -> str:
    """An id as one file name: anything but letters, digits, ``.``, ``_``, ``-`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:120] or "_"


def attempt_dir(work_dir: str, command_id: str) -> str:
    """The directory of one RunStage command (``stage_files`` lists what it holds)."""
    return str(PurePath(work_dir) / "stages" / safe_name(command_id))
