"""The models a deployment declares, and what the workers that hold them publish.

A worker that loads a model publishes its card (``MODELS_KEY``: name → JSON, with the
context window and whether the tokenizer has a chat template) and beats a heartbeat per
model (``model_workers_key``: a sorted set of worker names scored by their last beat), so
that the API can list the models and how many live workers serve each — without torch,
and without loading anything. A worker that stops takes its name off; one that dies
stops beating and drops out after ``WORKER_TTL`` seconds.
"""

from pydantic import Field

from contracts.names import QueueName, TaskName
from llm_tasks.model_info import DeclaredModel, ModelRole

MODELS_KEY = "llm-tasks:models"
#: Seconds between a worker's beats, and after which a silent worker no longer counts.
HEARTBEAT_SECONDS = 10
WORKER_TTL = 3 * HEARTBEAT_SECONDS


def model_workers_key(name: str) -> str:
    return f"llm-tasks:model-workers:{name}"


#: The queue each role's model consumes.
ROLE_QUEUES = {
    ModelRole.GENERATOR: QueueName.GENERATE,
    ModelRole.SUMMARIZER: QueueName.SUMMARIZE,
    ModelRole.CLASSIFIER: QueueName.CLASSIFY,
}


#: The role of the model each task runs (None: no model, an orchestration step).
TASK_ROLES: dict[TaskName, ModelRole | None] = {
    TaskName.GENERATE: ModelRole.GENERATOR,
    TaskName.CHAT: ModelRole.GENERATOR,
    TaskName.LONG_TEXT: ModelRole.GENERATOR,
    TaskName.SUMMARIZE: ModelRole.SUMMARIZER,
    TaskName.SENTIMENT: ModelRole.CLASSIFIER,
    TaskName.STORY_OUTLINE: ModelRole.GENERATOR,
    TaskName.STORY_EXPAND: ModelRole.GENERATOR,
    TaskName.STORY_DIALOGUE: ModelRole.GENERATOR,
    TaskName.DOCUMENT_COMBINE: None,
    TaskName.REPLY_ANALYZE: ModelRole.CLASSIFIER,
    TaskName.REPLY_VARIANT: ModelRole.GENERATOR,
    TaskName.REPLY_RANK: ModelRole.CLASSIFIER,
}


class PublishedModel(DeclaredModel):
    """What a worker that loaded the model knows of it."""

    context_window: int = Field(description="Prompt and generated tokens together.")
    chat_template: bool = Field(description="Its tokenizer has a chat template (`chat` jobs).")
