-- was: 0006_stage_dependencies
-- (the platform's migration of that id before the ingest and the orchestrator owned their tables:
-- a database that recorded it there adopts this one without running it again)

-- Each stage's dependencies in the read model, so that a reader (the web page's DAG) can draw
-- the graph's edges, not only its layers. Rows projected before this read '[]' until the
-- projection next writes them.

ALTER TABLE pipeline_stages ADD COLUMN depends_on jsonb NOT NULL DEFAULT '[]';
