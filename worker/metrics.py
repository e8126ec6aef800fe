"""The worker's side of the metrics: increments buffered in memory, flushed to Redis.

Recording is a dictionary update under a lock, cheap enough for the inference thread;
a daemon thread adds what accumulated to the shared hash once per ``FLUSH_INTERVAL``
(see :mod:`contracts.metrics`). A flush that fails keeps its increments for the next.
"""

import logging
import threading
import time
from functools import lru_cache

import redis

from contracts.metrics import METRICS_KEY, Tally
from worker.config import get_settings

logger = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0

tally = Tally()


@lru_cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(
        get_settings().redis_url, socket_connect_timeout=5, socket_timeout=5
    )


def flush() -> None:
    pending = tally.drain()
    if not pending:
        return
    try:
        with _redis().pipeline(transaction=False) as pipe:
            for field, amount in pending.items():
                pipe.hincrbyfloat(METRICS_KEY, field, amount)
            pipe.execute()
    except redis.RedisError as error:
        logger.warning("metrics not flushed (kept for the next try): %s", error)
        tally.add(pending)


@lru_cache
def start_flushing() -> threading.Thread:
    """The flusher thread of this process, started once."""

    def loop() -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            flush()

    thread = threading.Thread(target=loop, name="metrics-flush", daemon=True)
    thread.start()
    return thread
