"""Throughput: micro-batching against one request per pass (the seed guide's design).

Every figure stands beside its peer from the same run:

- queue overhead: very short jobs (sentiment of a few words) through the API versus raw
  Celery ``send_task`` on the same Redis and worker — jobs/s, p50/p99 submit → done;
- generation at 1, 8, 32, 64 concurrent jobs of 32 tokens (and 32 of 128 tokens): a
  worker with batching on, one with it off (``LLM_TASKS_BATCH_MAX_SIZE=1``), and the
  ceiling: the same rows through the batched decode loop in-process, with no queue
  (measured right after the level through the queue; the best of a few runs, with
  torch's default threads or the worker's, whichever is faster), and beside it the same
  loop with the worker's torch threads;
- classification, likewise;
- the API's submit rate under a load generator (requests/s, p99).

``python -m bench throughput`` (quick, CPU); ``--full`` runs more jobs per level and, on
a GPU, generates with a GPT-2 124M-shaped model (random weights, the tiny tokenizer; in
half precision, as ``LLM_TASKS_DEVICE=auto`` loads it); ``--gpt2-shape`` picks that model
anywhere (results in ``throughput-gpt2-shape.json``); ``--levels=8,32`` picks the
levels, ``--rounds=N`` the jobs per level (N x the level's clients). Every run also
reports the memory-bandwidth bound of generation: a decode step reads every weight once,
so B rows cannot go faster than B * bandwidth / weight bytes tokens/s (the bandwidth is
measured with a large copy on the model's device).
"""

import asyncio
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.models import copy_bandwidth, gpt2_124m_shaped
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


def option(name: str, default: str) -> str:
    """``--name=value`` from the command line, else ``default``."""
    prefix = f"--{name}="
    return next((arg[len(prefix) :] for arg in sys.argv if arg.startswith(prefix)), default)


FULL = "--full" in sys.argv
GPT2_SHAPE = "--gpt2-shape" in sys.argv
LEVELS = [int(level) for level in option("levels", "1,8,32,64").split(",")]
#: Jobs per level are this many times its clients (classification 4x that).
ROUNDS = int(option("rounds", "16" if FULL else "8"))
NEW_TOKENS = 32
#: Longer jobs, at one level: the queue's cost per job is shared by more tokens.
LONG_TOKENS = 128
LONG_LEVELS = [level for level in (32,) if level in LEVELS]
#: In-process figures are the best of this many runs.
IN_PROCESS_RUNS = 3
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
        generator_model=os.environ.get("LLM_TASKS_GENERATOR_MODEL", "tiny"),
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
    celery: Any,
    task: TaskName,
    kwargs: dict[str, Any],
    concurrency: int,
    total: int,
    warm_up: bool = False,
) -> dict[str, float]:
    """``total`` jobs by ``concurrency`` clients, each sending its next job when its last
    one is done; with ``warm_up``, ``concurrency`` jobs first, untimed, so that the
    figures are of a steady state (clients out of step), not of the first wave."""

    def one() -> None:
        celery.send_task(task, kwargs=kwargs).get(timeout=300)

    if warm_up:
        closed_loop(concurrency, concurrency, one)
    wall, latencies = closed_loop(concurrency, total, one)
    return {"jobs_per_s": total / wall, **percentiles(latencies)}


def in_process_rate(
    kind: str, concurrency: int, total: int, new_tokens: int, threads: int
) -> float:
    """Jobs/s of the same work through the batched runners directly (no broker, no
    worker), ``concurrency`` rows at a time, with ``threads`` torch threads (0: torch's
    default, every core)."""
    import torch

    from worker.classifier import classify_batch
    from worker.decode_loop import DecodeRow, decode_batch
    from worker.device_loop import Pending
    from worker.models import ModelRole, get_registry

    registry = get_registry()
    default_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        done = 0
        while done < total:
            rows = min(concurrency, total - done)
            if kind.startswith("generate"):
                loaded = registry.get(ModelRole.GENERATOR)
                context = loaded.tokenizer(PROMPT)["input_ids"]
                batch: list[Any] = [
                    Pending(DecodeRow(context, new_tokens, 0.8, 0.95, seed=i)) for i in range(rows)
                ]
                decode_batch(loaded, batch)
            else:
                batch = [Pending(SENTENCE) for _ in range(rows)]
                with torch.inference_mode():
                    for _ in classify_batch(registry.get(ModelRole.CLASSIFIER), batch):
                        pass
            done += rows
        return total / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(default_threads)


def worker_threads() -> int:
    """The torch threads of the worker's inference loop (0: torch's default): its
    largest model picks them."""
    from worker.models import ModelRole, get_registry, intra_op_threads

    registry = get_registry()
    return intra_op_threads(max(registry.get(role).parameters for role in ModelRole))


def in_process(kind: str, level: int, total: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The in-process figures of a level: with the worker's torch threads, and the ceiling
    (the better of those and torch's default, every core). Each is the best of a few runs,
    since a ceiling is what the machine can do: a run can only be slowed down."""
    tokens = kwargs.get("max_new_tokens", 0)
    workers = worker_threads()
    best = {
        threads: max(
            in_process_rate(kind, level, total, tokens, threads) for _ in range(IN_PROCESS_RUNS)
        )
        for threads in {0, workers}
    }
    ceiling_threads = max(best, key=lambda threads: best[threads])
    return {
        "ceiling_in_process": {
            "jobs_per_s": best[ceiling_threads],
            "torch_threads": ceiling_threads or "default",
        },
        "in_process_worker_threads": {
            "jobs_per_s": best[workers],
            "torch_threads": workers or "default",
        },
    }


def scaling(log_dir: Path) -> dict[str, Any]:
    # Jobs per level: enough for a few seconds of the batched worker at each level (a
    # classification takes a fraction of a generation's time, so it gets more).
    def per_level(concurrency: int, kind: str) -> int:
        jobs = ROUNDS * max(concurrency, 4)
        return jobs * 4 if kind == "classify" else jobs

    long_job = {"prompt": PROMPT, "max_new_tokens": LONG_TOKENS}
    work: dict[str, tuple[TaskName, dict[str, Any], list[int]]] = {
        "generate": (TaskName.GENERATE, {"prompt": PROMPT, "max_new_tokens": NEW_TOKENS}, LEVELS),
        f"generate_{LONG_TOKENS}_tokens": (TaskName.GENERATE, long_job, LONG_LEVELS),
        "classify": (TaskName.SENTIMENT, {"text": SENTENCE}, LEVELS),
    }
    report: dict[str, Any] = {kind: {} for kind in work}
    for label, batch_max_size in (("batched", 32), ("unbatched", 1)):
        with worker_stack(log_dir, batch_max_size) as (_, celery):
            for kind, (task, kwargs, levels) in work.items():
                for level in levels:
                    figures = through_queue(
                        celery, task, kwargs, level, per_level(level, kind), warm_up=level > 1
                    )
                    row = report[kind].setdefault(str(level), {})
                    row[label] = figures
                    print(kind, level, label, figures, flush=True)
                    if label == "batched":  # the ceiling now, on the machine as it is now
                        row |= in_process(kind, level, per_level(level, kind), kwargs)
    for kind, (_, kwargs, levels) in work.items():
        tokens = kwargs.get("max_new_tokens", 0)
        for level in levels:
            row = report[kind][str(level)]
            row["batched_over_unbatched"] = (
                row["batched"]["jobs_per_s"] / row["unbatched"]["jobs_per_s"]
            )
            row["queue_over_ceiling"] = (
                row["batched"]["jobs_per_s"] / row["ceiling_in_process"]["jobs_per_s"]
            )
            row["queue_over_worker_threads"] = (
                row["batched"]["jobs_per_s"] / row["in_process_worker_threads"]["jobs_per_s"]
            )
            if tokens:
                for figures in (
                    row["batched"],
                    row["unbatched"],
                    row["ceiling_in_process"],
                    row["in_process_worker_threads"],
                ):
                    figures["tokens_per_s"] = figures["jobs_per_s"] * tokens
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
        levels = sorted(int(level) for level in rows)
        for label in ("ceiling_in_process", "in_process_worker_threads", "batched", "unbatched"):
            axis.plot(
                levels, [rows[str(level)][label][unit] for level in levels], marker="o", label=label
            )
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(level) for level in levels])
        axis.set_xlabel("concurrent jobs")
        axis.set_ylabel(unit.replace("_", " "))
        model = report["generator"] if kind == "generate" else "tiny"
        axis.set_title(f"{kind} ({report['machine']['cuda'] or 'CPU'}, {Path(model).name} model)")
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def memory_bound() -> dict[str, Any]:
    """The generator's weight bytes and its device's memory bandwidth (a timed copy)."""
    from worker.models import ModelRole, get_registry

    loaded = get_registry().get(ModelRole.GENERATOR)
    weights = sum(p.numel() * p.element_size() for p in loaded.transformers_model.parameters())
    return {
        "weights_bytes": float(weights),
        "dtype": str(next(loaded.transformers_model.parameters()).dtype),
        "device": str(loaded.device),
        "bandwidth_bytes_per_s": copy_bandwidth(loaded.device),
    }


def add_bound(report: dict[str, Any], bound: dict[str, Any]) -> None:
    """Beside each generation figure: the bandwidth bound at that many rows, and the
    batched figure's share of it."""
    per_step = bound["bandwidth_bytes_per_s"] / bound["weights_bytes"]  # decode steps/s
    for kind, rows in report["scaling"].items():
        if not kind.startswith("generate"):
            continue
        for level, row in rows.items():
            row["bandwidth_bound_tokens_per_s"] = int(level) * per_step
            row["batched_over_bandwidth_bound"] = (
                row["batched"]["tokens_per_s"] / row["bandwidth_bound_tokens_per_s"]
            )


def main() -> dict[str, Any]:
    import torch

    if GPT2_SHAPE or (FULL and torch.cuda.is_available()):
        from worker.config import get_settings
        from worker.models import get_registry

        os.environ["LLM_TASKS_GENERATOR_MODEL"] = str(gpt2_124m_shaped())
        get_settings.cache_clear()  # the in-process ceiling loads the same model
        get_registry.cache_clear()
    with tempfile.TemporaryDirectory() as logs:
        log_dir = Path(logs)
        from worker.config import get_settings as worker_settings

        report: dict[str, Any] = {
            "machine": machine(),
            "mode": "full" if FULL else "quick",
            "rounds": ROUNDS,
            "generator": os.environ.get("LLM_TASKS_GENERATOR_MODEL", "tiny"),
            # The workers run with the defaults (the stack drops LLM_TASKS_ settings).
            "worker": {
                "inference_process": worker_settings().inference_process,
                "intra_op_threads": worker_threads(),
            },
        }
        report["scaling"] = scaling(log_dir)
        bound = memory_bound()
        report["memory_bound"] = bound
        add_bound(report, bound)
        report |= overhead_and_submit_rate(log_dir)
    name = "throughput-gpt2-shape" if GPT2_SHAPE else "throughput"
    save(name, report)
    chart(report, RESULTS / f"{name}.png")
    return report


if __name__ == "__main__":
    main()
