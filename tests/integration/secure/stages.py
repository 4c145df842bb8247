"""What the stages of the secured-cluster test run (the ``python`` task)."""

from __future__ import annotations

from typing import Any


def report_points(ctx: Any, points: int = 5) -> dict[str, Any]:
    """Report ``points`` metric points through the stage's reporter (the agent's principal)."""
    for step in range(1, points + 1):
        ctx.reporter(step=step, loss=1.0 / step)
    return {"points": points}
