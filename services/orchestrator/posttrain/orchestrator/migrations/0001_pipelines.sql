-- was: 0003_pipelines
-- (the platform's migration of that id before the ingest and the orchestrator owned their tables:
-- a database that recorded it there adopts this one without running it again)

-- The orchestrator's read model: pipelines and their stages as the event log last left them.
-- Rows are whole snapshots written by the projection; `version` (events applied) only grows,
-- so re-projecting an older event never moves a row backwards.

CREATE TABLE pipelines (
    pipeline_id   text        PRIMARY KEY,
    name          text        NOT NULL,
    status        text        NOT NULL,
    submitted_by  text,
    submitted_at  timestamptz,
    finished_at   timestamptz,
    layers        jsonb       NOT NULL DEFAULT '[]',
    errors        jsonb       NOT NULL DEFAULT '[]',
    version       integer     NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pipelines_status_idx ON pipelines (status, submitted_at DESC);

CREATE TABLE pipeline_stages (
    pipeline_id     text        NOT NULL REFERENCES pipelines (pipeline_id) ON DELETE CASCADE,
    name            text        NOT NULL,
    position        integer     NOT NULL,
    task            text        NOT NULL,
    status          text        NOT NULL,
    attempt         integer     NOT NULL,
    command_id      text,
    agent_id        text,
    job_id          text,
    started_at      timestamptz,
    finished_at     timestamptz,
    outputs         jsonb       NOT NULL DEFAULT '{}',
    error           text,
    waiting_reason  text,
    cached_from     text,
    attempts        jsonb       NOT NULL DEFAULT '[]',
    PRIMARY KEY (pipeline_id, name)
);
CREATE INDEX pipeline_stages_job_idx ON pipeline_stages (job_id);
CREATE INDEX pipeline_stages_command_idx ON pipeline_stages (command_id);

-- Where the projection has read the event log up to, committed with the rows it wrote.
CREATE TABLE projection_offsets (
    projection  text    NOT NULL,
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL,
    PRIMARY KEY (projection, topic, partition)
);
