"""One micro-batcher per loaded model in this process, running its role's runner (or, for
a generator in vLLM, vLLM's engine step by step)."""

import threading

from worker.classifier import classify_batch
from worker.config import get_settings
from worker.decode_loop import decode_steps
from worker.device_loop import MicroBatcher, Runner
from worker.models import LoadedModel, ModelRole
from worker.summarizer import summarize_batch
from worker.vllm_runner import vllm_steps

_RUNNERS: dict[ModelRole, Runner] = {
    ModelRole.GENERATOR: decode_steps,
    ModelRole.CLASSIFIER: classify_batch,
    ModelRole.SUMMARIZER: summarize_batch,
}
_batchers: dict[int, MicroBatcher] = {}
_batchers_lock = threading.Lock()


def batcher_for(loaded: LoadedModel) -> MicroBatcher:
    """The model's batcher: one per loaded model (and so per device) in this process."""
    with _batchers_lock:
        batcher = _batchers.get(id(loaded.model))
        if batcher is None:
            settings = get_settings()
            batcher = MicroBatcher(
                loaded,
                vllm_steps if loaded.engine == "vllm" else _RUNNERS[loaded.role],
                max_size=settings.batch_max_size,
                wait_ms=settings.batch_wait_ms,
            )
            _batchers[id(loaded.model)] = batcher
        return batcher
