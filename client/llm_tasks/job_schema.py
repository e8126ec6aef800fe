"""A job as a client submits it (its options and each kind's body) and as the API shows it."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from llm_tasks.kinds import DEFAULT_PRIORITY, PRIORITY_LEVELS, JobKind
from llm_tasks.payloads import (
    Bound,
    ChatInput,
    DocumentInput,
    GenerateInput,
    JobOutput,
    LongTextInput,
    ReplyInput,
    SentimentInput,
    StoryInput,
    SummarizeInput,
    VariationsInput,
)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"

    @property
    def finished(self) -> bool:
        return self not in {JobStatus.QUEUED, JobStatus.RUNNING}


#: No countdown or expiry beyond this, whatever the settings (a year).
SECONDS_CEILING = 365 * 86400

WebhookEventName = Literal["start", "output", "completed"]


class JobOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    priority: int = Field(
        default=DEFAULT_PRIORITY,
        ge=0,
        le=PRIORITY_LEVELS - 1,
        description="0 (least urgent) to 9 (most urgent).",
        examples=[9],
    )
    delay_seconds: Annotated[int, Bound("delay_limit")] = Field(
        default=0,
        ge=0,
        le=SECONDS_CEILING,
        description="Start no sooner than this.",
        examples=[30],
    )
    cancel_after: Annotated[int | None, Bound("result_expires")] = Field(
        default=None,
        ge=1,
        le=SECONDS_CEILING,
        description="A deadline, in seconds from submission: a job not finished by then is "
        "canceled wherever it is (error type `deadline`) — a queued step never starts, a "
        "running generation stops at its next token.",
        examples=[120],
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="A declared model's name (GET /v1/models) for the kind's steps of its "
        "role; the others, and every step when unset, use their role's default.",
        examples=["generator"],
    )
    expires_in: Annotated[int | None, Bound("result_expires")] = Field(
        default=None,
        ge=1,
        le=SECONDS_CEILING,
        description="Give up if not started within this many seconds (at most as long as "
        "the job is kept).",
        examples=[600],
    )
    webhook: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        description="An http(s) URL that gets a signed POST of the job (Standard Webhooks) at "
        "each event of `webhook_events_filter`. Addresses on loopback, private or reserved "
        "networks are refused unless the deployment allows them; redirects are not followed.",
        examples=["https://example.com/hooks/llm-tasks"],
    )
    webhook_events_filter: list[WebhookEventName] | None = Field(
        default=None,
        min_length=1,
        max_length=3,
        description="Which events get a delivery: `start` (the job started), `output` "
        "(generated text, at most every 500 ms, the latest), `completed` (it ended, however). "
        "Default: `completed`.",
        examples=[["start", "completed"]],
    )

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - a bad port raises here
        except ValueError as error:
            raise ValueError(f"not a URL: {error}") from None
        if parts.scheme not in {"http", "https"}:
            raise ValueError(f"a webhook is an http:// or https:// URL, not {parts.scheme or url}")
        if not parts.hostname:
            raise ValueError("a webhook URL needs a host")
        return url

    @field_validator("webhook_events_filter")
    @classmethod
    def _events_need_a_webhook(
        cls, events: list[WebhookEventName] | None, info: ValidationInfo
    ) -> list[WebhookEventName] | None:
        if events is not None and info.data.get("webhook") is None:
            raise ValueError("webhook_events_filter needs a webhook")
        return events

    @property
    def webhook_events(self) -> list[str]:
        """The events with a delivery, in their order (none without a webhook)."""
        if self.webhook is None:
            return []
        chosen = set(self.webhook_events_filter or ["completed"])
        return [event for event in ("start", "output", "completed") if event in chosen]


class GenerateJob(JobOptions):
    """Generate text from a prompt (one task)."""

    kind: Literal["generate"]
    input: GenerateInput


class ChatJob(JobOptions):
    """Answer a conversation with the generator model's chat template (one task)."""

    kind: Literal["chat"]
    input: ChatInput


class LongTextJob(JobOptions):
    """Write a long text chunk by chunk, with progress per chunk (one task)."""

    kind: Literal["long_text"]
    input: LongTextInput


class SummarizeJob(JobOptions):
    """Summarize a text (one task)."""

    kind: Literal["summarize"]
    input: SummarizeInput


class SentimentJob(JobOptions):
    """Classify a text's sentiment (one task)."""

    kind: Literal["sentiment"]
    input: SentimentInput


class StoryJob(JobOptions):
    """Outline → expand → dialogue (a chain)."""

    kind: Literal["story"]
    input: StoryInput


class VariationsJob(JobOptions):
    """One generation per temperature, in parallel (a group)."""

    kind: Literal["variations"]
    input: VariationsInput


class DocumentJob(JobOptions):
    """Summary, sentiment and key points in parallel, then combined (a chord)."""

    kind: Literal["document"]
    input: DocumentInput


class ReplyJob(JobOptions):
    """Sentiment → three tone variants in parallel → ranked (a chain into a chord)."""

    kind: Literal["reply"]
    input: ReplyInput


JobCreate = Annotated[
    GenerateJob
    | ChatJob
    | LongTextJob
    | SummarizeJob
    | SentimentJob
    | StoryJob
    | VariationsJob
    | DocumentJob
    | ReplyJob,
    Field(discriminator="kind"),
]
JOB_MODELS: tuple[type[JobOptions], ...] = (
    GenerateJob,
    ChatJob,
    LongTextJob,
    SummarizeJob,
    SentimentJob,
    StoryJob,
    VariationsJob,
    DocumentJob,
    ReplyJob,
)


def job_examples() -> list[tuple[str, type[JobOptions], dict[str, Any]]]:
    """Each kind, its job model and the example input its schema documents."""
    examples = []
    for model in JOB_MODELS:
        kind = model.model_fields["kind"].annotation.__args__[0]  # type: ignore[union-attr]
        input_model = model.model_fields["input"].annotation
        extra = input_model.model_config.get("json_schema_extra") or {}  # type: ignore[union-attr]
        examples.append((kind, model, extra["examples"][0]))
    return examples


class Progress(BaseModel):
    current: int
    total: int
    message: str | None = None


class StepPublic(BaseModel):
    name: str
    status: JobStatus
    progress: Progress | None = None


class JobError(BaseModel):
    type: str
    message: str


class JobUrls(BaseModel):
    self: str
    events: str


class JobMetrics(BaseModel):
    """How long the job waited and ran, and how fast it wrote (null where it does not apply)."""

    queue_seconds: float | None = Field(
        default=None, description="From submission to the start of its first step."
    )
    run_seconds: float | None = Field(
        default=None, description="From the start of its first step to its end."
    )
    time_to_first_token_seconds: float | None = Field(
        default=None, description="From the start to the first generated token (generation)."
    )
    tokens: int | None = Field(default=None, description="Tokens generated (generation).")
    tokens_per_second: float | None = Field(
        default=None, description="Tokens over the run's seconds (generation)."
    )


class WebhookDelivery(BaseModel):
    """One event's delivery to the job's webhook (output: the latest one only)."""

    id: str = Field(description="Its `webhook-id` header: the same on every attempt.")
    event: WebhookEventName
    state: Literal["pending", "delivered", "failed", "superseded"] = Field(
        description="`failed`: given up after the retry window; `superseded`: an output "
        "delivery that a later one replaced before it got through."
    )
    attempts: int = 0
    status_code: int | None = Field(default=None, description="The last attempt's answer.")
    error: str | None = Field(default=None, description="Why the last attempt failed.")
    created_at: datetime
    delivered_at: datetime | None = None


class JobPublic(BaseModel):
    """A job as the API shows it."""

    id: str
    kind: JobKind
    status: JobStatus
    priority: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress | None = None
    steps: list[StepPublic]
    output: JobOutput | None = Field(default=None, description="The kind's output, once succeeded.")
    error: JobError | None = None
    attempts: int = Field(description="Tries of the current step so far (retries included).")
    metrics: JobMetrics = Field(default_factory=JobMetrics)
    idempotency_key: str | None = Field(
        default=None, description="The Idempotency-Key it was submitted with, if any."
    )
    webhook: str | None = None
    webhook_events_filter: list[WebhookEventName] | None = None
    webhook_deliveries: list[WebhookDelivery] = Field(
        default_factory=list, description="Each event's delivery so far (output: the latest)."
    )
    urls: JobUrls


class JobPage(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next (older) page; null at the end."
    )
