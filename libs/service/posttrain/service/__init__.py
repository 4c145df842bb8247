"""What every posttrain service exposes the same way (shared DESIGN.md: "Services expose
/healthz and Prometheus metrics; logs are structured JSON").

- ``posttrain.service.http``: a tiny asyncio HTTP server for a few fixed routes.
- ``posttrain.service.prometheus``: /metrics, written by prometheus_client.
- ``posttrain.service.retry``: retrying until a database or broker is back (tenacity).
- ``posttrain.service.logs``: one JSON object per log line.

Light on purpose (orjson, prometheus_client, tenacity: pure Python, no dependencies of their
own): the trainer agent on a GPU node installs it too.
"""
