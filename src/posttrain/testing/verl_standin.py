"""A stand-in for verl's ``main_ppo`` (which needs GPUs), for the platform's tests.

``python -m posttrain.testing.verl_standin key=value ...`` takes the Hydra overrides the platform
builds and behaves as verl does where the platform can see it:

- it refuses a key verl's ``ppo_trainer.yaml`` does not have (Hydra's struct mode does), and
  takes ``+key=value`` for a new one;
- with ``file`` in ``trainer.logger`` it writes one line per step, ``{"step": n, "data": {...}}``,
  with Python's json (bare ``NaN``), to ``VERL_FILE_LOGGER_PATH``, which it truncates on open;
- it counts global steps from 1, saves ``global_step_N/actor`` under
  ``trainer.default_local_dir`` every ``trainer.save_freq`` steps and at the last step, then
  writes ``latest_checkpointed_iteration.txt``;
- ``trainer.resume_mode``: ``disable``, ``auto`` (the latest in the directory) or
  ``resume_path`` (``trainer.resume_from_path``, a ``global_step_N`` directory): it goes on at
  step N + 1 with the state saved there;
- SIGTERM ends it at once, as it would end a verl driver.

One epoch is ``rows(data.train_files) // data.train_batch_size`` steps (batch 8 by default).
``VERL_STANDIN_STEP_S`` sets the time one step takes (default 0.05 s). The loss it logs falls
with the step and depends on nothing else, so a resumed run logs what an unbroken run would.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The keys of verl's config (verl/trainer/config/ppo_trainer.yaml and the files it includes)
# that the platform sets; a real run accepts many more.
KNOWN_KEYS = frozenset(
    {
        "algorithm.adv_estimator",
        "algorithm.use_kl_in_reward",
        "algorithm.kl_ctrl.kl_coef",
        "data.train_files",
        "data.val_files",
        "data.train_batch_size",
        "actor_rollout_ref.model.path",
        "actor_rollout_ref.actor.optim.lr",
        "actor_rollout_ref.actor.use_kl_loss",
        "actor_rollout_ref.actor.kl_loss_coef",
        "actor_rollout_ref.rollout.n",
        "actor_rollout_ref.rollout.name",
        "critic.model.path",
        "trainer.total_epochs",
        "trainer.total_training_steps",
        "trainer.n_gpus_per_node",
        "trainer.nnodes",
        "trainer.project_name",
        "trainer.experiment_name",
        "trainer.default_local_dir",
        "trainer.save_freq",
        "trainer.val_before_train",
        "trainer.test_freq",
        "trainer.resume_mode",
        "trainer.resume_from_path",
        "trainer.logger",
    }
)
DEFAULTS: dict[str, Any] = {
    "data.train_batch_size": 8,
    "actor_rollout_ref.actor.optim.lr": 1e-6,
    "algorithm.kl_ctrl.kl_coef": 0.001,
    "trainer.total_epochs": 30,
    "trainer.total_training_steps": None,
    "trainer.save_freq": -1,
    "trainer.resume_mode": "auto",
    "trainer.resume_from_path": None,
    "trainer.default_local_dir": "checkpoints/verl_examples/gsm8k",
    "trainer.logger": ["console"],
}


class ConfigError(Exception):
    """An override verl would refuse."""


def parse_value(text: str) -> Any:
    """A Hydra value: quoted string, list, bool, null, number or plain string."""
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("\\'", "'").replace("\\\\", "\\")
    if text.startswith("["):
        return json.loads(text)
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_overrides(argv: Sequence[str]) -> dict[str, Any]:
    config = dict(DEFAULTS)
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"not an override: {item!r}")
        if key.startswith("+"):
            config[key[1:]] = parse_value(value)
            continue
        if key not in KNOWN_KEYS:
            raise ConfigError(f"Could not override '{key}'. Key '{key}' is not in struct")
        config[key] = parse_value(value)
    return config


def _latest(directory: Path) -> Path | None:
    try:
        step = int((directory / "latest_checkpointed_iteration.txt").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return directory / f"global_step_{step}"


def _start(config: dict[str, Any], directory: Path) -> tuple[int, dict[str, Any]]:
    """(global step to go on from, saved state) as verl's ``_load_checkpoint`` finds them."""
    mode = config["trainer.resume_mode"]
    folder: Path | None
    if mode == "disable":
        return 0, {}
    if mode == "auto":
        folder = _latest(directory)
        if folder is None:
            print("Training from scratch", flush=True)
            return 0, {}
    elif mode == "resume_path":
        path = config["trainer.resume_from_path"]
        if not isinstance(path, str) or "global_step_" not in path:
            raise ConfigError("resume ckpt must specify the global_steps")
        folder = Path(path)
    else:
        raise ConfigError(f"unknown resume_mode {mode!r}")
    print(f"Load from checkpoint folder: {folder}", flush=True)
    state = json.loads((folder / "actor" / "state.json").read_text())
    return int(folder.name.split("global_step_")[-1]), state


def _save(directory: Path, step: int, state: dict[str, Any]) -> None:
    actor = directory / f"global_step_{step}" / "actor"
    actor.mkdir(parents=True, exist_ok=True)
    (actor / "state.json").write_text(json.dumps(state))
    (directory / "latest_checkpointed_iteration.txt").write_text(str(step))


def _rows(path: str) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    try:
        config = parse_overrides(sys.argv[1:] if argv is None else argv)
        directory = Path(config["trainer.default_local_dir"])
        global_step, state = _start(config, directory)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return 1
    per_epoch = max(1, _rows(config["data.train_files"]) // int(config["data.train_batch_size"]))
    total = config["trainer.total_training_steps"] or per_epoch * int(
        config["trainer.total_epochs"]
    )
    lr = float(config["actor_rollout_ref.actor.optim.lr"])
    save_freq = int(config["trainer.save_freq"])
    step_s = float(os.environ.get("VERL_STANDIN_STEP_S", "0.05"))
    log = None
    if "file" in config["trainer.logger"]:
        log = open(os.environ["VERL_FILE_LOGGER_PATH"], "wb", buffering=0)  # noqa: SIM115
    lr_history: list[float] = list(state.get("lr_history", []))
    global_step += 1
    while global_step <= total:
        time.sleep(step_s)
        lr_history.append(lr)
        data = {
            "training/global_step": global_step,
            "training/epoch": (global_step - 1) // per_epoch,
            "actor/pg_loss": 1.0 / math.sqrt(global_step),
            "actor/lr": lr,
            "actor/ppo_kl": 0.001 * global_step,
            "critic/score/mean": 1.0 - 1.0 / math.sqrt(global_step),
            "timing_s/step": step_s,
        }
        if log is not None:
            log.write(json.dumps({"step": global_step, "data": data}).encode() + b"\n")
        if save_freq > 0 and (global_step % save_freq == 0 or global_step == total):
            _save(directory, global_step, {"lr_history": lr_history})
        global_step += 1
    print(f"Final step {total}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
