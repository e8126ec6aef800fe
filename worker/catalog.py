"""The models this worker holds, published for ``GET /v1/models`` (see
:mod:`contracts.models`): a card per model when it is loaded, a heartbeat while the
worker lives, and its name taken off when it stops."""

import logging
import os
import socket
import threading
import time
from functools import lru_cache

import redis

from contracts.models import HEARTBEAT_SECONDS, MODELS_KEY, PublishedModel, model_workers_key
from worker.config import get_settings

logger = logging.getLogger(__name__)


class Catalog:
    def __init__(self, client: redis.Redis, worker: str) -> None:
        self._client = client
        self.worker = worker
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._beating = threading.Event()

    def publish(self, card: PublishedModel) -> None:
        """The model is loaded here: its card, and this worker among its holders."""
        with self._lock:
            self._held.add(card.name)
        try:
            with self._client.pipeline(transaction=False) as pipe:
                pipe.hset(MODELS_KEY, card.name, card.model_dump_json())
                pipe.zadd(model_workers_key(card.name), {self.worker: time.time()})
                pipe.execute()
        except redis.RedisError as error:
            logger.warning("model %s: not published (%s); the heartbeat retries", card.name, error)
        if not self._beating.is_set():
            self._beating.set()
            threading.Thread(target=self._beat_forever, name="model-heartbeat", daemon=True).start()

    def withdraw(self) -> None:
        """The worker stops: it no longer serves its models."""
        with self._lock:
            held, self._held = list(self._held), set()
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for name in held:
                    pipe.zrem(model_workers_key(name), self.worker)
                pipe.execute()
        except redis.RedisError as error:
            logger.warning("models not withdrawn (%s): they expire by themselves", error)

    def _beat_forever(self) -> None:
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            with self._lock:
                held = list(self._held)
            try:
                with self._client.pipeline(transaction=False) as pipe:
                    for name in held:
                        pipe.zadd(model_workers_key(name), {self.worker: time.time()})
                    pipe.execute()
            except redis.RedisError as error:
                logger.warning("model heartbeat missed: %s", error)


@lru_cache
def catalog() -> Catalog:
    client = redis.Redis.from_url(
        get_settings().redis_url, socket_connect_timeout=5, socket_timeout=5
    )
    return Catalog(client, f"{socket.gethostname()}/{os.getpid()}")
