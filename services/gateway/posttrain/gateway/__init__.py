"""posttrain gateway: The HTTP API."""
