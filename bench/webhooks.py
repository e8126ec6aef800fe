"""What a webhook costs a job: submit → done, with and without a webhook, side by side.

Starts the whole stack (private Redis, a worker, the webhooks worker, the API) and a
receiver on 127.0.0.1 that answers 204 at once. Runs sentiment jobs one at a time,
alternating with and without a ``completed`` webhook, and times each from the submit to
the finished job (``Prefer: wait``: the answer comes when the job ends, pushed, not
polled); for the webhook runs also from the submit to the delivery's arrival.
"""

import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from bench.report import machine, percentiles, save
from tools.stack import clean_env, free_port, running_stack

SECRET = "whsec_YmVuY2htYXJrIHNlY3JldCwgMzIgYnl0ZXMgbG9uZyEh"
JOB = {"kind": "sentiment", "input": {"text": "What a lovely morning."}}


@contextmanager
def receiver() -> Iterator[tuple[str, dict[str, float]]]:
    """A receiver answering 204; yields its URL and when each job's delivery arrived."""
    arrived: dict[str, float] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            arrived[self.headers["webhook-id"].split(":")[0]] = time.perf_counter()
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", arrived
    finally:
        server.shutdown()
        server.server_close()


def run_job(client: httpx.Client, webhook: str | None) -> tuple[str, float, float]:
    """The job's id, when it was submitted and how long until it was seen finished."""
    body = JOB | ({"webhook": webhook} if webhook else {})
    started = time.perf_counter()
    job = client.post("/v1/jobs", json=body, headers={"Prefer": "wait=30"}).json()
    done = time.perf_counter() - started
    if job["status"] != "succeeded":
        raise RuntimeError(f"the job ended {job['status']}: {job['error']}")
    return job["id"], started, done


def main(runs: int = 50) -> dict[str, Any]:
    env = clean_env(webhook_secret=SECRET, webhook_allow_private_networks="true")
    with (
        tempfile.TemporaryDirectory() as logs,
        receiver() as (url, arrived),
        running_stack(port=free_port(), env=env, log_dir=Path(logs), private_redis=True) as stack,
        httpx.Client(base_url=stack.api_url, timeout=60) as client,
    ):
        stack.wait_ready(120)
        for _ in range(5):  # warm up both paths
            run_job(client, None)
            run_job(client, url)
        plain: list[float] = []
        hooked: list[float] = []
        submitted: dict[str, float] = {}
        for i in range(runs):
            for webhook in (None, url) if i % 2 == 0 else (url, None):
                job_id, started, done = run_job(client, webhook)
                (hooked if webhook else plain).append(done)
                if webhook:
                    submitted[job_id] = started
        deadline = time.monotonic() + 30
        while set(submitted) - set(arrived) and time.monotonic() < deadline:
            time.sleep(0.05)
    delivered = [arrived[job_id] - at for job_id, at in submitted.items() if job_id in arrived]
    report = {
        "machine": machine(),
        "runs": runs,
        "job": JOB,
        "submit_to_done_seconds": {
            "without_webhook": percentiles(plain),
            "with_webhook": percentiles(hooked),
            "median_overhead_ms": 1000 * (statistics.median(hooked) - statistics.median(plain)),
        },
        "submit_to_webhook_received_seconds": percentiles(delivered),
        "webhooks_received": len(delivered),
    }
    save("webhooks", report)
    return report


if __name__ == "__main__":
    main()
