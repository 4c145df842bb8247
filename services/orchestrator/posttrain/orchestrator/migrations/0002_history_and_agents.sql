-- was: 0004_history_and_agents
-- (the platform's migration of that id before the ingest and the orchestrator owned their tables:
-- a database that recorded it there adopts this one without running it again)

-- The orchestrator's read model, continued: a pipeline's history and the agents.

-- One row per event of a pipeline's log (clock ticks left out), written by the projection in
-- the same transaction as the pipelines/pipeline_stages rows. seq is the event's number within
-- its pipeline (1 for the first): the log and the fold fix it, so projecting the log again
-- writes the same rows (ON CONFLICT DO NOTHING).
CREATE TABLE pipeline_history (
    pipeline_id  text        NOT NULL,
    seq          integer     NOT NULL,
    at           timestamptz NOT NULL,     -- the event's occurred_at
    type         text        NOT NULL,     -- the event's type name (StageSucceeded, ...)
    stage        text,
    attempt      integer,
    summary      text        NOT NULL,     -- one line for people (core.view.event_summary)
    data         jsonb       NOT NULL,     -- the event's payload
    event_id     text        NOT NULL,
    PRIMARY KEY (pipeline_id, seq)
);

-- Each agent's latest heartbeat, as the compacted posttrain.agents topic holds it. A row only
-- moves to a later offset of the topic, so reading the topic again changes nothing.
-- silent_after: when the agent counts as lost if nothing newer arrives (the orchestrator's
-- silence interval: its --silence-intervals times the agent's heartbeat interval).
CREATE TABLE agents (
    agent_id           text             PRIMARY KEY,
    host               text             NOT NULL,
    labels             jsonb            NOT NULL DEFAULT '[]',
    gpus               integer          NOT NULL,
    free_gpus          integer          NOT NULL,
    running            jsonb            NOT NULL DEFAULT '[]',  -- command ids
    interval_s         double precision NOT NULL,
    stopping           boolean          NOT NULL,
    last_heartbeat_at  timestamptz      NOT NULL,  -- the heartbeat record's time
    silent_after       timestamptz      NOT NULL,
    topic_partition    integer          NOT NULL,
    topic_offset       bigint           NOT NULL
);
