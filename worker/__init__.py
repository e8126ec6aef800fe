"""Celery workers that hold the models: tasks, model registry, inference."""

import os

# A fast tokenizer asked to encode one prompt hands it to its Rust thread pool and holds
# the GIL until a pool thread has run it; with a thread per task and the cores busy, that
# wait stalled every other thread of the worker (about an eighth of its Python time in a
# 32-job benchmark). The worker's parallelism is its threads and its batches, so the
# tokenizers' own is off unless the environment sets it.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
