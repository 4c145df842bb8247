"""Reading a service's /metrics text in tests, with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[str, float]:
    """Every sample as ``{'name{label="value",...}': value}``, labels in name order (the way
    the exposition writes them), so a test can look one up by what it reads on the page."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def families(text: str) -> dict[str, str]:
    """Every family declared, as ``{name: type}`` (a counter under its name without
    ``_total``, as the parser names it)."""
    return {family.name: family.type for family in text_string_to_metric_families(text)}
