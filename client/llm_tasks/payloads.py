"""Payloads and results of each job kind, validated on both sides of the queue.

Hard ceilings live in the field types; a deployment's settings narrow them further: a
field annotated with :class:`Bound` may not exceed the named setting (checked by the API
on submit and again by the worker on receipt, ``contracts.limits``).
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

PROMPT_CHARS_CEILING = 100_000
TEXT_CHARS_CEILING = 200_000
NEW_TOKENS_CEILING = 4096


@dataclass(frozen=True)
class Bound:
    """The field (its value, or its length for text and lists) may not exceed this setting."""

    setting: str


@dataclass(frozen=True)
class TotalChars:
    """The characters of all the field's messages together may not exceed this setting."""

    setting: str


Prompt = Annotated[
    str, Field(min_length=1, max_length=PROMPT_CHARS_CEILING), Bound("max_prompt_chars")
]
Text = Annotated[str, Field(min_length=1, max_length=TEXT_CHARS_CEILING), Bound("max_text_chars")]
NewTokens = Annotated[int, Field(ge=1, le=NEW_TOKENS_CEILING), Bound("max_new_tokens")]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
#: Up to four strings that end the text (the text ends before the first one found).
Stops = Annotated[list[Annotated[str, Field(min_length=1, max_length=100)]], Field(max_length=4)]

_TEMPERATURE_DOC = "Sampling temperature; 0 decodes greedily."
_SEED_DOC = "Fixes the sampling: the same seed gives the same text."
_STOP_DOC = (
    "Up to 4 strings that end the text: it ends before the first one generated "
    "(finish_reason `stop`), and no streamed delta ever shows what a stop cuts."
)


class Schema(BaseModel):
    # Strict: a boolean is not a number, "5" is not 5 (an integer still counts as a float).
    model_config = ConfigDict(extra="forbid", strict=True)


# --- inputs -----------------------------------------------------------------------------


class GenerateInput(Schema):
    """Continue a prompt with the generator model."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"prompt": "Once upon a time", "max_new_tokens": 40}]}
    )

    prompt: Prompt = Field(description="Text to continue.")
    max_new_tokens: NewTokens = Field(default=64, description="Tokens to generate at most.")
    temperature: Temperature = Field(default=0.8, description=_TEMPERATURE_DOC)
    top_p: TopP = Field(default=0.95, description="Nucleus sampling mass.")
    seed: Seed | None = Field(default=None, description=_SEED_DOC)
    stop: Stops = Field(default_factory=list, description=_STOP_DOC)


class ChatMessage(Schema):
    role: Literal["system", "user", "assistant"] = Field(description="Who says it.")
    content: Annotated[str, Field(max_length=PROMPT_CHARS_CEILING)] = Field(
        description="What is said."
    )


class ChatInput(Schema):
    """Answer a conversation with the generator model, in its own chat template."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "messages": [
                        {"role": "system", "content": "You answer in one short sentence."},
                        {"role": "user", "content": "Where does the fox live?"},
                    ],
                    "max_new_tokens": 40,
                }
            ]
        }
    )

    messages: Annotated[
        list[ChatMessage],
        Field(min_length=1, max_length=1000),
        Bound("max_chat_messages"),
        TotalChars("max_prompt_chars"),
    ] = Field(description="The conversation so far; the reply is the assistant's next turn.")
    max_new_tokens: NewTokens = Field(default=64, description="Tokens the reply has at most.")
    temperature: Temperature = Field(default=0.8, description=_TEMPERATURE_DOC)
    top_p: TopP = Field(default=0.95, description="Nucleus sampling mass.")
    seed: Seed | None = Field(default=None, description=_SEED_DOC)
    stop: Stops = Field(default_factory=list, description=_STOP_DOC)


class LongTextInput(Schema):
    """Write a long text in chunks, reporting progress after each one."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"prompt": "The crew woke", "chunks": 4, "chunk_tokens": 48}]
        }
    )

    prompt: Prompt = Field(description="Text to continue.")
    chunks: Annotated[int, Field(ge=1, le=64), Bound("max_chunks")] = Field(
        default=4, description="Chunks to write."
    )
    chunk_tokens: NewTokens = Field(default=48, description="Tokens per chunk.")
    temperature: Temperature = Field(default=0.8, description=_TEMPERATURE_DOC)
    top_p: TopP = Field(default=0.95, description="Nucleus sampling mass.")
    seed: Seed | None = Field(default=None, description=_SEED_DOC)
    stop: Stops = Field(
        default_factory=list, description=_STOP_DOC + " The chunks after it are not written."
    )


class SummarizeInput(Schema):
    """Summarize a text with the seq2seq model."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "text": "The city council approved a plan to build new bike lanes downtown. "
                    "Work will start in the spring and last about six months.",
                    "max_new_tokens": 40,
                }
            ]
        }
    )

    text: Text = Field(description="Text to summarize.")
    min_new_tokens: Annotated[int, Field(ge=0, le=NEW_TOKENS_CEILING)] = Field(
        default=5, description="Tokens the summary has at least."
    )
    max_new_tokens: NewTokens = Field(default=60, description="Tokens the summary has at most.")

    @model_validator(mode="after")
    def _min_within_max(self) -> Self:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError("min_new_tokens must not exceed max_new_tokens")
        return self


class SentimentInput(Schema):
    """Classify a text as POSITIVE or NEGATIVE."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "I love this product!"}]})

    text: Text = Field(description="Text to classify.")


class StoryStepOptions(Schema):
    """How each step of a story generates."""

    max_new_tokens: NewTokens = Field(default=48, description="Tokens each step writes.")
    temperature: Temperature = Field(default=0.8, description=_TEMPERATURE_DOC)
    seed: Seed | None = Field(default=None, description=_SEED_DOC)


class StoryInput(StoryStepOptions):
    """A chain of three generations: outline → expanded story → dialogue."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"topic": "space adventure"}]})

    topic: Annotated[str, Field(min_length=1, max_length=500)] = Field(description="What about.")


class VariationsInput(Schema):
    """The same prompt generated in parallel at several temperatures."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"prompt": "The weather today", "temperatures": [0.5, 0.9, 1.3]}]
        }
    )

    prompt: Prompt = Field(description="Text to continue.")
    temperatures: Annotated[
        list[Temperature], Field(min_length=1, max_length=16), Bound("max_variations")
    ] = Field(default=[0.5, 0.7, 0.9, 1.1, 1.3], description="One variation per temperature.")
    max_new_tokens: NewTokens = Field(default=40, description="Tokens each variation writes.")
    seed: Seed | None = Field(default=None, description=_SEED_DOC)


class DocumentInput(Schema):
    """A chord: summary, sentiment and key points in parallel, then combined."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "text": "The new library opened on Monday with thousands of books. "
                    "Families came early and stayed until the evening."
                }
            ]
        }
    )

    text: Text = Field(description="The document.")
    max_new_tokens: NewTokens = Field(
        default=48, description="Tokens the summary and the key points have at most."
    )


class ReplyInput(Schema):
    """Sentiment → three replies in tones chosen by it, in parallel → the best one."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"message": "I'm frustrated with this!"}]}
    )

    message: Prompt = Field(description="The message to answer.")
    max_new_tokens: NewTokens = Field(default=40, description="Tokens each reply has at most.")
    temperature: Temperature = Field(default=0.8, description=_TEMPERATURE_DOC)
    seed: Seed | None = Field(default=None, description=_SEED_DOC)


# --- outputs ----------------------------------------------------------------------------


class GenerateOutput(Schema):
    """What a generation produced: the continuation only, without the prompt."""

    text: str
    tokens: int = Field(description="Tokens generated.")
    finish_reason: Literal["length", "stop"] = Field(
        description="`length`: max_new_tokens reached; `stop`: the model ended the text."
    )
    prompt_tokens: int = Field(description="Prompt tokens the model saw (after trimming).")
    model: str


class LongTextOutput(Schema):
    text: str = Field(description="The prompt's continuation, all chunks together.")
    chunks_generated: int
    tokens: int
    finish_reason: Literal["length", "stop"] = Field(
        default="length", description="`stop`: a stop string or the end of sequence came first."
    )
    model: str


class SummarizeOutput(Schema):
    summary: str
    model: str


class SentimentOutput(Schema):
    label: str = Field(description="POSITIVE or NEGATIVE (the classifier's labels).")
    score: float = Field(description="The classifier's probability for the label.")
    model: str


class StoryOutput(Schema):
    outline: str
    story: str
    dialogue: str


class Variation(Schema):
    temperature: float
    text: str


class VariationsOutput(Schema):
    variations: list[Variation]


class DocumentOutput(Schema):
    summary: str
    sentiment: SentimentOutput
    key_points: str


class ReplyCandidate(Schema):
    tone: str
    text: str
    score: float = Field(description="How positive the reply reads (the classifier's score).")


class ReplyOutput(Schema):
    best: ReplyCandidate
    alternatives: list[ReplyCandidate]
    analysis: SentimentOutput = Field(description="The sentiment of the message.")


JobInput = (
    GenerateInput
    | LongTextInput
    | SummarizeInput
    | SentimentInput
    | StoryInput
    | VariationsInput
    | DocumentInput
    | ReplyInput
)
JobOutput = (
    GenerateOutput
    | LongTextOutput
    | SummarizeOutput
    | SentimentOutput
    | StoryOutput
    | VariationsOutput
    | DocumentOutput
    | ReplyOutput
)


def bounded_fields(model: type[BaseModel]) -> Iterator[tuple[str, Bound | TotalChars]]:
    """The model's fields that carry a :class:`Bound` or :class:`TotalChars`, with it."""
    for name, info in model.model_fields.items():
        for bound in (meta for meta in info.metadata if isinstance(meta, Bound | TotalChars)):
            yield name, bound
