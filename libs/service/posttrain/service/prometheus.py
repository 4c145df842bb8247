"""Every service's /metrics, written by prometheus_client (text format 0.0.4).

    text = Exposition("posttrain_agent", labels={"agent": "gpu-1"})
    text.add("launches_total", "counter", "Stage processes started.", 3)
    text.add("stages", "gauge", "Stages by state.", [({"state": "running"}, 1)])
    text.collect_from(batch_rows)  # a prometheus_client instrument (a Histogram, say)
    body = text.render()

A service keeps its figures where its loop keeps them (plain fields, bumped for the price of an
addition) and hands them over when someone asks: prometheus_client's custom-collector pattern.
Families, samples, escaping, value formatting and the exposition itself are prometheus_client's;
a service's constant labels (``labels=``) go on every sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Literal

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

Kind = Literal["counter", "gauge", "untyped"]
Labels = Mapping[str, str]
Samples = float | Iterable[tuple[Labels, float]]
"""One unlabelled value, or a value per label set."""


class Exposition:
    """The families of one /metrics answer, rendered by prometheus_client."""

    def __init__(self, prefix: str, labels: Labels | None = None) -> None:
        self.prefix = prefix
        self.labels = dict(labels or {})
        self._families: list[Metric] = []

    def add(self, name: str, kind: Kind, help_: str, samples: Samples) -> None:
        """One family and its samples (none is fine: the family is still declared, e.g. a
        counter by type before the first one is counted). A counter's name ends in ``_total``,
        the sample's name; prometheus_client names the family without it."""
        full = f"{self.prefix}_{name}" if self.prefix else name
        family_name = full
        if kind == "counter":
            if not full.endswith("_total"):
                raise ValueError(f"counter {full!r}: a counter's name ends in _total")
            family_name = full.removesuffix("_total")
        family = Metric(family_name, help_, kind)
        if isinstance(samples, int | float):
            samples = [({}, samples)]
        for labels, value in samples:
            family.add_sample(full, {**self.labels, **labels}, float(value))
        self._families.append(family)

    def collect_from(self, instrument: Collector) -> None:
        """The families of a prometheus_client instrument made with ``registry=None`` (a
        ``Histogram``, say), named under this prefix, with the constant labels added."""
        prefix = f"{self.prefix}_" if self.prefix else ""
        for family in instrument.collect():
            copy = Metric(prefix + family.name, family.documentation, family.type)
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # when the instrument was made: not one of our series
                labels = {**self.labels, **sample.labels}
                copy.add_sample(prefix + sample.name, labels, sample.value)
            self._families.append(copy)

    def collect(self) -> Iterator[Metric]:
        """The families added so far (what prometheus_client's exposition reads)."""
        return iter(self._families)

    def render(self) -> str:
        return generate_latest(self).decode()
