"""What every posttrain service exposes the same way (shared DESIGN.md: "Services expose
/healthz and Prometheus metrics; logs are structured JSON").

- ``posttrain.service.http``: a tiny asyncio HTTP server for a few fixed routes.
- ``posttrain.service.prometheus``: the Prometheus text exposition format.
- ``posttrain.service.logs``: one JSON object per log line.

Standard library and orjson only: the trainer agent on a GPU node installs it too.
"""
