"""/metrics: the service's metrics in the Prometheus text format.

Cluster-wide counters and histograms come from the shared Redis hash that the API and
every worker add to (:mod:`contracts.metrics`); queue depths are read from the broker
at scrape time.
"""

from collections.abc import Iterator, Mapping

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from app.deps import ServicesDep
from contracts.metrics import JOBS_FINISHED, JOBS_SUBMITTED, METRICS_KEY, MetricSpec, families
from contracts.names import QueueName

router = APIRouter(tags=["health"])

Labels = tuple[tuple[str, str], ...]


class Snapshot(Collector):
    """One scrape's readings, shaped into metric families."""

    def __init__(self, stored: Mapping[str, float], depths: Mapping[str, int]) -> None:
        self._stored = stored
        self._depths = depths

    def collect(self) -> Iterator[Metric]:
        submitted: dict[str, float] = {}
        finished: dict[str, float] = {}
        for spec, data in families(self._stored):
            if spec.kind == "counter":
                yield _counter(spec, data.get("_total", {}))
            else:
                yield _histogram(spec, data)
            if spec is JOBS_SUBMITTED:
                for labels, value in data.get("_total", {}).items():
                    kind = dict(labels)["kind"]
                    submitted[kind] = submitted.get(kind, 0) + value
            if spec is JOBS_FINISHED:
                for labels, value in data.get("_total", {}).items():
                    kind = dict(labels)["kind"]
                    finished[kind] = finished.get(kind, 0) + value
        unfinished = GaugeMetricFamily(
            "llm_tasks_jobs_unfinished",
            "Jobs accepted and not yet ended (queued or running), by kind.",
            labels=["kind"],
        )
        for kind in sorted(submitted):
            unfinished.add_metric([kind], max(0.0, submitted[kind] - finished.get(kind, 0)))
        yield unfinished
        depth = GaugeMetricFamily(
            "llm_tasks_queue_depth", "Messages waiting in each broker queue.", labels=["queue"]
        )
        for queue, count in sorted(self._depths.items()):
            depth.add_metric([queue], count)
        yield depth


def _values(spec: MetricSpec, labels: Labels) -> list[str]:
    found = dict(labels)
    return [found.get(name, "") for name in spec.labels]


def _counter(spec: MetricSpec, totals: Mapping[Labels, float]) -> Metric:
    family = CounterMetricFamily(spec.name, spec.help, labels=list(spec.labels))
    for labels, value in sorted(totals.items()):
        family.add_metric(_values(spec, labels), value)
    return family


def _histogram(spec: MetricSpec, data: Mapping[str, Mapping[Labels, float]]) -> Metric:
    family = HistogramMetricFamily(spec.name, spec.help, labels=list(spec.labels))
    buckets: dict[Labels, dict[str, float]] = {}
    for labels, value in data.get("_bucket", {}).items():
        le = dict(labels)["le"]
        rest = tuple(item for item in labels if item[0] != "le")
        buckets.setdefault(rest, {})[le] = value
    bounds = [repr(float(bound)) for bound in spec.buckets] + ["+Inf"]
    for labels, count in sorted(data.get("_count", {}).items()):
        counts = buckets.get(labels, {})
        family.add_metric(
            _values(spec, labels),
            buckets=[(bound, counts.get(bound, 0.0)) for bound in bounds[:-1]] + [("+Inf", count)],
            sum_value=data.get("_sum", {}).get(labels, 0.0),
        )
    return family


@router.get("/metrics", response_class=Response)
async def read_metrics(services: ServicesDep) -> Response:
    """Prometheus metrics: jobs by kind and status, queue depths, wait and run time
    histograms, batch sizes, generated tokens (rate() gives tokens per second)."""
    raw: dict[bytes, bytes] = await services.redis.hgetall(METRICS_KEY)  # type: ignore[assignment]
    stored = {field.decode(): float(value) for field, value in raw.items()}
    readings = {queue.value: await services.depths.depth(queue.value) for queue in QueueName}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot(stored, readings))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
