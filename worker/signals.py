"""Worker lifecycle hooks: preload the models when the worker starts."""

import logging
import threading
from typing import Any

from celery.signals import worker_ready

from worker.config import get_settings
from worker.models import ModelRole, get_registry

logger = logging.getLogger(__name__)


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
