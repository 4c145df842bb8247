"""A real (small) torch training loop run by the trainer agent's ``python`` task.

It regresses y = sum(x) with a linear layer, reports every step through the stage's training
callback, and obeys control commands at step boundaries, like any training loop wired to the
platform. ``nan_at`` multiplies the loss by NaN from that step on (a run that turns NaN);
``spike_at`` scales the loss, and so the gradient, by ``spike`` for ``spike_steps`` steps from
there (an exploding gradient). Non-finite steps are skipped, as verl and most trainers do. A
rollback is not implemented here: the stage refuses it on the record.
"""

from __future__ import annotations

import math
import time
from typing import Any


def run(
    ctx: Any,
    steps: int = 400,
    step_s: float = 0.5,
    lr: float = 0.05,
    nan_at: int | None = None,
    spike_at: int | None = None,
    spike: float = 1000.0,
    spike_steps: int = 1,
) -> dict[str, Any]:
    import torch

    from posttrain.trainer_agent.checkpoint_files import non_finite_parts, write_marker

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    last_loss = 0.0
    for step in range(1, steps + 1):
        directive = ctx.poll_control(step)
        if directive.lr_factor != 1.0:
            for group in optimizer.param_groups:
                group["lr"] *= directive.lr_factor
        if directive.save or directive.stop == "pause":
            path = ctx.job_dir / f"step-{step}.pt"
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
            # Marked when the weights or the last loss are not finite (a pause on a NaN).
            non_finite = non_finite_parts(model, last_loss)
            write_marker(path, step, non_finite)
            reason = "paused" if directive.stop else "forced"
            ctx.checkpoint_saved(step, str(path), reason, non_finite)
        for applied in directive.applied:
            ctx.action_applied(applied, step)
        if directive.stop is not None:
            ctx.stopping(directive.stop, step)
            return {"stopped_at": step}
        x = torch.randn(64, 4)
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        if nan_at is not None and step >= nan_at:
            loss = loss * float("nan")
        if spike_at is not None and spike_at <= step < spike_at + spike_steps:
            loss = loss * spike
        optimizer.zero_grad()
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")))
        if math.isfinite(grad_norm):
            optimizer.step()
        last_loss = float(loss)
        ctx.reporter(
            step=step,
            loss=float(loss),
            grad_norm=grad_norm,
            learning_rate=optimizer.param_groups[0]["lr"],
        )
        time.sleep(step_s)  # a step of a real model takes time; the loop must not outrun it
    return {"steps": steps}
