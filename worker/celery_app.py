"""The worker's Celery app: ``celery -A worker.celery_app worker`` needs no other flag.

The pool is ``threads``: the models are loaded once per process and shared by every
thread (prefork would load one copy per child and break CUDA after fork).
"""

from contracts.celery_config import create_celery_app
from worker.config import get_settings

settings = get_settings()
app = create_celery_app("llm_tasks", settings)
app.conf.update(
    worker_pool="threads",
    worker_concurrency=settings.worker_concurrency,
    # JobTask stores STARTED itself, in the round trip that checks the step has not
    # already ended (worker.results).
    task_track_started=False,
    include=["worker.tasks", "worker.signals"],
)
# A Redis result backend writes each state in one round trip instead of two.
app.loader.override_backends = {
    scheme: "worker.results:ResultBackend" for scheme in ("redis", "rediss")
}
