"""The Celery app for tools that watch the service without running tasks or models:
``celery -A contracts.celery_app flower``, ``celery -A contracts.celery_app inspect
active_queues`` (no torch needed). Configured from the same ``LLM_TASKS_*`` settings, so
they see the same broker, queues and priority steps as the API and the workers."""

from contracts.celery_config import create_celery_app
from contracts.settings import CommonSettings

app = create_celery_app("llm_tasks", CommonSettings())
