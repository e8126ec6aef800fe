"""The models of a deployment as ``GET /v1/models`` lists them."""

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field


class ModelRole(StrEnum):
    GENERATOR = "generator"
    CLASSIFIER = "classifier"
    SUMMARIZER = "summarizer"


class DeclaredModel(BaseModel):
    """A model of the deployment, as the settings declare it (``LLM_TASKS_MODELS``, or
    ``LLM_TASKS_<ROLE>_MODEL``)."""

    name: str = Field(description="How jobs and the listing call it.")
    role: ModelRole
    source: str = Field(description="`tiny`, a Hugging Face id or a local folder.")
    queue: str = Field(description="The queue its jobs go to; a worker consumes it to serve it.")
    engine: Literal["builtin", "vllm"] | None = Field(
        default=None,
        description="What runs a generator: `builtin` (the worker's decode loop) or `vllm`; "
        "null: the worker's LLM_TASKS_ENGINE (listed once a worker has loaded it).",
    )


class ModelPublic(DeclaredModel):
    """A model as `GET /v1/models` lists it."""

    context_window: int | None = Field(description="Null until a worker has loaded it.")
    chat_template: bool | None = Field(description="Null until a worker has loaded it.")
    workers: int = Field(description="Live workers that hold it (0: its jobs wait).")


class ModelList(BaseModel):
    data: list[ModelPublic]
