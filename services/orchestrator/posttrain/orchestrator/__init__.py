"""posttrain orchestrator: Event-sourced DAG orchestrator."""
