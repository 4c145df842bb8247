"""metrics_ingest on the real broker and PostgreSQL."""
