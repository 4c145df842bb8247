"""The shell the remote host runs for a stage: start detached, signal the group, count it.

Only POSIX ``sh`` and Linux's ``/proc`` are assumed on the remote host. A run lives in its own
folder ``<remote_dir>/<name>``::

    pid             "<pid> <start>": the wrapper's pid (also the process group and session id)
                    and its start time in clock ticks since boot (/proc/<pid>/stat field 22)
    stage.log       stdout and stderr of the command
    control.jsonl   control commands appended by the agent (the same file a local stage reads)
    events.jsonl    CheckpointSaved / ActionApplied / ActionRefused lines written by the stage
    exit            the command's exit status, written once it ended

The wrapper is a session leader started with ``setsid`` and no terminal, stdin from /dev/null:
closing or losing the SSH connection does not touch it. It forwards SIGTERM to the command and
writes the exit status; a re-attaching agent trusts a pid only together with its start time, so a
pid reused by the system is never taken for the run. (The agent reads the run's state, the exit
file and /proc/<pid>/stat, over SFTP: see ``SshRunner._status``.)
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

PID = "pid"
LOG = "stage.log"
EXIT = "exit"

# Runs as the session leader: records itself, runs the command in the background (so that a
# trapped SIGTERM interrupts the wait and is passed on), then records the exit status.
_WRAPPER = r"""
echo "$$ $(cut -d' ' -f22 /proc/$$/stat)" > pid.tmp && mv pid.tmp pid
cd {cwd} || {{ echo 127 > exit; exit 127; }}
env {env} {argv} > {log} 2>&1 < /dev/null &
child=$!
trap 'kill -TERM $child 2>/dev/null' TERM INT HUP
rc=0
while kill -0 $child 2>/dev/null; do wait $child; rc=$?; done
echo $rc > {run}/exit.tmp && mv {run}/exit.tmp {run}/exit
"""


def start_script(run_dir: str, argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> str:
    """Create the run folder, start the wrapper detached, wait for its pid file, print it."""
    q = shlex.quote
    wrapper = _WRAPPER.format(
        cwd=q(cwd or run_dir),
        env=" ".join(q(f"{k}={v}") for k, v in env.items()),
        argv=" ".join(q(a) for a in argv),
        log=q(f"{run_dir}/{LOG}"),
        run=q(run_dir),
    )
    return f"""set -e
mkdir -p {q(run_dir)}
cd {q(run_dir)}
if [ -e {PID} ]; then echo "run folder {q(run_dir)} already holds a run" >&2; exit 3; fi
touch control.jsonl events.jsonl
setsid sh -c {q(wrapper)} < /dev/null > /dev/null 2>&1 &
i=0
while [ ! -s {PID} ]; do
  i=$((i+1)); if [ $i -gt 1000 ]; then echo "the run did not start" >&2; exit 4; fi
  sleep 0.01
done
cat {PID}
"""


def signal_script(pid: int, start: int, signal: str) -> str:
    """Signal the run's process group, if the wrapper is still that very process."""
    return f"""set -- $(cut -d' ' -f3,22 /proc/{pid}/stat 2>/dev/null)
if [ "${{2:-}}" = {start} ] && [ "$1" != Z ]; then kill -{signal} -- -{pid} 2>/dev/null; fi
echo done
"""


def group_alive_script(pid: int) -> str:
    """Prints how many processes are still in the run's process group."""
    return f"""n=0
for s in /proc/[0-9]*/stat; do
  set -- $(cut -d' ' -f3,5 "$s" 2>/dev/null)
  if [ "${{2:-}}" = {pid} ] && [ "$1" != Z ]; then n=$((n+1)); fi
done
echo $n
"""


def append_script(path: str) -> str:
    """Append stdin to a file in one write (control lines are far below PIPE_BUF)."""
    return f"cat >> {shlex.quote(path)}"
