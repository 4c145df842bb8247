"""The ``python`` task: call ``module:function(ctx, **kwargs)`` in the stage process.

The function gets the ``StageContext`` (its reporter, control inbox and directories) and returns
the stage's outputs. An exception it raises is the stage's failure, classified like any other
(``torch.OutOfMemoryError`` is ``oom``)."""

from __future__ import annotations

import importlib
from typing import Any

from posttrain.events.tasks import PythonParams
from posttrain.trainer_agent.tasks.context import StageContext, StageError


def run_python(ctx: StageContext) -> dict[str, Any]:
    params = ctx.read_params(PythonParams)
    entrypoint = params.entrypoint  # 'module:function', as its model checked
    module, _, attr = entrypoint.partition(":")
    fn = getattr(importlib.import_module(module), attr, None)
    if not callable(fn):
        raise StageError(f"params.config.entrypoint {entrypoint!r}: no such function")
    outputs = fn(ctx, **params.kwargs)
    return dict(outputs) if isinstance(outputs, dict) else {"result": outputs}
