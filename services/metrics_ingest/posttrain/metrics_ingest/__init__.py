"""posttrain metrics_ingest: metrics from Kafka into PostgreSQL, exactly once, and queries."""
