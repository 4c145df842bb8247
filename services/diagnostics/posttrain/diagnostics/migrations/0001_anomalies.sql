-- Diagnostics' own tables (issue 16): every anomaly raised on posttrain.anomalies, once, and the
-- actions taken on it as the pipeline event log tells them. Written only by the diagnostics
-- recorder; read through posttrain.diagnostics.queries (get_anomalies), never by another
-- service's SQL.

-- One row per anomaly id, written once (INSERT ... ON CONFLICT DO NOTHING): a redelivered or
-- re-raised anomaly (the periodic OOM scan raises the stream's ids again) changes nothing.
CREATE TABLE anomalies (
    anomaly_id    text             PRIMARY KEY,
    job_id        text             NOT NULL,
    pipeline_id   text,
    stage         text,
    attempt       integer,
    anomaly_type  text             NOT NULL,
    severity      text             NOT NULL,
    step          bigint           NOT NULL,
    value         double precision,            -- NaN and infinities kept as such
    message       text             NOT NULL,
    suggestions   jsonb            NOT NULL DEFAULT '[]',
    window_stats  jsonb            NOT NULL DEFAULT '{}',  -- AnomalyDetected.window
    emitted_at    timestamptz,                 -- when the trainer measured the point
    detected_at   timestamptz      NOT NULL,   -- the AnomalyDetected event's time
    event_id      text             NOT NULL,   -- the AnomalyDetected envelope's id
    recorded_at   timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX anomalies_job_idx ON anomalies (job_id, step);
CREATE INDEX anomalies_pipeline_idx ON anomalies (pipeline_id, step);

-- One row per action id, filled in by whichever of its events arrive (ActionRecommended on
-- posttrain.anomalies; ActionRequested, ActionApplied, ActionRefused on the pipeline event
-- log). Each event only fills what is still empty, so reading an event again changes nothing.
-- No foreign key to anomalies: the two topics are read independently, and an action may be
-- recorded before its anomaly (or have none: a person's request).
CREATE TABLE anomaly_actions (
    action_id        text             PRIMARY KEY,
    anomaly_id       text,
    pipeline_id      text,
    stage            text,
    attempt          integer,
    action           text             NOT NULL,
    factor           double precision,
    reason           text,
    recommended_at   timestamptz,     -- dry run, or no stage to act on: only recommended
    requested_at     timestamptz,     -- the orchestrator accepted it and sent the command
    applied_at       timestamptz,     -- the agent reported it done
    applied_step     bigint,
    applied_details  jsonb,
    refused_at       timestamptz,     -- the orchestrator (or agent) refused it
    refusal          text,
    status           text GENERATED ALWAYS AS (
        CASE
            WHEN refused_at IS NOT NULL THEN 'refused'
            WHEN applied_at IS NOT NULL THEN 'applied'
            WHEN requested_at IS NOT NULL THEN 'requested'
            ELSE 'recommended'
        END
    ) STORED,
    recorded_at      timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX anomaly_actions_anomaly_idx ON anomaly_actions (anomaly_id);
