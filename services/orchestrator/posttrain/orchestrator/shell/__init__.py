"""The orchestrator's shell: Kafka in, the pure core, Kafka (and PostgreSQL) out."""
