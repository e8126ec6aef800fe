"""Service metrics, shared by every process through one Redis hash.

Workers and API processes come and go; Prometheus scrapes one ``/metrics``. So each
process adds its increments to the hash :data:`METRICS_KEY` (workers buffer them and
flush once a second, see :class:`Tally`), and the API renders the hash in the Prometheus
text format. Counters there are cluster-wide and only grow; histograms keep cumulative
bucket counts, a sum and a count, as Prometheus does.

A field is ``<series>|<label>=<value>,…`` with labels sorted by name, e.g.
``llm_tasks_jobs_finished_total|kind=story,status=succeeded``.
"""

import math
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

METRICS_KEY = "llm-tasks:metrics"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Literal["counter", "histogram"]
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


JOBS_SUBMITTED = MetricSpec(
    "llm_tasks_jobs_submitted", "counter", "Jobs accepted by the API.", ("kind",)
)
JOBS_FINISHED = MetricSpec(
    "llm_tasks_jobs_finished",
    "counter",
    "Jobs that ended, by how they ended (succeeded, failed, canceled, expired).",
    ("kind", "status"),
)
JOB_WAIT = MetricSpec(
    "llm_tasks_job_wait_seconds",
    "histogram",
    "From submission to the start of the job's first step.",
    ("kind",),
    (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
JOB_RUN = MetricSpec(
    "llm_tasks_job_run_seconds",
    "histogram",
    "From the start of the job's first step to its end.",
    ("kind", "status"),
    (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
TIME_TO_FIRST_TOKEN = MetricSpec(
    "llm_tasks_time_to_first_token_seconds",
    "histogram",
    "From the start of a generation job's first step to its first generated token.",
    ("kind",),
    (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH_SIZE = MetricSpec(
    "llm_tasks_batch_size",
    "histogram",
    "Requests sharing one batched forward pass (generation: rows of one decode loop).",
    ("model",),
    (1, 2, 4, 8, 16, 32, 64, 128),
)
TOKENS = MetricSpec(
    "llm_tasks_generated_tokens",
    "counter",
    "Tokens generated; rate() of it is tokens per second.",
    ("model",),
)
BUSY_SECONDS = MetricSpec(
    "llm_tasks_inference_seconds",
    "counter",
    "Seconds the inference threads spent running batches.",
    ("model",),
)
STEPS_FINISHED = MetricSpec(
    "llm_tasks_steps_finished",
    "counter",
    "Celery tasks (steps of jobs) that ended, by task name and state.",
    ("task", "state"),
)
STEP_RETRIES = MetricSpec(
    "llm_tasks_step_retries",
    "counter",
    "Retries of steps after a transient error.",
    ("task",),
)
WEBHOOK_ATTEMPTS = MetricSpec(
    "llm_tasks_webhook_attempts",
    "counter",
    "Webhook delivery attempts, by event and outcome (delivered, retry, failed).",
    ("event", "outcome"),
)
WEBHOOK_LATENCY = MetricSpec(
    "llm_tasks_webhook_attempt_seconds",
    "histogram",
    "How long one webhook delivery attempt took (the receiver's answer, or the error).",
    ("event",),
    (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

SPECS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        JOBS_SUBMITTED,
        JOBS_FINISHED,
        JOB_WAIT,
        JOB_RUN,
        TIME_TO_FIRST_TOKEN,
        BATCH_SIZE,
        TOKENS,
        BUSY_SECONDS,
        STEPS_FINISHED,
        STEP_RETRIES,
        WEBHOOK_ATTEMPTS,
        WEBHOOK_LATENCY,
    )
}


def series(name: str, labels: Mapping[str, str]) -> str:
    """The hash field of one series."""
    return f"{name}|" + ",".join(f"{key}={labels[key]}" for key in sorted(labels))


def parse_series(field: str) -> tuple[str, dict[str, str]]:
    name, _, encoded = field.partition("|")
    labels = dict(part.split("=", 1) for part in encoded.split(",") if part)
    return name, labels


def counter_fields(spec: MetricSpec, labels: Mapping[str, str], amount: float) -> dict[str, float]:
    return {series(f"{spec.name}_total", labels): amount}


def histogram_fields(spec: MetricSpec, labels: Mapping[str, str], value: float) -> dict[str, float]:
    """The increments one observation makes: every bucket it falls in, the sum, the count."""
    fields = {
        series(f"{spec.name}_bucket", {**labels, "le": _le(bound)}): 1.0
        for bound in (*spec.buckets, math.inf)
        if value <= bound
    }
    fields[series(f"{spec.name}_sum", labels)] = value
    fields[series(f"{spec.name}_count", labels)] = 1.0
    return fields


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class Tally:
    """Increments buffered in memory until the next flush; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: defaultdict[str, float] = defaultdict(float)

    def add(self, fields: Mapping[str, float]) -> None:
        with self._lock:
            for field, amount in fields.items():
                self._pending[field] += amount

    def inc(self, spec: MetricSpec, labels: Mapping[str, str], amount: float = 1.0) -> None:
        self.add(counter_fields(spec, labels, amount))

    def observe(self, spec: MetricSpec, labels: Mapping[str, str], value: float) -> None:
        self.add(histogram_fields(spec, labels, value))

    def drain(self) -> dict[str, float]:
        with self._lock:
            pending, self._pending = dict(self._pending), defaultdict(float)
        return pending


def families(
    stored: Mapping[str, float],
) -> Iterable[tuple[MetricSpec, dict[str, dict[tuple[tuple[str, str], ...], float]]]]:
    """The stored series grouped by metric: for each spec, ``{suffix: {labels: value}}``."""
    grouped: dict[str, dict[str, dict[tuple[tuple[str, str], ...], float]]] = {}
    for field, value in stored.items():
        name, labels = parse_series(field)
        for suffix in ("_total", "_bucket", "_sum", "_count"):
            base = name.removesuffix(suffix)
            if base != name and base in SPECS:
                key = tuple(sorted(labels.items()))
                grouped.setdefault(base, {}).setdefault(suffix, {})[key] = value
                break
    for name, spec in SPECS.items():
        yield spec, grouped.get(name, {})
