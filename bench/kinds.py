"""Time of each job kind on the tiny models: submit → succeeded, through the whole stack.

Starts a private Redis, a worker and the API (as ``make run`` does), then runs each kind
a few times, one job at a time, with its documented example input.
"""

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.report import machine, save
from tools.stack import free_port, running_stack

EXAMPLES: dict[str, dict[str, Any]] = {
    "generate": {"prompt": "Once upon a time", "max_new_tokens": 40},
    "long_text": {"prompt": "The crew woke", "chunks": 4, "chunk_tokens": 48},
    "summarize": {
        "text": "The city council approved a plan to build new bike lanes downtown. "
        "Work will start in the spring and last about six months.",
        "max_new_tokens": 40,
    },
    "sentiment": {"text": "I love this product!"},
    "story": {"topic": "space adventure"},
    "variations": {"prompt": "The weather today", "temperatures": [0.5, 0.7, 0.9, 1.1, 1.3]},
    "document": {
        "text": "The new library opened on Monday with thousands of books. "
        "Families came early and stayed until the evening."
    },
    "reply": {"message": "I'm frustrated with this!"},
}


def run_job(client: httpx.Client, kind: str, job_input: dict[str, Any]) -> float:
    started = time.perf_counter()
    job = client.post("/v1/jobs", json={"kind": kind, "input": job_input}).raise_for_status().json()
    while job["status"] in {"queued", "running"}:
        time.sleep(0.01)
        job = client.get(f"/v1/jobs/{job['id']}").raise_for_status().json()
    if job["status"] != "succeeded":
        raise RuntimeError(f"{kind} ended {job['status']}: {job['error']}")
    return time.perf_counter() - started


def main(runs: int = 5) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory() as logs,
        running_stack(port=free_port(), log_dir=Path(logs), private_redis=True) as stack,
        httpx.Client(base_url=stack.api_url, timeout=30) as client,
    ):
        stack.wait_ready(120)
        run_job(client, "generate", EXAMPLES["generate"])  # warm up
        seconds = {
            kind: [run_job(client, kind, job_input) for _ in range(runs)]
            for kind, job_input in EXAMPLES.items()
        }
    report = {
        "machine": machine(),
        "runs": runs,
        "submit_to_succeeded_seconds": {
            kind: {"median": statistics.median(times), "min": min(times), "max": max(times)}
            for kind, times in seconds.items()
        },
    }
    save("kinds", report)
    return report


if __name__ == "__main__":
    main()
