"""Task and queue names, fixed once for producer and consumer."""

from enum import StrEnum


class TaskName(StrEnum):
    """Registered Celery task names. The API sends signatures by these names only."""

    GENERATE = "llm_tasks.generate"


class QueueName(StrEnum):
    """Declared queues; a worker subscribes to the queues of the models it holds."""

    GENERATE = "generate"
    SUMMARIZE = "summarize"
    CLASSIFY = "classify"
    DEFAULT = "default"


class JobKind(StrEnum):
    """What a client can ask for at POST /v1/jobs."""

    GENERATE = "generate"


TASK_QUEUES: dict[TaskName, QueueName] = {
    TaskName.GENERATE: QueueName.GENERATE,
}
