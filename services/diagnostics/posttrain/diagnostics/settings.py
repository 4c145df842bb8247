"""The diagnostics stream's settings, from its environment variables.

| variable                                  | default                                        |
|-------------------------------------------|------------------------------------------------|
| POSTTRAIN_DIAGNOSTICS_CONFIG              | (none: the default thresholds and policy)      |
| POSTTRAIN_DIAGNOSTICS_WEB_PORT            | (none: no /healthz and /metrics)               |
| POSTTRAIN_DIAGNOSTICS_SCAN_S              | 0 (no periodic scan of failed jobs)            |
| POSTTRAIN_DIAGNOSTICS_SESSION_TIMEOUT_S   | 10 (a dead worker's partitions move this soon) |
| DATABASE_URL                              | (the scan runs only where it is set)           |
"""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from posttrain.service.settings import ServiceSettings


class DiagnosticsSettings(ServiceSettings):
    """The ``POSTTRAIN_DIAGNOSTICS_*`` variables (and the shared ones); a keyword given to the
    constructor (a command-line option) wins over its variable."""

    model_config = SettingsConfigDict(env_prefix="POSTTRAIN_DIAGNOSTICS_")

    config: str | None = None
    web_port: int | None = None
    scan_s: float = 0.0
    session_timeout_s: float = 10.0

    @property
    def scan_database_url(self) -> str | None:
        """The database the scan of failed jobs reads: only one named by ``DATABASE_URL`` (or
        given), never the local stack's by default."""
        return self.database_url if "database_url" in self.model_fields_set else None
