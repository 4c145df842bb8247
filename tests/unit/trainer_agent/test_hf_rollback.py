"""A rollback inside a real (tiny) Hugging Face ``Trainer`` run, through the stage's own control
file and events file: it goes back to the last good checkpoint before the anomaly's step (model,
optimizer, scheduler, step), skips batches and goes on; a poisoned checkpoint is passed over.
No broker: the reporter is a list, the agent's side is the files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from posttrain.events.codec import decode  # noqa: E402
from posttrain.events.messages import RunStage  # noqa: E402
from posttrain.trainer_agent.hf_callback import PosttrainCallback  # noqa: E402
from posttrain.trainer_agent.stage_files import (  # noqa: E402
    CONTROL,
    EVENTS,
    ControlInbox,
    EventOutbox,
    append_line,
)
from posttrain.trainer_agent.tasks.context import StageContext  # noqa: E402


class _Regression(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x: Any, y: Any) -> dict[str, Any]:
        return {"loss": torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), y)}


class _Data(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 256

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(i)
        x = torch.randn(4, generator=g)
        return {"x": x, "y": x.sum()}


class _Agent(transformers.TrainerCallback):
    """Stands for the agent and the world: at a step's end (before the platform's callback
    polls), appends a control line, or poisons the weights."""

    def __init__(self, attempt_dir: Path, controls: dict[int, Any], poison_at: int | None):
        self.attempt_dir = attempt_dir
        self.controls = controls
        self.poison_at = poison_at
        self.done: set[int] = set()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step in self.done:
            return  # steps repeat after a rollback
        self.done.add(step)
        if step == self.poison_at:
            with torch.no_grad():
                model.linear.weight.fill_(float("nan"))
        lines = self.controls.get(step, [])
        for line in [lines] if isinstance(lines, dict) else lines:
            append_line(self.attempt_dir / CONTROL, line)


def _train(tmp_path: Path, controls: dict[int, Any], poison_at: int | None = None):
    points: list[dict[str, Any]] = []

    def report(step: int, epoch: float | None = None, **fields: Any) -> None:
        points.append({"step": step, **fields})

    run = RunStage(
        command_id="p:s:1",
        agent_id="a",
        pipeline_id="p",
        stage="s",
        attempt=1,
        job_id="j",
        task="train_model",
        params={},
    )
    ctx = StageContext(
        run=run,
        attempt_dir=tmp_path,
        work_dir=tmp_path,
        reporter=report,  # type: ignore[arg-type]
        inbox=ControlInbox(tmp_path, 0),
        outbox=EventOutbox(tmp_path, run),
    )
    callback = PosttrainCallback(report, stage=ctx)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "checkpoints"),
        max_steps=12,
        per_device_train_batch_size=8,
        learning_rate=0.05,
        lr_scheduler_type="linear",
        save_strategy="steps",
        save_steps=2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = transformers.Trainer(
        model=_Regression(),
        args=args,
        train_dataset=_Data(),
        callbacks=[_Agent(tmp_path, controls, poison_at), callback],
    )
    callback.attach(trainer)
    trainer.train()
    ctx.refuse_unanswered(None, "the stage ended")
    lines = (tmp_path / EVENTS).read_bytes().splitlines()
    events = [{"type": m.TYPE, **m.model_dump()} for m in (decode(x).data for x in lines)]
    return trainer, points, events


def _rollback(action_id: str, step: int | None, skip: int = 0) -> dict[str, Any]:
    return {"type": "RollbackStage", "action_id": action_id, "step": step, "skip_batches": skip}


def test_rollback_goes_back_to_the_checkpoint_before_the_anomaly_skips_and_goes_on(tmp_path):
    trainer, points, events = _train(tmp_path, {7: _rollback("rb", step=6, skip=2)})
    [applied] = [e for e in events if e["type"] == "ActionApplied"]
    assert applied["action_id"] == "rb" and applied["step"] == 7
    details = applied["details"]
    assert (details["from_step"], details["to_step"]) == (7, 4)
    assert details["checkpoint"].endswith("checkpoint-4")
    assert (details["skip_batches"], details["skipped_batches"]) == (2, 2)
    assert details["restored"] == ["model", "optimizer", "scheduler", "rng"]
    # Steps 1..7, then from 5 again: the run went on from step 4 to the end.
    assert [p["step"] for p in points] == [1, 2, 3, 4, 5, 6, 7, 5, 6, 7, 8, 9, 10, 11, 12]
    assert trainer.state.global_step == 12
    # The scheduler went back too: step 5 runs at the rate it had the first time.
    first5, second5 = (p["learning_rate"] for p in points if p["step"] == 5)
    assert second5 == pytest.approx(first5)
    # Checkpoints saved after the rollback are of the new line, marked finite.
    saved = [e for e in events if e["type"] == "CheckpointSaved"]
    assert [e["step"] for e in saved] == [2, 4, 6, 6, 8, 10, 12]
    assert all(e["non_finite"] == [] for e in saved)
    marker = tmp_path / "checkpoints" / "checkpoint-12" / "posttrain_checkpoint.json"
    assert json.loads(marker.read_text()) == {"step": 12, "non_finite": []}
    assert not [e for e in events if e["type"] == "ActionRefused"]


def test_rollback_passes_over_a_poisoned_checkpoint_and_refuses_with_none_before(tmp_path):
    controls = {
        5: _rollback("too-early", step=2),  # nothing saved before step 2
        6: _rollback("rb", step=6),
    }
    _, points, events = _train(tmp_path, controls, poison_at=3)
    saved = [(e["step"], e["non_finite"]) for e in events if e["type"] == "CheckpointSaved"]
    # checkpoint-4 is poisoned; after the rollback to 2, steps 3.. run again on good weights.
    assert saved == [(2, []), (4, ["weights", "loss"]), (6, ["weights", "loss"])] + [
        (s, []) for s in (4, 6, 8, 10, 12)
    ]
    [refused] = [e for e in events if e["type"] == "ActionRefused"]
    assert refused["action_id"] == "too-early"
    assert refused["reason"] == "no checkpoint with finite weights was saved before step 2"
    [applied] = [e for e in events if e["type"] == "ActionApplied"]
    assert (applied["details"]["from_step"], applied["details"]["to_step"]) == (6, 2)
    # Back on finite weights: the loss after the rollback is a number again.
    after = points[[p["step"] for p in points].index(6) + 1 :]
    assert after[0]["step"] == 3 and all(math.isfinite(p["loss"]) for p in after)


def test_a_rollback_at_the_step_where_the_stage_pauses_is_refused(tmp_path):
    pause = {"type": "PauseStage", "action_id": "p"}
    _, points, events = _train(tmp_path, {5: [_rollback("rb", step=4), pause]})
    [refused] = [e for e in events if e["type"] == "ActionRefused"]
    assert (refused["action_id"], refused["step"]) == ("rb", 5)
    assert refused["reason"] == "the stage stops at this step (pause)"
    assert points[-1]["step"] == 5


def test_a_learning_rate_factor_that_is_not_positive_is_refused_at_its_step(tmp_path):
    _, _, events = _train(
        tmp_path, {3: {"type": "AdjustLearningRate", "action_id": "lr", "factor": -1}}
    )
    [refused] = [e for e in events if e["type"] == "ActionRefused"]
    assert (refused["action_id"], refused["step"]) == ("lr", 3)
    assert "not a positive number" in refused["reason"]
