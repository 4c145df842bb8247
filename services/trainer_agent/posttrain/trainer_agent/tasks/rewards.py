"""Reward functions for GRPO and evaluation: built-in verifiable rewards by name, or any
``module:function`` with TRL's signature ``f(completions, **columns) -> list[float]``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from posttrain.trainer_agent.tasks.context import StageError

RewardFn = Callable[..., list[float]]


def _answers(columns: dict[str, Any], count: int) -> list[str]:
    for name in ("answer", "completion", "solution"):
        if name in columns:
            return [str(a).strip() for a in columns[name]]
    raise StageError("the reward needs an 'answer' (or 'completion') column in the dataset")


def _text(completion: Any) -> str:
    if isinstance(completion, list):  # conversational: the assistant's message
        return str(completion[-1].get("content", "")) if completion else ""
    return str(completion)


def exact_match(completions: list[Any], **columns: Any) -> list[float]:
    """1 when the completion is the answer, else 0."""
    answers = _answers(columns, len(completions))
    pairs = zip(completions, answers, strict=True)
    return [1.0 if _text(c).strip() == a else 0.0 for c, a in pairs]


def arithmetic(completions: list[Any], **columns: Any) -> list[float]:
    """1 for the right number; a wrong number earns up to 0.5, less the further it is off (one
    tenth per unit); anything that is not a number earns 0. Verifiable, and dense enough for a
    tiny model's GRPO to climb."""
    answers = _answers(columns, len(completions))
    rewards = []
    for completion, answer in zip(completions, answers, strict=True):
        text = _text(completion).strip()
        if text == answer:
            rewards.append(1.0)
        elif text.lstrip("-").isdigit() and answer.lstrip("-").isdigit():
            rewards.append(max(0.0, 0.5 - abs(int(text) - int(answer)) / 10))
        else:
            rewards.append(0.0)
    return rewards


BUILTIN: dict[str, RewardFn] = {"exact_match": exact_match, "arithmetic": arithmetic}


def resolve_reward(name: str) -> RewardFn:
    if name in BUILTIN:
        return BUILTIN[name]
    module, sep, attr = name.partition(":")
    if not sep:
        raise StageError(f"reward {name!r}: expected one of {sorted(BUILTIN)} or 'module:function'")
    fn = getattr(importlib.import_module(module), attr, None)
    if not callable(fn):
        raise StageError(f"reward {name!r}: {module} has no function {attr}")
    return fn  # type: ignore[no-any-return]
