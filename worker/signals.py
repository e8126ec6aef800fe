"""Worker-side bookkeeping: stamp the job registry when a step starts; preload models."""

import logging
import threading
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import redis
from celery import Task
from celery.signals import task_prerun, worker_ready

from contracts.jobs import JOB_ID_HEADER, STARTED_AT_FIELD, attempts_field, job_key
from worker.config import get_settings
from worker.models import ModelRole, get_registry

logger = logging.getLogger(__name__)

# Touch the record only while it exists, so a stray start never resurrects an expired job.
_STAMP_START = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
  return redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
end
return 0
"""


@lru_cache
def _redis() -> "redis.Redis[bytes]":
    return redis.Redis.from_url(
        get_settings().redis_url, socket_connect_timeout=5, socket_timeout=5
    )


@task_prerun.connect
def stamp_job_start(task_id: str, task: Task, **_: Any) -> None:
    job_id = getattr(task.request, JOB_ID_HEADER, None)
    if not job_id:
        return  # a plain Celery call (e.g. from a Python shell), not a job of the API
    try:
        _redis().eval(
            _STAMP_START,
            1,
            job_key(job_id),
            STARTED_AT_FIELD,
            datetime.now(UTC).isoformat(),
            attempts_field(task_id),
        )
    except redis.RedisError:
        logger.exception("could not stamp the start of job %s", job_id)


@worker_ready.connect
def preload_models(**_: Any) -> None:
    if not get_settings().preload_models:
        return

    def load_all() -> None:
        registry = get_registry()
        for role in ModelRole:
            try:
                registry.get(role)
            except Exception:
                logger.exception("could not preload the %s model", role)

    threading.Thread(target=load_all, name="preload-models", daemon=True).start()
