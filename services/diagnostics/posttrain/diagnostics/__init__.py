"""posttrain diagnostics: Streaming anomaly detection, alerts and automatic actions."""
