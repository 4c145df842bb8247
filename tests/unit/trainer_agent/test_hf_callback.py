"""The Hugging Face callback inside a real (tiny) ``Trainer`` run: every step is logged, a NaN
loss is not hidden, and a learning-rate factor applied at a step boundary shows at the next
step. No broker: the reporter is a list."""

from __future__ import annotations

import math
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from posttrain.trainer_agent.core.control import Applied, StepDirective  # noqa: E402
from posttrain.trainer_agent.hf_callback import PosttrainCallback  # noqa: E402


class _Regression(torch.nn.Module):
    """y = w.x; the loss is NaN at step ``nan_at`` (counted in forward calls)."""

    def __init__(self, nan_at: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)
        self.calls = 0
        self.nan_at = nan_at

    def forward(self, x: Any, y: Any) -> dict[str, Any]:
        self.calls += 1
        loss = torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y)
        if self.calls == self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss}


class _Data(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(i)
        x = torch.randn(4, generator=g)
        return {"x": x, "y": x.sum()}


class _Stage:
    """Stands for the stage process: one learning-rate cut after step 3."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, int]] = []
        self.boundaries = 0

    def poll_control(self, step: int | None = None) -> StepDirective:
        self.boundaries += 1  # called once per step boundary
        if self.boundaries == 3:
            return StepDirective(lr_factor=0.1, applied=(Applied("lr", "adjust_learning_rate"),))
        return StepDirective()

    def action_applied(self, applied: Applied, step: int) -> None:
        self.applied.append((applied.action_id, step))

    def checkpoint_saved(self, step: int, path: str, reason: str, non_finite=()) -> None:
        raise AssertionError("no checkpoint was asked for")

    def stopping(self, reason: str, step: int) -> None:
        raise AssertionError("nothing asked to stop")


def test_every_step_logged_nan_kept_and_learning_rate_cut_shows_next_step(tmp_path):
    points: list[dict[str, Any]] = []
    stage = _Stage()

    def report(step: int, epoch: float | None = None, **fields: Any) -> None:
        points.append({"step": step, **fields})

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=6,
        per_device_train_batch_size=8,
        learning_rate=0.1,
        lr_scheduler_type="linear",
        logging_steps=50,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,  # logging_nan_inf_filter left at its default
    )
    trainer = transformers.Trainer(
        model=_Regression(nan_at=2),
        args=args,
        train_dataset=_Data(),
        callbacks=[PosttrainCallback(report, stage=stage)],
    )
    trainer.train()
    assert [p["step"] for p in points] == [1, 2, 3, 4, 5, 6]  # logging_steps=50 overridden
    assert math.isnan(points[1]["loss"])  # HF would have replaced it by the running average
    assert stage.applied == [("lr", 3)]
    lr = {p["step"]: p["learning_rate"] for p in points}
    # Linear decay from 0.1 over 6 steps; from step 4 on, the whole schedule is 10x lower.
    assert lr[3] == pytest.approx(0.1 * (1 - 2 / 6))
    assert lr[4] == pytest.approx(0.01 * (1 - 3 / 6))
    assert lr[5] == pytest.approx(0.01 * (1 - 4 / 6))
