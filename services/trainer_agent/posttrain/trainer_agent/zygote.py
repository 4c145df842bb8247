"""The stage zygote: imports the training libraries once, then forks one stage per request.

``python -m posttrain.trainer_agent.zygote SOCKET [module,module,...]``. Requests arrive on a
Unix socket as one JSON line (attempt dir, launch number, environment, cwd, log file); the
answer is the forked stage's pid. The zygote stays single-threaded (a fork copies only the
calling thread, so no lock can be left held in the child), reaps its children automatically
(SIGCHLD ignored) and exits when its stdin (a pipe from the agent) closes.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import random
import select
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

DEFAULT_PRELOAD = (
    "torch",
    "transformers",
    "datasets",
    "trl",
    "posttrain.trainer_agent.stage_process",
    "posttrain.trainer_agent.hf_callback",
    "posttrain.trainer_agent.tasks.train",
    "posttrain.trainer_agent.tasks.evaluate",
    "posttrain.trainer_agent.tasks.preprocess",
)
# TRL and transformers import their classes lazily: touching them imports the real modules.
_WARM_ATTRIBUTES = {
    "trl": ("SFTTrainer", "SFTConfig", "DPOTrainer", "DPOConfig", "GRPOTrainer", "GRPOConfig"),
    "transformers": ("AutoModelForCausalLM", "AutoTokenizer", "LlamaForCausalLM", "Trainer"),
}


def preload(modules: tuple[str, ...]) -> None:
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # a missing optional library must not stop the agent
            print(f"zygote: cannot preload {name}: {exc}", file=sys.stderr, flush=True)
            continue
        for attribute in _WARM_ATTRIBUTES.get(name, ()):
            with contextlib.suppress(Exception):
                getattr(module, attribute)


def _start_time(pid: int) -> int:
    with contextlib.suppress(OSError, IndexError, ValueError):
        raw = Path(f"/proc/{pid}/stat").read_text()
        return int(raw[raw.rindex(")") + 2 :].split()[19])
    return 0


def _child(server: socket.socket, conn: socket.socket, request: dict[str, Any]) -> None:
    """In the forked child: become the stage process. Never returns."""
    code = 1
    try:
        os.setsid()
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        server.close()
        conn.close()
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        # The zygote's random state is every child's: start each from fresh entropy.
        random.seed()
        torch = sys.modules.get("torch")
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if torch is not None and threads.isdigit():
            torch.set_num_threads(int(threads))
        from posttrain.trainer_agent import stage_process

        code = stage_process.run(Path(request["attempt_dir"]), int(request["launch"]))
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(socket_path: str) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    staging = socket_path + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staging)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(staging)
    server.listen(16)
    os.rename(staging, socket_path)  # the path appears only once connecting works
    stdin = sys.stdin.fileno()
    while True:
        readable, _, _ = select.select([server, stdin], [], [])
        if stdin in readable and not os.read(stdin, 4096):
            return  # the agent is gone
        if server not in readable:
            continue
        conn, _ = server.accept()
        with conn:
            try:
                request = json.loads(conn.makefile("rb").readline())
                pid = os.fork()
                if pid == 0:
                    _child(server, conn, request)
                answer: dict[str, Any] = {"pid": pid, "start": _start_time(pid)}
            except Exception as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(answer).encode() + b"\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    modules = tuple(m for m in args[1].split(",") if m) if len(args) > 1 else DEFAULT_PRELOAD
    preload(modules)
    try:
        serve(args[0])
    finally:
        with contextlib.suppress(OSError):
            os.unlink(args[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
