"""Live events: how fast a worker's state update reaches a client, and what fan-out costs.

Runs Redis and one API process, and plays the worker itself: it writes PROGRESS states
with Celery's own result backend (``store_result``, what ``update_state`` does in a
worker: SET and PUBLISH), at known moments, for jobs submitted through the API.

- latency: one job, 200 updates; an SSE client and a client polling
  ``GET /v1/jobs/{id}`` every 0.5 s each note when they first see every update.
- fan-out: 500 SSE clients on 500 jobs at once, 2 updates a second each; Redis
  connections the API holds, the API process's CPU, and the delivery latency.
"""

import asyncio
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

from bench.report import machine, percentiles, save
from contracts.celery_config import create_celery_app
from contracts.records import RECORD_FIELD, JobRecord, job_key
from contracts.settings import CommonSettings
from tools.stack import Process, clean_env, free_port, http_ok, start_api, start_redis, wait_until

POLL_INTERVAL = 0.5


class Player:
    """Writes a step's PROGRESS states the way a worker does, and remembers when."""

    def __init__(self, redis_url: str) -> None:
        self.backend = create_celery_app("bench", CommonSettings(redis_url=redis_url)).backend
        self.sent_at: dict[tuple[str, int], float] = {}

    def update(self, task_id: str, current: int, total: int) -> None:
        self.sent_at[(task_id, current)] = time.perf_counter()
        meta = {"current": current, "total": total, "message": f"{current} of {total}"}
        self.backend.store_result(task_id, meta, "PROGRESS")


async def submit(client: httpx.AsyncClient, store: redis.Redis) -> tuple[str, str]:
    job = (
        await client.post("/v1/jobs", json={"kind": "generate", "input": {"prompt": "bench"}})
    ).json()
    record = JobRecord.model_validate_json(store.hget(job_key(job["id"]), RECORD_FIELD) or b"")
    return job["id"], record.steps[0].task_id


async def sse_client(
    client: httpx.AsyncClient,
    job_id: str,
    task_id: str,
    player: Player,
    seen: list[float],
    ready: asyncio.Event,
) -> None:
    async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
                if event == "status":
                    ready.set()
            elif line.startswith("data:") and event == "progress":
                current = json.loads(line[5:])["current"]
                seen.append(time.perf_counter() - player.sent_at[(task_id, current)])


async def polling_client(
    client: httpx.AsyncClient,
    job_id: str,
    task_id: str,
    player: Player,
    seen: list[float],
    stop: asyncio.Event,
) -> None:
    last = 0
    while not stop.is_set():
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        current = (job["progress"] or {}).get("current", 0)
        if job["progress"] and job["progress"]["total"] > 1 and current > last:
            now = time.perf_counter()
            seen.extend(now - player.sent_at[(task_id, n)] for n in range(last + 1, current + 1))
            last = current
        await asyncio.sleep(POLL_INTERVAL)


async def latency(api_url: str, redis_url: str, updates: int = 200) -> dict[str, Any]:
    player, store = Player(redis_url), redis.Redis.from_url(redis_url)
    pushed: list[float] = []
    polled: list[float] = []
    async with httpx.AsyncClient(base_url=api_url, timeout=60) as client:
        job_id, task_id = await submit(client, store)
        ready, stop = asyncio.Event(), asyncio.Event()
        sse = asyncio.create_task(sse_client(client, job_id, task_id, player, pushed, ready))
        poll = asyncio.create_task(polling_client(client, job_id, task_id, player, polled, stop))
        await ready.wait()
        for current in range(1, updates + 1):
            await asyncio.to_thread(player.update, task_id, current, updates + 1)
            await asyncio.sleep(random.uniform(0.05, 0.15))
        await asyncio.sleep(1.0)
        stop.set()
        sse.cancel()
        await asyncio.gather(sse, poll, return_exceptions=True)
    return {"sse_push": percentiles(pushed), f"polling_every_{POLL_INTERVAL}s": percentiles(polled)}


async def fan_out(
    api: Process, api_url: str, redis_url: str, clients: int = 500, seconds: float = 20
) -> dict[str, Any]:
    player, store = Player(redis_url), redis.Redis.from_url(redis_url)
    api_process = psutil.Process(api.popen.pid)
    baseline = int(store.info("clients")["connected_clients"])
    seen: list[float] = []
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    async with httpx.AsyncClient(base_url=api_url, timeout=120, limits=limits) as client:
        jobs = [await submit(client, store) for _ in range(clients)]
        readies = [asyncio.Event() for _ in jobs]
        streams = [
            asyncio.create_task(sse_client(client, job_id, task_id, player, seen, ready))
            for (job_id, task_id), ready in zip(jobs, readies, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(ready.wait() for ready in readies)), 120)
        held = int(store.info("clients")["connected_clients"]) - baseline
        subscribed_channels = len(store.pubsub_channels("celery-task-meta-*"))
        cpu_before, wall_before = api_process.cpu_times(), time.perf_counter()
        rounds = int(seconds * 2)

        def play_round(current: int) -> None:
            for _, task_id in jobs:
                player.update(task_id, current, rounds + 1)

        for current in range(1, rounds + 1):
            started = time.perf_counter()
            await asyncio.to_thread(play_round, current)  # the clients keep reading meanwhile
            await asyncio.sleep(max(0.0, 0.5 - (time.perf_counter() - started)))
        cpu_after, wall_after = api_process.cpu_times(), time.perf_counter()
        for _ in range(100):  # let the last events arrive
            delivered = len(seen)
            await asyncio.sleep(0.2)
            if len(seen) == delivered:
                break
        for stream in streams:
            stream.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
    busy = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    return {
        "clients": clients,
        "updates_per_second": clients * 2,
        "redis_connections_held_by_the_api": held,
        "subscribed_channels": subscribed_channels,
        "api_cpu_percent_of_one_core": 100 * busy / (wall_after - wall_before),
        "api_rss_mib": api_process.memory_info().rss / 2**20,
        "events_delivered": len(seen),
        "events_expected": clients * rounds,
        "delivery_latency": percentiles(seen),
    }


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as logs:
        log_dir = Path(logs)
        redis_server, redis_url = start_redis(log_dir)
        env = clean_env(redis_url=redis_url)
        port = free_port()
        api = start_api(env, log_dir, host="127.0.0.1", port=port)
        api_url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: http_ok(f"{api_url}/healthz"), 30, api)
            report = {
                "machine": machine(),
                "latency_worker_update_to_client": asyncio.run(latency(api_url, redis_url)),
                "fan_out": asyncio.run(fan_out(api, api_url, redis_url)),
            }
        finally:
            api.stop()
            redis_server.stop()
    save("events", report)
    return report


if __name__ == "__main__":
    main()
