"""Golden histories of the agent's journal: recorded observations (and the journal lines the
shell writes itself) must play through the pure core to the decisions and the state recorded
with them (``golden/play.py`` says how they are made). No broker, no process: milliseconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from posttrain.trainer_agent.core.decide import Restarted, decide
from posttrain.trainer_agent.journal_file import Journal
from tests.unit.trainer_agent.golden.play import HERE, SETUP, action_json, entry_json, play_file

NAMES = sorted(p.name.removesuffix(".jsonl") for p in HERE.glob("*.jsonl"))


def test_there_are_golden_histories():
    assert set(NAMES) >= {
        "run_and_replay",
        "pause_resume_cancel",
        "refusals_and_limits",
        "timeouts_and_deaths",
    }


@pytest.mark.parametrize("name", NAMES)
def test_golden_history_plays_to_its_recorded_decisions_and_state(name):
    expected = json.loads((HERE / f"{name}.expected.json").read_text())
    assert play_file(name) == expected
    assert play_file(name) == expected  # playing twice changes nothing


def _decisions(name):
    return {d["line"]: d for d in play_file(name)["decisions"]}


def test_a_resent_run_stage_is_answered_from_the_journal_not_run_twice():
    decisions = _decisions("run_and_replay")
    assert decisions[1]["decision"] == "launch"
    replay = decisions[7]
    assert replay["decision"] == "replay"
    [(sent)] = replay["actions"]
    assert sent["send"] == "StageSucceeded" and sent["replayed"] is True
    assert sent["outputs"]["checkpoint"] == "/work/ckpt/final"


def test_a_cancelled_stage_is_terminated_then_killed_on_the_observed_clock():
    decisions = _decisions("pause_resume_cancel")
    assert decisions[15]["actions"] == []  # 10 s after the cancel: within the grace period
    assert decisions[16]["actions"][0] == {"signal": "term", "command_id": "golden-p:train:1"}
    assert decisions[17]["actions"] == []  # terminated, kill not due yet
    assert decisions[18]["actions"][0]["signal"] == "kill"
    died = decisions[19]["actions"][1]
    assert (died["send"], died["kind"]) == ("StageFailed", "cancelled")


def test_a_resume_waits_for_capacity_and_goes_on_from_the_last_good_checkpoint():
    decisions = _decisions("pause_resume_cancel")
    assert "no capacity to resume" in decisions[7]["reason"]
    [start] = decisions[11]["actions"]
    assert (start["start"], start["resume_from"], start["control_offset"]) == (2, "/c/30", 95)
    assert decisions[9]["decision"] == "queue"  # a learning rate change waits for the resume


def test_outcomes_map_timeouts_oom_and_signals_to_failure_kinds():
    decisions = _decisions("timeouts_and_deaths")
    kinds = {
        line: d["actions"][1]["kind"]
        for line, d in decisions.items()
        if d["actions"] and d["actions"][0].get("record") == "finished"
    }
    assert kinds == {7: "timeout", 10: "oom", 12: "error"}
    assert decisions[10]["actions"][1]["details"]["signal"] == "SIGKILL"
    assert "could not fork" in decisions[12]["actions"][1]["error"]


def test_a_journal_written_by_todays_agent_is_read_after_the_upgrade(tmp_path: Path):
    path = tmp_path / "journal.jsonl"
    shutil.copy(HERE / "todays_format.journal", path)
    journal = Journal(path)
    state = {c: entry_json(e) for c, e in sorted(journal.entries.items())}
    expected = json.loads((HERE / "todays_format.expected.json").read_text())
    assert json.loads(json.dumps(state)) == expected["state"]
    # An old pause (no resume checkpoint recorded) resumes from its own checkpoint.
    assert journal.entries["golden-p:paused:1"].resume_checkpoint == "/w/c/40"
    # The torn last line was never acted on: the finished stage keeps its first outcome.
    assert journal.entries["golden-p:done:1"].outcome_reported

    # After the restart: the live process is adopted, the dead one lost, the unreported outcome
    # reported, the rest left alone.
    alive = {"golden-p:running:1"}
    recovery = {
        c: [
            action_json(a)
            for a in decide(journal.entries, Restarted(c, 100.0, c in alive), SETUP).actions
        ]
        for c in sorted(journal.entries)
    }
    assert json.loads(json.dumps(recovery)) == expected["recovery"]

    # New events append to the old file, and both read back together.
    journal.append(recovery_event := _finished_lost(recovery))
    journal.close()
    again = Journal(path)
    assert again.entries["golden-p:lost:1"].outcome == recovery_event.outcome
    again.close()


def _finished_lost(recovery):
    from posttrain.trainer_agent.core.events import Finished

    record = recovery["golden-p:lost:1"][0]
    return Finished(record["command_id"], record["outcome"])


@pytest.mark.parametrize("name", NAMES)
def test_no_report_says_which_supervisor_ran_the_stage(name):
    """The orchestrator never learns how a stage was run (local, ssh, ranks)."""
    sent = [a for d in play_file(name)["decisions"] for a in d["actions"] if "send" in a]
    assert sent
    assert not any("supervisor" in json.dumps(a) for a in sent)


@pytest.mark.parametrize("name", NAMES)
def test_the_journal_file_reads_back_what_the_decisions_recorded(name, tmp_path: Path):
    """Every event a history records, written by ``Journal`` and read again, folds to the same
    state as the history's own."""
    from posttrain.trainer_agent.core.events import from_record
    from posttrain.trainer_agent.core.state import fold
    from tests.unit.trainer_agent.golden.play import observation

    journal = Journal(tmp_path / "journal.jsonl")
    entries: dict = {}
    for line in (HERE / f"{name}.jsonl").read_text().splitlines():
        step = json.loads(line)
        if "journal" in step:
            events = [from_record(step["journal"])]
        else:
            decision = decide(entries, observation(step), SETUP)
            events = [a.event for a in decision.actions if hasattr(a, "event")]
        for event in events:
            journal.append(event)
        entries = fold(events, entries)
    journal.close()
    assert Journal(tmp_path / "journal.jsonl").entries == entries
