"""Which checkpoint a stage goes back to (rollback) or on from (resume after a pause).

A checkpoint whose weights hold a NaN or an infinity is poisoned: training from it gives NaN for
ever, so neither a rollback nor a resume picks it (a user may still name it). A non-finite loss
alone marks a checkpoint too, but its weights are good to go on from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Checkpoint:
    step: int
    path: str
    non_finite: tuple[str, ...] = ()  # "weights", "loss"

    @property
    def poisoned(self) -> bool:
        return "weights" in self.non_finite


def rollback_target(
    checkpoints: Iterable[Checkpoint], *, before_step: int, rollback_steps: int | None = None
) -> Checkpoint | None:
    """The checkpoint a rollback goes to: the latest good one saved before ``before_step`` (the
    anomaly's step: a checkpoint at that step already holds the bad update), and among those the
    latest at least ``rollback_steps`` before it where there is one (PaLM goes back ~100 steps:
    a spike builds up before it shows). None when no good checkpoint is older than the step."""
    before = [c for c in checkpoints if c.step < before_step and not c.poisoned]
    if not before:
        return None
    if rollback_steps:
        far_enough = [c for c in before if c.step <= before_step - rollback_steps]
        if far_enough:
            before = far_enough
    return max(before, key=lambda c: c.step)


def resume_checkpoint(saved: Sequence[Checkpoint]) -> Checkpoint | None:
    """The checkpoint a resume goes on from: the last saved (in the order they were saved; after
    a rollback a later save may have a smaller step) whose weights are finite."""
    for checkpoint in reversed(saved):
        if not checkpoint.poisoned:
            return checkpoint
    return None
