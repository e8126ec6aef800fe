"""The GPU run, as one command: ``python3 bench/gpu.py`` from the repository's root.

Made for a GPU host that has torch, transformers and tokenizers and no network (as the
H200 machines lent here: torch 2.11 with CUDA, transformers 5.17): the few other packages
the worker's modules import (pydantic, pydantic-settings, redis, and the client's httpx
and httpx-sse, which the schemas' package imports) travel with the source
tree as wheels in ``bench/wheels`` and are installed from there into ``.cache/gpu-site``
when missing. Within a few minutes it measures the builtin engine on GPT-2 124M's shape
(random weights, the tiny tokenizer) in bfloat16: naive ``generate``, one request at a
time, against the batched decode loop at 1/8/32/64 concurrent requests x 128 new tokens,
and each figure's share of the memory-bandwidth bound (rows x measured copy bandwidth /
weight bytes). Results: ``bench/results/gpu.json``.

Without a GPU it runs the same on the CPU with small sizes (``gpu-cpu-fallback.json``),
which is how it is checked where no GPU is.
"""

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / "bench" / "wheels"
SITE = ROOT / ".cache" / "gpu-site"
NEEDED = ("pydantic", "pydantic_settings", "redis", "httpx", "httpx_sse")


def _import_or_install() -> None:
    """Make the worker's imports work without a network: the wheels beside this file."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(1, str(ROOT / "client"))  # the llm_tasks package: the API's schemas
    if SITE.exists():
        sys.path.insert(2, str(SITE))
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if not missing:
        return
    # The whole set, without resolving: the versions of the project's lock, together.
    packages = [
        "annotated-types", "pydantic", "pydantic-core", "pydantic-settings", "python-dotenv",
        "redis", "typing-extensions", "typing-inspection",
        "anyio", "certifi", "h11", "httpcore", "httpx", "httpx-sse", "idna",
    ]  # fmt: skip
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps"]
    command += ["--find-links", str(WHEELS), "--target", str(SITE), *packages]
    subprocess.run(command, check=True)
    sys.path.insert(2, str(SITE))
    importlib.invalidate_caches()


def main() -> dict[str, Any]:
    _import_or_install()
    import torch

    on_gpu = torch.cuda.is_available()
    os.environ["LLM_TASKS_INFERENCE_PROCESS"] = "false"
    os.environ["LLM_TASKS_DEVICE"] = "cuda:0" if on_gpu else "cpu"
    os.environ["LLM_TASKS_DTYPE"] = "bfloat16"
    from bench.models import batched_rate, copy_bandwidth, gpt2_124m_shaped, naive_rate
    from bench.report import machine, save

    os.environ["LLM_TASKS_GENERATOR_MODEL"] = str(gpt2_124m_shaped())
    from worker.config import WorkerSettings
    from worker.models import ModelRegistry, ModelRole

    loaded = ModelRegistry(WorkerSettings()).get(ModelRole.GENERATOR)
    levels, new, rounds = ((1, 8, 32, 64), 128, 3) if on_gpu else ((1, 4), 8, 1)
    prompts = [
        loaded.tokenizer.encode(f"Once upon a time, request {i} asked for") for i in range(64)
    ]

    def batched(level: int) -> float:
        return batched_rate(loaded, prompts[:level], new)

    def naive(count: int) -> float:
        return naive_rate(loaded, prompts[:count], new)

    weights = sum(p.numel() * p.element_size() for p in loaded.transformers_model.parameters())
    bandwidth = copy_bandwidth(loaded.device)
    batched(levels[0])  # warm up
    naive(1)
    naive_speed = statistics.median(naive(4) for _ in range(rounds))
    rows = []
    for level in levels:
        rate = statistics.median(batched(level) for _ in range(rounds))
        bound = level * bandwidth / weights
        rows.append(
            {
                "concurrent": level,
                "new_tokens": new,
                "tokens_per_second": rate,
                "over_naive": rate / naive_speed,
                "bandwidth_bound": bound,
                "share_of_bound": rate / bound,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    report = {
        "machine": machine(),
        "model": "GPT-2 124M shape (random weights), bfloat16",
        "device": str(loaded.device),
        "dtype": str(next(loaded.transformers_model.parameters()).dtype),
        "weights_bytes": weights,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "naive_tokens_per_second": naive_speed,
        "batched": rows,
    }
    save("gpu" if on_gpu else "gpu-cpu-fallback", report)
    return report


if __name__ == "__main__":
    main()
