"""Placement respects every limit an agent announces: GPUs, labels and stage slots; an agent
that rejected a stage is tried again only after a later heartbeat of its own."""

from __future__ import annotations

from dataclasses import replace

from posttrain.events.messages import TickClock
from posttrain.orchestrator.core.decide import AgentView
from tests.unit.orchestrator.sim import World


def cmd(name, deps=(), **extra):
    return {
        "name": name,
        "task": "command",
        "params": {"argv": ["run", name]},
        "depends_on": list(deps),
        **extra,
    }


FAN = [cmd("root"), *(cmd(f"f{i}", ["root"]) for i in range(1, 8))]


def test_a_fan_out_sends_no_more_stages_than_the_agent_has_free_slots():
    w = World(agents={"a1": AgentView("a1", 0, 0, free_slots=3)})
    w.submit([cmd(f"f{i}") for i in range(1, 8)])
    assert len(w.runs()) == 3
    waiting = [s for s in w.view()["stages"] if s["status"] == "waiting"]
    assert len(waiting) == 4
    assert {s["waiting_reason"] for s in waiting} == {
        "every live agent that fits runs as many stages as it has slots"
    }


def test_an_agent_without_a_slot_limit_takes_what_a_full_one_cannot():
    w = World(
        agents={
            "small": AgentView("small", 0, 0, free_slots=1),
            "old": AgentView("old", 0, 0),  # an older agent: announces no slot limit
        }
    )
    w.submit([cmd(f"f{i}") for i in range(1, 8)])
    placed = [r.agent_id for r in w.runs()]
    assert len(placed) == 7
    assert placed.count("small") <= 1


def test_the_emptiest_agent_is_chosen_first():
    w = World(
        agents={
            "busy": AgentView("busy", 0, 0, free_slots=1, ring=1),
            "idle": AgentView("idle", 0, 0, free_slots=4, ring=2),
        }
    )
    w.submit([cmd(f"f{i}") for i in range(1, 4)])
    assert [r.agent_id for r in w.runs()] == ["idle", "idle", "idle"]  # 4, 3, 2 free to 1


def test_a_full_agent_gets_nothing_on_later_ticks_until_a_heartbeat_shows_room():
    w = World(agents={"a1": AgentView("a1", 0, 0, free_slots=2, beat_at=1000.0)})
    w.submit(FAN)
    w.succeed("root")
    w.heartbeat(free_slots=0)  # the shell's view: the two it was sent fill it
    sent = len(w.runs())
    for _ in range(5):
        w.tick(1, free_slots=0)
    assert len(w.runs()) == sent == 3
    w.succeed("f1")
    w.tick(1, free_slots=1)
    assert len(w.runs()) == 4


def test_an_agent_that_rejected_a_stage_is_not_sent_it_again_before_it_heartbeats():
    w = World(agents={"a1": AgentView("a1", 0, 0, free_slots=1, beat_at=1000.0)})
    w.submit([cmd("a")])
    assert len(w.runs()) == 1
    w.now += 1
    w.reject("a")  # a race the view could not see: the agent was full
    # Ticks come and go; the view still shows the room its old heartbeat claimed.
    for _ in range(3):
        w.now += 1
        w.send(TickClock(pipeline_id="p1", now=w.now, silent_agents=[]))
    assert len(w.runs()) == 1
    assert w.view()["stages"][0]["waiting_reason"] == "rejected by every agent that fits: a1"
    # A heartbeat sent after the rejection that still shows room: the stage goes back.
    w.tick(1, free_slots=1)
    again = w.run_for("a")
    assert (len(w.runs()), again.agent_id, again.attempt) == (2, "a1", 1)
    assert w.replayed_view() == w.view()


def test_a_heartbeat_sent_before_the_rejection_does_not_count():
    w = World(agents={"a1": AgentView("a1", 0, 0, free_slots=1, beat_at=1000.0)})
    w.submit([cmd("a")])
    w.now += 5
    w.agents["a1"] = replace(w.agents["a1"], beat_at=w.now - 1)  # arrived late, sent before
    w.reject("a")
    w.now += 1
    w.send(TickClock(pipeline_id="p1", now=w.now, silent_agents=[]))
    assert len(w.runs()) == 1


def test_stages_spread_over_equally_free_agents_instead_of_piling_on_one():
    w = World(
        agents={f"a{i}": AgentView(f"a{i}", 0, 0, free_slots=8, ring=i * 7919) for i in range(20)}
    )
    w.submit([cmd(f"f{i}") for i in range(20)])
    assert len({r.agent_id for r in w.runs()}) >= 8


def test_an_instance_places_on_its_own_share_of_the_agents_only():
    w = World(
        agents={
            "theirs": AgentView("theirs", 0, 0, free_slots=4, home=False),
            "ours": AgentView("ours", 0, 0, free_slots=2),
        }
    )
    w.submit([cmd(f"f{i}") for i in range(1, 5)])
    # Theirs may be filled by the instance whose share it is at any moment: not raced for.
    assert [r.agent_id for r in w.runs()] == ["ours", "ours"]


def test_a_stage_only_another_share_can_take_goes_there():
    w = World(
        agents={
            "theirs": AgentView("theirs", 8, 8, labels=frozenset({"a100"}), home=False),
            "ours": AgentView("ours", 0, 0, free_slots=2),
        }
    )
    w.submit([cmd("train", resources={"gpus": 1, "labels": ["a100"]}), cmd("eval")])
    assert {r.stage: r.agent_id for r in w.runs()} == {"train": "theirs", "eval": "ours"}


def test_a_stage_lost_with_the_only_agent_runs_there_again_once_it_is_back():
    w = World(agents={"a1": AgentView("a1", 0, 0, free_slots=1, beat_at=1000.0)})
    w.submit([cmd("a")])
    w.start("a")
    w.agents["a1"] = replace(w.agents["a1"], alive=False)
    w.now += 30
    w.send(TickClock(pipeline_id="p1", now=w.now, silent_agents=["a1"]))
    assert w.status("a") == "waiting" and len(w.runs()) == 1
    w.agents["a1"] = replace(w.agents["a1"], alive=True)
    w.tick(1, free_slots=1)  # it restarted and heartbeats again
    again = w.run_for("a")
    assert (again.agent_id, again.attempt) == ("a1", 2)
