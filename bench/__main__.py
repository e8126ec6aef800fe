"""``make bench``: run the benchmarks, write bench/results/*.json.

``python -m bench [NAME ...]`` runs only the named ones (startup, kinds, events, stall, webhooks,
engine, engines_queue, throughput);
``--full`` runs the long versions (meant for a GPU machine).
"""

import sys
from collections.abc import Callable
from typing import Any

from bench import engine, engines_queue, events, kinds, stall, startup, throughput, webhooks

BENCHMARKS: dict[str, Callable[[], Any]] = {
    "startup": startup.main,
    "kinds": kinds.main,
    "events": events.main,
    "stall": stall.main,
    "webhooks": webhooks.main,
    "engine": engine.main,
    "engines_queue": engines_queue.main,
    "throughput": throughput.main,
}

if __name__ == "__main__":
    for name in [arg for arg in sys.argv[1:] if not arg.startswith("--")] or list(BENCHMARKS):
        BENCHMARKS[name]()
