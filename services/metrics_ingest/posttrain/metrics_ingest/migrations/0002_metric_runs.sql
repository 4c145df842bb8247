-- was: 0005_metric_runs
-- (the platform's migration of that id before the ingest and the orchestrator owned their tables:
-- a database that recorded it there adopts this one without running it again)

-- Runs of a job: a second run under an existing job id is a new run, never merged into the
-- first. A source (one reporter, one metrics file) belongs to one run, named by its run_key
-- (posttrain.events.messages.metrics.run_key: the stage's attempt under the trainer agent, the
-- reporter's process outside it, so a script started twice is two runs). Numbered from 1 per
-- job in the order they first reported. The metrics table is untouched: a run is a set of
-- sources.

ALTER TABLE metric_sources ADD COLUMN run integer;
ALTER TABLE metric_sources ADD COLUMN run_key text;
-- Sources stored before runs existed: run 1 of their job.
UPDATE metric_sources SET run = 1, run_key = 'before-runs' WHERE run IS NULL;
ALTER TABLE metric_sources ALTER COLUMN run SET NOT NULL;
ALTER TABLE metric_sources ALTER COLUMN run_key SET NOT NULL;
CREATE INDEX metric_sources_run ON metric_sources (job_no, run);
