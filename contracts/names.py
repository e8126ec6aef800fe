"""Task and queue names, fixed once for producer and consumer."""

from enum import StrEnum


class TaskName(StrEnum):
    """Registered Celery task names. The API sends signatures by these names only."""

    GENERATE = "llm_tasks.generate"
    CHAT = "llm_tasks.chat"
    LONG_TEXT = "llm_tasks.long_text"
    SUMMARIZE = "llm_tasks.summarize"
    SENTIMENT = "llm_tasks.sentiment"
    STORY_OUTLINE = "llm_tasks.story.outline"
    STORY_EXPAND = "llm_tasks.story.expand"
    STORY_DIALOGUE = "llm_tasks.story.dialogue"
    DOCUMENT_COMBINE = "llm_tasks.document.combine"
    REPLY_ANALYZE = "llm_tasks.reply.analyze"
    REPLY_VARIANT = "llm_tasks.reply.variant"
    REPLY_RANK = "llm_tasks.reply.rank"
    #: Not a model's task: run by the webhooks worker (``app.webhooks.worker``).
    DELIVER_WEBHOOK = "llm_tasks.deliver_webhook"


class QueueName(StrEnum):
    """Declared queues; a worker subscribes to the queues of the models it holds."""

    GENERATE = "generate"
    SUMMARIZE = "summarize"
    CLASSIFY = "classify"
    DEFAULT = "default"
    #: Webhook deliveries, consumed by the webhooks worker alone (never a model worker).
    WEBHOOKS = "webhooks"


TASK_QUEUES: dict[TaskName, QueueName] = {
    TaskName.GENERATE: QueueName.GENERATE,
    TaskName.CHAT: QueueName.GENERATE,
    TaskName.LONG_TEXT: QueueName.GENERATE,
    TaskName.SUMMARIZE: QueueName.SUMMARIZE,
    TaskName.SENTIMENT: QueueName.CLASSIFY,
    TaskName.STORY_OUTLINE: QueueName.GENERATE,
    TaskName.STORY_EXPAND: QueueName.GENERATE,
    TaskName.STORY_DIALOGUE: QueueName.GENERATE,
    TaskName.DOCUMENT_COMBINE: QueueName.DEFAULT,
    TaskName.REPLY_ANALYZE: QueueName.CLASSIFY,
    TaskName.REPLY_VARIANT: QueueName.GENERATE,
    TaskName.REPLY_RANK: QueueName.CLASSIFY,
    TaskName.DELIVER_WEBHOOK: QueueName.WEBHOOKS,
}


#: Redis hash of the workers that refused to start (hostname: why, in one line), read by
#: /readyz; a worker's entry goes when it starts, and the hash expires after a day.
WORKER_REFUSALS_KEY = "llm-tasks:worker-refusals"
WORKER_REFUSALS_TTL = 24 * 3600
