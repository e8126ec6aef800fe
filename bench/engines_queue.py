"""The generation engines through the queue: a worker with the builtin engine, a worker
with ``LLM_TASKS_ENGINE=vllm``, and vLLM in process (no queue) beside them.

Same model folder and prompts as ``bench/engine.py``; each worker on a private Redis,
with its own environment's Python (the vLLM worker runs in ``make test-vllm``'s
environment, ``VENV_VLLM``, ``.venv-vllm`` by default); N clients in a closed loop send
``generate`` jobs through Celery (each its next one when its last is done). Rounds
alternate between the three, and the two not measured are stopped (SIGSTOP), so that
none spins on the cores meanwhile; medians of 3. Tokens/s counts the tokens the jobs
generated.

``python -m bench engines_queue`` (``--levels=32``, ``--tokens=128``, ``--models=gpt2``,
``--modes=greedy,sampled``, ``--compile=on``: the builtin worker with its decode step
compiled, ``LLM_TASKS_COMPILE``);
results in ``bench/results/engines-queue.json``.
"""

import json
import os
import signal
import statistics
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.engine import PEERS_PYTHON, SAMPLED, VllmPeer, prompts
from bench.models import gpt2_124m_shaped
from bench.report import machine, save
from bench.throughput import closed_loop, option
from contracts.celery_config import create_celery_app
from contracts.names import TaskName
from contracts.settings import CommonSettings
from tools.stack import clean_env, start_redis, start_worker, wait_until

ROUNDS = 3
VLLM_PYTHON = Path(os.environ.get("VENV_VLLM", ".venv-vllm")) / "bin" / "python"


class QueuedWorker:
    """A worker (its engine, its environment's Python) on a Redis of its own."""

    def __init__(
        self, log_dir: Path, folder: Path, engine: str, python: str, compiled: bool = False
    ) -> None:
        self.redis, url = start_redis(log_dir)
        env = clean_env(
            redis_url=url,
            engine=engine,
            compile=str(compiled).lower(),
            generator_model=str(folder),
            worker_concurrency="72",
            batch_max_size="64",
            max_new_tokens="4096",
        )
        self.worker = start_worker(env, log_dir, name=f"{engine}-worker", python=python)
        self.celery = create_celery_app(f"bench-{engine}", CommonSettings(redis_url=url))
        wait_until(lambda: bool(self.celery.control.ping(timeout=0.5)), 300, self.worker)
        self.run(4, sampled=False, text=["Once upon a time"])  # models loaded, threads up

    def run(self, new: int, sampled: bool, text: list[str]) -> float:
        """Tokens/s of ``len(text)`` concurrent clients, each sending its prompt
        ``ROUNDS_PER_CLIENT`` times."""
        done: list[int] = []
        lock = threading.Lock()
        jobs = iter(range(len(text) * ROUNDS_PER_CLIENT))
        options = {"temperature": SAMPLED["temperature"] if sampled else 0.0}
        options["top_p"] = SAMPLED["top_p"]

        def one() -> None:
            with lock:
                i = next(jobs)
            kwargs = {"prompt": text[i % len(text)], "max_new_tokens": new, "seed": i} | options
            result = self.celery.send_task(TaskName.GENERATE, kwargs=kwargs).get(timeout=600)
            with lock:
                done.append(int(result["tokens"]))

        wall, _ = closed_loop(len(text), len(text) * ROUNDS_PER_CLIENT, one)
        return sum(done) / wall

    def pause(self, paused: bool) -> None:
        os.killpg(self.worker.popen.pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def close(self) -> None:
        self.pause(False)
        self.celery.close()
        self.worker.stop()
        self.redis.stop()


#: Jobs each client sends per measured round.
ROUNDS_PER_CLIENT = 2


@contextmanager
def paused(workers: list[QueuedWorker]) -> Iterator[None]:
    """``workers`` stopped meanwhile (their idle threads would take cycles)."""
    for worker in workers:
        worker.pause(True)
    try:
        yield
    finally:
        for worker in workers:
            worker.pause(False)


def main() -> dict[str, Any]:
    from transformers import AutoConfig, AutoTokenizer

    from tiny_models import ensure_tiny_models
    from worker.config import get_settings
    from worker.models import cpu_dtype
    from worker.vllm_engine import parameter_count

    levels = [int(n) for n in option("levels", "32").split(",")]
    lengths = [int(n) for n in option("tokens", "128").split(",")]
    folders = {
        "tiny": ensure_tiny_models(get_settings().model_cache_dir) / "generator",
        "gpt2": gpt2_124m_shaped(),
    }
    chosen = option("models", "gpt2").split(",")
    modes = option("modes", "greedy,sampled").split(",")
    missing = [str(p) for p in (PEERS_PYTHON, VLLM_PYTHON) if not p.exists()]
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {"machine": machine(), "rounds": ROUNDS, "rows": rows}
    if missing:
        print(f"engines_queue: skipped, no {missing} (make bench-peers, make test-vllm)")
        return report
    log_dir = Path(tempfile.mkdtemp(prefix="bench-engines-queue-"))
    for name in chosen:
        folder = folders[name]
        tokenizer = AutoTokenizer.from_pretrained(folder)
        compiled = option("compile", "off") == "on"
        builtin = QueuedWorker(log_dir, folder, "builtin", sys.executable, compiled)
        in_vllm = QueuedWorker(log_dir, folder, "vllm", str(VLLM_PYTHON))
        config = AutoConfig.from_pretrained(folder)
        dtype = str(cpu_dtype("auto", parameter_count(config))).removeprefix("torch.")
        peer = VllmPeer(folder, dtype)  # the dtype the workers run it in
        report[f"{name}_dtype"] = dtype
        report["builtin_compiled"] = compiled
        workers = {"builtin_queue": builtin, "vllm_queue": in_vllm}
        try:
            for sampled in [mode == "sampled" for mode in modes]:
                for new in lengths:
                    for level in levels:
                        texts = [str(tokenizer.decode(ids)) for ids in prompts(tokenizer, level)]
                        token_ids = [tokenizer.encode(t) for t in texts]
                        figures: dict[str, list[float]] = {k: [] for k in [*workers, "vllm"]}
                        for _ in range(ROUNDS):
                            for key, worker in workers.items():
                                others = [w for w in workers.values() if w is not worker]
                                with paused(others):
                                    figures[key].append(worker.run(new, sampled, texts))
                            with paused(list(workers.values())):
                                figures["vllm"].append(peer.run(token_ids, new, sampled))
                        row: dict[str, Any] = {
                            "model": name,
                            "mode": "sampled" if sampled else "greedy",
                            "concurrent": level,
                            "new_tokens": new,
                        } | {key: statistics.median(values) for key, values in figures.items()}
                        row["vllm_queue_over_vllm"] = row["vllm_queue"] / row["vllm"]
                        row["builtin_queue_over_vllm"] = row["builtin_queue"] / row["vllm"]
                        rows.append(row)
                        print(json.dumps(row), flush=True)
        finally:
            peer.close()
            for worker in workers.values():
                worker.close()
    save("engines-queue", report)
    return report


if __name__ == "__main__":
    main()
