-- Each stage's dependencies in the read model, so that a reader (the web page's DAG) can draw
-- the graph's edges, not only its layers. Rows projected before this read '[]' until the
-- projection next writes them.

ALTER TABLE pipeline_stages ADD COLUMN depends_on jsonb NOT NULL DEFAULT '[]';
