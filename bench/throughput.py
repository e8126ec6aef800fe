"""Throughput: micro-batching against the guide's one-request-per-pass design.

Every figure stands beside its peer from the same run:

- queue overhead: very short jobs (sentiment of a few words) through the API versus raw
  Celery ``send_task`` on the same Redis and worker — jobs/s, p50/p99 submit → done;
- generation at 1, 8, 32, 64 concurrent jobs: a worker with batching on, one with it off
  (``LLM_TASKS_BATCH_MAX_SIZE=1``), and the ceiling: the same rows through the batched
  decode loop in-process, with no queue at all;
- classification, likewise;
- the API's submit rate under a load generator (requests/s, p99).

``python -m bench throughput`` (quick, CPU); ``--full`` adds more jobs per level and, on
a GPU, a GPT-2 124M-shaped generator (random weights) in half precision.
"""

import asyncio
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.report import RESULTS, machine, percentiles, save
from contracts.celery_config import create_celery_app
from contracts.names import TaskName
from contracts.settings import CommonSettings
from tools.stack import (
    clean_env,
    free_port,
    http_ok,
    start_api,
    start_redis,
    start_worker,
    wait_until,
)

FULL = "--full" in sys.argv
LEVELS = [1, 8, 32, 64]
NEW_TOKENS = 32
PROMPT = "Once upon a time there was a"
SENTENCE = "The staff were friendly and the room was lovely."


def closed_loop(concurrency: int, total: int, one: Callable[[], Any]) -> tuple[float, list[float]]:
    """``total`` calls of ``one`` by ``concurrency`` threads; wall seconds and latencies."""
    latencies: list[float] = []
    remaining = iter(range(total))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if next(remaining, None) is None:
                    return
            started = time.perf_counter()
            one()
            latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies


@contextmanager
def worker_stack(log_dir: Path, batch_max_size: int) -> Iterator[tuple[dict[str, str], Any]]:
    redis_server, redis_url = start_redis(log_dir)
    env = clean_env(
        redis_url=redis_url,
        batch_max_size=str(batch_max_size),
        worker_concurrency="72",
        max_new_tokens="4096",
    )
    worker = start_worker(env, log_dir, name=f"bench-{batch_max_size}")
    celery = create_celery_app("bench", CommonSettings(redis_url=redis_url))
    try:
        wait_until(lambda: bool(celery.control.ping(timeout=0.5)), 120, worker)
        # Warm up: models loaded, threads started.
        celery.send_task(TaskName.SENTIMENT, kwargs={"text": SENTENCE}).get(timeout=120)
        celery.send_task(TaskName.GENERATE, kwargs={"prompt": PROMPT, "max_new_tokens": 4}).get(
            timeout=120
        )
        yield env, celery
    finally:
        celery.close()
        worker.stop()
        redis_server.stop()


def through_queue(
    celery: Any, task: TaskName, kwargs: dict[str, Any], concurrency: int, total: int
) -> dict[str, float]:
    wall, latencies = closed_loop(
        concurrency, total, lambda: celery.send_task(task, kwargs=kwargs).get(timeout=300)
    )
    return {"jobs_per_s": total / wall, **percentiles(latencies)}


def in_process_ceiling(kind: str, concurrency: int, total: int) -> dict[str, float]:
    """The same work through the batched runners directly: no broker, no worker."""
    from worker.batching import DecodeRow, Pending, classify_batch, decode_batch
    from worker.models import ModelRole, get_registry

    registry = get_registry()
    started = time.perf_counter()
    done = 0
    while done < total:
        rows = min(concurrency, total - done)
        if kind == "generate":
            loaded = registry.get(ModelRole.GENERATOR)
            context = loaded.tokenizer(PROMPT)["input_ids"]
            batch: list[Any] = [
                Pending(DecodeRow(context, NEW_TOKENS, 0.8, 0.95, seed=i)) for i in range(rows)
            ]
            decode_batch(loaded, batch)
        else:
            batch = [Pending(SENTENCE) for _ in range(rows)]
            classify_batch(registry.get(ModelRole.CLASSIFIER), batch)
        done += rows
    return {"jobs_per_s": total / (time.perf_counter() - started)}


def scaling(log_dir: Path) -> dict[str, Any]:
    per_level = (lambda c: max(4 * c, 64)) if FULL else (lambda c: max(2 * c, 16))
    work: dict[str, tuple[TaskName, dict[str, Any]]] = {
        "generate": (TaskName.GENERATE, {"prompt": PROMPT, "max_new_tokens": NEW_TOKENS}),
        "classify": (TaskName.SENTIMENT, {"text": SENTENCE}),
    }
    report: dict[str, Any] = {kind: {} for kind in work}
    for label, batch_max_size in (("batched", 32), ("unbatched", 1)):
        with worker_stack(log_dir, batch_max_size) as (_, celery):
            for kind, (task, kwargs) in work.items():
                for level in LEVELS:
                    figures = through_queue(celery, task, kwargs, level, per_level(level))
                    report[kind].setdefault(str(level), {})[label] = figures
                    print(kind, level, label, figures, flush=True)
    for kind in work:
        for level in LEVELS:
            row = report[kind][str(level)]
            row["ceiling_in_process"] = in_process_ceiling(kind, level, per_level(level))
            row["batched_over_unbatched"] = (
                row["batched"]["jobs_per_s"] / row["unbatched"]["jobs_per_s"]
            )
            row["queue_over_ceiling"] = (
                row["batched"]["jobs_per_s"] / row["ceiling_in_process"]["jobs_per_s"]
            )
            if kind == "generate":
                for figures in (row["batched"], row["unbatched"], row["ceiling_in_process"]):
                    figures["tokens_per_s"] = figures["jobs_per_s"] * NEW_TOKENS
            print(kind, level, row, flush=True)
    return report


def overhead_and_submit_rate(log_dir: Path) -> dict[str, Any]:
    total = 400 if FULL else 150
    with worker_stack(log_dir, 32) as (env, celery):
        port = free_port()
        api = start_api(env, log_dir, host="127.0.0.1", port=port)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: http_ok(f"{url}/healthz"), 30, api)
            raw = through_queue(celery, TaskName.SENTIMENT, {"text": "Good."}, 1, total)
            with httpx.Client(base_url=url, timeout=30) as client:

                def via_api() -> None:
                    job = client.post(
                        "/v1/jobs", json={"kind": "sentiment", "input": {"text": "Good."}}
                    ).json()
                    with client.stream("GET", f"/v1/jobs/{job['id']}/events") as events:
                        for line in events.iter_lines():
                            if line == "event: done":
                                return

                wall, latencies = closed_loop(1, total, via_api)
            api_figures = {"jobs_per_s": total / wall, **percentiles(latencies)}
            submit = asyncio.run(submit_rate(url, seconds=10 if FULL else 5))
        finally:
            api.stop()
    return {
        "queue_overhead_sentiment_one_at_a_time": {
            "raw_celery_send_task_get": raw,
            "api_post_then_sse_done": api_figures,
        },
        "api_submit_rate": submit,
    }


async def submit_rate(url: str, seconds: float, concurrency: int = 32) -> dict[str, float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    body = {"kind": "sentiment", "input": {"text": "Good."}, "delay_seconds": 60}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def user() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.post("/v1/jobs", json=body)
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests_per_s": len(latencies) / wall,
        **percentiles(latencies),
    }


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, kind, unit in (
        (axes[0], "generate", "tokens_per_s"),
        (axes[1], "classify", "jobs_per_s"),
    ):
        rows = report["scaling"][kind]
        for label in ("ceiling_in_process", "batched", "unbatched"):
            axis.plot(
                LEVELS, [rows[str(level)][label][unit] for level in LEVELS], marker="o", label=label
            )
        axis.set_xscale("log", base=2)
        axis.set_xticks(LEVELS, [str(level) for level in LEVELS])
        axis.set_xlabel("concurrent jobs")
        axis.set_ylabel(unit.replace("_", " "))
        axis.set_title(f"{kind} ({report['machine']['cuda'] or 'CPU'}, tiny models)")
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as logs:
        log_dir = Path(logs)
        report = {"machine": machine(), "mode": "full" if FULL else "quick"}
        report["scaling"] = scaling(log_dir)
        report |= overhead_and_submit_rate(log_dir)
    save("throughput", report)
    chart(report, RESULTS / "throughput.png")
    return report


if __name__ == "__main__":
    main()
