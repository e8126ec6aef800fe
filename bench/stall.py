"""A long summary beside a streaming generation: the largest gap between two tokens.

Both models share the device's inference thread (the worker's inference process runs
them the same way). A generation of 100 tokens streams alone, then again while a summary
of 200 tokens runs; the summary takes a turn per token (``worker.summarizer.
summarize_steps``), so the generation keeps its pace. Runs of each, alternating; the
largest and the median gap between a generation's tokens, and its total time.
"""

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.report import machine, save
from tiny_models import corpus_paragraphs, ensure_tiny_models
from worker import engine_client
from worker.config import WorkerSettings, get_settings
from worker.engine_client import Served
from worker.models import ModelRegistry, ModelRole

GENERATION_TOKENS = 100
SUMMARY_TOKENS = 200
ROUNDS = 3


def _generation(generator: Served, seed: int) -> dict[str, float]:
    stamps: list[float] = []
    started = time.perf_counter()
    engine_client.generate_text(
        generator,
        prompt="Once upon a time",
        max_new_tokens=GENERATION_TOKENS,
        temperature=0.8,
        top_p=0.95,
        seed=seed,
        on_tokens=lambda tokens: stamps.append(time.perf_counter()),
    )
    gaps = [b - a for a, b in zip([started, *stamps], stamps, strict=False)]
    return {
        "largest_gap_ms": 1000 * max(gaps),
        "median_gap_ms": 1000 * statistics.median(gaps),
        "seconds": time.perf_counter() - started,
    }


def main() -> dict[str, Any]:
    settings = WorkerSettings(model_cache_dir=get_settings().model_cache_dir)
    ensure_tiny_models(settings.model_cache_dir)
    registry = ModelRegistry(settings)
    generator = Served.here(registry.get(ModelRole.GENERATOR))
    summarizer = Served.here(registry.get(ModelRole.SUMMARIZER))
    text = " ".join(corpus_paragraphs()[:6])
    _generation(generator, 0)  # warm up both
    engine_client.summarize(summarizer, text=text, min_new_tokens=5, max_new_tokens=10)

    alone: list[dict[str, float]] = []
    beside: list[dict[str, float]] = []
    summary_seconds: list[float] = []
    with ThreadPoolExecutor(1) as pool:
        for round_ in range(ROUNDS):
            alone.append(_generation(generator, round_))
            started = time.perf_counter()
            summary = pool.submit(
                engine_client.summarize, summarizer, text=text,
                min_new_tokens=SUMMARY_TOKENS, max_new_tokens=SUMMARY_TOKENS,
            )  # fmt: skip
            time.sleep(0.05)  # the summary is under way
            beside.append(_generation(generator, round_))
            summary.result()
            summary_seconds.append(time.perf_counter() - started)

    def medians(runs: list[dict[str, float]]) -> dict[str, float]:
        return {key: round(statistics.median(run[key] for run in runs), 2) for key in runs[0]}

    report = {
        "machine": machine(),
        "generation_tokens": GENERATION_TOKENS,
        "summary_tokens": SUMMARY_TOKENS,
        "rounds": ROUNDS,
        "generation_alone": medians(alone),
        "generation_beside_a_summary": medians(beside),
        "summary_seconds": round(statistics.median(summary_seconds), 2),
    }
    save("stall", report)
    return report


if __name__ == "__main__":
    main()
