"""Worker lifecycle hooks: refuse models that cannot serve their role, preload the models
of the queues the worker consumes when it starts, count expired jobs, and log in the
configured format."""

import logging
import os
import signal
import socket
import threading
from typing import Any

from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    task_postrun,
    task_revoked,
    worker_init,
    worker_ready,
    worker_shutdown,
)

from contracts.logs import formatter
from contracts.names import WORKER_REFUSALS_KEY, WORKER_REFUSALS_TTL, QueueName
from llm_tasks.model_info import DeclaredModel
from worker.catalog import catalog
from worker.config import get_settings
from worker.engine_client import served
from worker.inference_process import inference_process
from worker.job_task import end_job, registry_redis, release_lease
from worker.metrics import start_flushing
from worker.models import ModelRefused, get_registry

#: The exit status of a worker that refuses its configuration (sysexits' EX_CONFIG).
EX_CONFIG = 78

logger = logging.getLogger(__name__)


@after_setup_logger.connect
@after_setup_task_logger.connect
def use_log_format(logger: logging.Logger, **_: Any) -> None:
    # Celery's own line for every message received and every task succeeded: JobTask
    # logs each step's start and end, with the job id and the duration. Failures and
    # retries still come from both.
    for per_task in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(per_task).setLevel(logging.WARNING)
    log_format = get_settings().log_format
    if log_format == "json":
        for handler in logger.handlers:
            handler.setFormatter(formatter(log_format))


@task_revoked.connect
def count_expired(request: Any = None, expired: bool = False, **_: Any) -> None:
    """A message that outlived its ``expires`` never runs: its job ends expired."""
    if expired and request is not None:
        logger.info("task %s expired before it ran", request.id, extra={"task_id": request.id})
        end_job(request.id, "expired")


@task_postrun.connect
def give_lease_up(sender: Any = None, **_: Any) -> None:
    """The step's final state (or its retry) is stored: its lease goes."""
    if sender is not None:
        release_lease(sender)


@worker_shutdown.connect
def withdraw_models(**_: Any) -> None:
    """The worker stops: /v1/models no longer counts it."""
    catalog().withdraw()


@worker_ready.connect
def flush_metrics(**_: Any) -> None:
    start_flushing()


#: The declared models whose queues this worker consumes (set when it starts).
SERVED: list[DeclaredModel] = []


def served_models(sender: Any) -> list[DeclaredModel]:
    """The models of the queues the worker consumes (``-Q``; every queue by default)."""
    declared = get_settings().declared_models()
    app = getattr(sender, "app", None)
    if app is None:
        return declared
    consumed = set(app.amqp.queues.consume_from)
    return [model for model in declared if model.queue in consumed]


@worker_init.connect
def refuse_wrong_models(sender: Any = None, **_: Any) -> None:
    """Before it consumes anything, the worker reads the configuration of each model it
    serves (those of the queues it consumes): one that cannot serve its role (a seq2seq
    model as the generator, a classifier without its head, a folder that does not exist)
    stops it, with one line saying why."""
    hostname = getattr(sender, "hostname", None) or socket.gethostname()
    app = getattr(sender, "app", None)
    if app is not None:
        # Webhook deliveries are the webhooks worker's (app.webhooks.worker): a model
        # worker never takes one, whatever -Q says.
        app.amqp.queues.deselect([QueueName.WEBHOOKS.value])
    SERVED[:] = served_models(sender)
    inference_process().models = [model.name for model in SERVED]
    try:
        for model in SERVED:
            get_registry().check(model.name)
    except ModelRefused as refused:
        refuse(hostname, refused)
        raise SystemExit(EX_CONFIG) from None
    with registry_redis() as client:
        client.hdel(WORKER_REFUSALS_KEY, hostname)


def refuse(hostname: str, refused: ModelRefused) -> None:
    """Log the refusal and leave it where /readyz reads it."""
    logger.critical("worker %s refuses to start: %s", hostname, refused)
    try:
        with registry_redis() as client:
            client.hset(WORKER_REFUSALS_KEY, hostname, str(refused))
            client.expire(WORKER_REFUSALS_KEY, WORKER_REFUSALS_TTL)
    except Exception as error:
        logger.warning("the refusal could not be recorded in Redis: %s", error)


@worker_ready.connect
def preload_models(sender: Any = None, **_: Any) -> None:
    """Load the models now (in the inference process, unless it is turned off), not when
    the first task needs them."""
    if not get_settings().preload_models:
        return

    def load_all() -> None:
        try:
            if get_settings().inference_process and SERVED:
                inference_process().start()
            for model in SERVED:
                served(model.role, model.name)
        except ModelRefused as refused:
            # A checkpoint that lacks weights: found only once it loads.
            refuse(getattr(sender, "hostname", None) or socket.gethostname(), refused)
            os.kill(os.getpid(), signal.SIGTERM)  # the worker's warm shutdown
        except Exception:
            logger.exception("could not preload the models")

    threading.Thread(target=load_all, name="preload-models", daemon=True).start()
