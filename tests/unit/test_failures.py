"""OOM recognition is one rule (posttrain.events.failures): the agent classifying a stage's
failure and the upcaster classifying an old StageFailed give the same kind for the same text."""

import pytest

from posttrain.events.failures import is_oom_exception, kind_from_text, mentions_oom
from posttrain.events.upcasters import upcast

OOM_TEXTS = [
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
    "RuntimeError: CUDA error: out of memory",
    "torch.cuda.OutOfMemoryError",
]
OTHER_TEXTS = ["ValueError: bad", "MemoryErrorX", ""]


def test_oom_is_recognised_by_exception_class():
    assert is_oom_exception(["builtins.RuntimeError", "torch.OutOfMemoryError"])
    assert is_oom_exception(["torch.cuda.OutOfMemoryError"])
    assert not is_oom_exception(["builtins.MemoryErrorX"])


@pytest.mark.parametrize("text", OOM_TEXTS)
def test_an_oom_text_is_oom_for_the_agent_and_for_an_upcast_v1_event(text):
    assert mentions_oom(text)
    assert kind_from_text(text) == "oom"
    assert upcast("StageFailed", {"error": text}, 1, 2)["kind"] == "oom"


@pytest.mark.parametrize("text", OTHER_TEXTS)
def test_any_other_text_is_an_error_for_both(text):
    assert kind_from_text(text) == "error"
    assert upcast("StageFailed", {"error": text}, 1, 2)["kind"] == "error"
