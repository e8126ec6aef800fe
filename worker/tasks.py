"""Celery tasks: thin wrappers that validate, call :mod:`worker.engine_client` and serialize.

Every task is a plain Celery task, usable from a Python shell (``generate_text.delay(
"Hello world")``; the README's "Celery tasks from Python" shows more).

Workflow steps receive the previous step's result as their first argument (chains) or
the list of the parallel steps' results (chord bodies): no task waits on another.
"""

from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from contracts.limits import limit_violations
from contracts.names import TaskName
from llm_tasks.payloads import (
    ChatInput,
    DocumentOutput,
    GenerateInput,
    GenerateOutput,
    LongTextInput,
    LongTextOutput,
    ReplyCandidate,
    ReplyOutput,
    SentimentInput,
    SentimentOutput,
    StoryInput,
    StoryStepOptions,
    SummarizeInput,
    SummarizeOutput,
)
from worker import chat, engine_client
from worker.celery_app import app
from worker.config import get_settings
from worker.errors import InvalidInput
from worker.job_task import JobTask
from worker.models import ModelRole
from worker.stops import cut_at_stop, visible_text

T = TypeVar("T", bound=BaseModel)

STORY_PROMPTS = {
    TaskName.STORY_OUTLINE: "Create a story outline about: {text}\n",
    TaskName.STORY_EXPAND: "Expand this outline into a full story: {text}\n",
    TaskName.STORY_DIALOGUE: "Add dialogue to this story: {text}\n",
}

#: The guide's tones: an unhappy message gets care, a happy one enthusiasm.
REPLY_TONES: dict[str, list[tuple[str, str]]] = {
    "NEGATIVE": [
        ("empathetic", "Respond empathetically to: {message}\n"),
        ("helpful", "Provide helpful solution for: {message}\n"),
        ("acknowledging", "Acknowledge concern in: {message}\n"),
    ],
    "POSITIVE": [
        ("positive", "Respond positively to: {message}\n"),
        ("expanding", "Expand on: {message}\n"),
        ("detailed", "Add details to: {message}\n"),
    ],
}


def _validated(schema: type[T], payload: dict[str, Any]) -> T:
    try:
        value = schema.model_validate(payload)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in error.errors()
        )
        raise InvalidInput(problems) from None
    violations = limit_violations(value, get_settings())
    if violations:
        raise InvalidInput("; ".join(f"{v.field}: {v.message}" for v in violations))
    return value


OnText = Callable[[int, str], None]


def _generate(
    task: JobTask, prompt: str, on_text: OnText | None = None, **options: Any
) -> GenerateOutput:
    """Generate, streaming the text into the task's progress and stopping if canceled."""
    total = options["max_new_tokens"]
    stops = options.get("stop") or []
    loaded = engine_client.served(ModelRole.GENERATOR, options.pop("model", None))
    progress = task.progress  # called back from the batcher's thread: bind it here

    def report_tokens(count: int, text: str) -> None:
        progress.report(current=count, total=total, message=f"{count} of {total} tokens", text=text)

    report = on_text or report_tokens

    def stream(tokens: list[int]) -> None:
        if tokens:
            progress.first_token()
        if progress.due():  # decode only when an update will be published
            text = engine_client.stable_text(loaded.tokenizer, tokens)
            report(len(tokens), visible_text(text, stops))

    return engine_client.generate_text(
        loaded,
        prompt=prompt,
        priority=task.priority,
        should_stop=task.should_stop,
        on_tokens=stream,
        **options,
    )


def _sentiment(text: str, model: str | None = None) -> SentimentOutput:
    loaded = engine_client.served(ModelRole.CLASSIFIER, model)
    [result] = engine_client.classify(loaded, [text])
    return SentimentOutput(label=result.label, score=result.score, model=loaded.name)


@app.task(name=TaskName.GENERATE, bind=True, base=JobTask)
def generate_text(
    self: JobTask,
    prompt: str,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int | None = None,
    stop: list[str] | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Continue ``prompt``; returns ``{text, tokens, finish_reason, prompt_tokens, model}``.
    ``model``: a declared generator's name (the role's default if None)."""
    payload = _validated(
        GenerateInput,
        {
            "prompt": prompt,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
            "stop": stop or [],
        },
    )
    return _generate(self, model=model, **payload.model_dump()).model_dump()


@app.task(name=TaskName.CHAT, bind=True, base=JobTask)
def chat_reply(
    self: JobTask,
    messages: list[dict[str, str]],
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int | None = None,
    stop: list[str] | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """The assistant's next turn in ``messages`` (rendered by the model's chat template);
    returns ``{text, tokens, finish_reason, prompt_tokens, model}``."""
    payload = _validated(
        ChatInput,
        {
            "messages": messages,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
            "stop": stop or [],
        },
    )
    loaded = engine_client.served(ModelRole.GENERATOR, model)
    conversation = [message.model_dump() for message in payload.messages]
    options = payload.model_dump(exclude={"messages"})
    return _generate(
        self,
        "",
        model=model,
        prompt_ids=chat.render(loaded.tokenizer, conversation, loaded.name),
        end_ids=chat.turn_end_ids(loaded.tokenizer),
        **options,
    ).model_dump()


@app.task(name=TaskName.LONG_TEXT, bind=True, base=JobTask)
def generate_long_text(
    self: JobTask, prompt: str, model: str | None = None, **options: Any
) -> dict[str, Any]:
    """Write ``chunks`` chunks one after the other, reporting progress after each."""
    payload = _validated(LongTextInput, {"prompt": prompt, **options})
    text, tokens, model = "", 0, ""
    finish_reason: Literal["length", "stop"] = "length"
    progress = self.progress
    chunks_written = 0
    for index in range(payload.chunks):

        def report_chunk(
            _tokens: int, chunk_text: str, index: int = index, written: str = text
        ) -> None:
            progress.report(
                current=index,
                total=payload.chunks,
                message=f"writing chunk {index + 1} of {payload.chunks}",
                text=visible_text(written + chunk_text, payload.stop),
            )

        chunk = _generate(
            self,
            payload.prompt + text,
            on_text=report_chunk,
            max_new_tokens=payload.chunk_tokens,
            temperature=payload.temperature,
            top_p=payload.top_p,
            seed=None if payload.seed is None else payload.seed + index,
            stop=payload.stop,
            model=model,
        )
        text, tokens, model = text + chunk.text, tokens + chunk.tokens, chunk.model
        chunks_written = index + 1
        # A stop string ends the whole text (also one that spans two chunks).
        if (at := cut_at_stop(text, payload.stop)) is not None or (
            chunk.finish_reason == "stop" and payload.stop
        ):
            text, finish_reason = text[:at], "stop"
            break
        progress.report(
            current=index + 1,
            total=payload.chunks,
            message=f"chunk {index + 1} of {payload.chunks} written",
            text=visible_text(text, payload.stop),
            force=True,
        )
    return LongTextOutput(
        text=text,
        chunks_generated=chunks_written,
        tokens=tokens,
        finish_reason=finish_reason,
        model=model,
    ).model_dump()


@app.task(name=TaskName.SUMMARIZE, bind=True, base=JobTask)
def summarize_text(
    self: JobTask,
    text: str,
    min_new_tokens: int = 5,
    max_new_tokens: int = 60,
    model: str | None = None,
) -> dict[str, Any]:
    """Summarize ``text`` with the seq2seq model."""
    payload = _validated(
        SummarizeInput,
        {"text": text, "min_new_tokens": min_new_tokens, "max_new_tokens": max_new_tokens},
    )
    loaded = engine_client.served(ModelRole.SUMMARIZER, model)
    summary = engine_client.summarize(loaded, **payload.model_dump())
    return SummarizeOutput(summary=summary, model=loaded.name).model_dump()


@app.task(name=TaskName.SENTIMENT, bind=True, base=JobTask)
def analyze_sentiment(self: JobTask, text: str, model: str | None = None) -> dict[str, Any]:
    """Classify ``text``: ``{label, score, model}``."""
    payload = _validated(SentimentInput, {"text": text})
    return _sentiment(payload.text, model).model_dump()


def _story_step(
    task: JobTask, name: TaskName, text: str, options: dict[str, Any]
) -> dict[str, Any]:
    model = options.pop("model", None)
    payload = _validated(StoryStepOptions, options)
    output = _generate(
        task,
        STORY_PROMPTS[name].format(text=text),
        max_new_tokens=payload.max_new_tokens,
        temperature=payload.temperature,
        top_p=0.95,
        seed=payload.seed,
        model=model,
    )
    return {"text": output.text}


@app.task(name=TaskName.STORY_OUTLINE, bind=True, base=JobTask)
def story_outline(self: JobTask, topic: str, **options: Any) -> dict[str, Any]:
    """Step 1 of a story: an outline about ``topic``."""
    _validated(StoryInput, {"topic": topic, **{k: v for k, v in options.items() if k != "model"}})
    return _story_step(self, TaskName.STORY_OUTLINE, topic, options)


@app.task(name=TaskName.STORY_EXPAND, bind=True, base=JobTask)
def story_expand(self: JobTask, outline: dict[str, Any], **options: Any) -> dict[str, Any]:
    """Step 2 of a story: expand the outline (the previous step's result)."""
    return _story_step(self, TaskName.STORY_EXPAND, outline["text"], options)


@app.task(name=TaskName.STORY_DIALOGUE, bind=True, base=JobTask)
def story_dialogue(self: JobTask, story: dict[str, Any], **options: Any) -> dict[str, Any]:
    """Step 3 of a story: add dialogue to the story (the previous step's result)."""
    return _story_step(self, TaskName.STORY_DIALOGUE, story["text"], options)


@app.task(name=TaskName.DOCUMENT_COMBINE, bind=True, base=JobTask)
def combine_document(self: JobTask, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Chord body: ``[summary, sentiment, key points]`` → one document analysis."""
    summary, sentiment, key_points = results
    return DocumentOutput(
        summary=SummarizeOutput.model_validate(summary).summary,
        sentiment=SentimentOutput.model_validate(sentiment),
        key_points=GenerateOutput.model_validate(key_points).text,
    ).model_dump()


@app.task(name=TaskName.REPLY_ANALYZE, bind=True, base=JobTask)
def analyze_message(self: JobTask, message: str, model: str | None = None) -> dict[str, Any]:
    """Step 1 of a reply: the message's sentiment, which picks the tones of step 2."""
    payload = _validated(SentimentInput, {"text": message})
    return {"message": payload.text, "sentiment": _sentiment(payload.text, model).model_dump()}


@app.task(name=TaskName.REPLY_VARIANT, bind=True, base=JobTask)
def reply_variant(
    self: JobTask,
    analysis: dict[str, Any],
    tone_index: int,
    max_new_tokens: int = 40,
    temperature: float = 0.8,
    seed: int | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Step 2 of a reply (three in parallel): one reply in the tone the sentiment calls for."""
    label = SentimentOutput.model_validate(analysis["sentiment"]).label
    tone, template = REPLY_TONES.get(label, REPLY_TONES["POSITIVE"])[tone_index]
    output = _generate(
        self,
        template.format(message=analysis["message"]),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=0.95,
        seed=None if seed is None else seed + tone_index,
        model=model,
    )
    return {"tone": tone, "text": output.text, "analysis": analysis["sentiment"]}


@app.task(name=TaskName.REPLY_RANK, bind=True, base=JobTask)
def rank_replies(
    self: JobTask, variants: list[dict[str, Any]], model: str | None = None
) -> dict[str, Any]:
    """Step 3 of a reply (chord body): rank the replies by how positive they read."""
    loaded = engine_client.served(ModelRole.CLASSIFIER, model)
    verdicts = engine_client.classify(loaded, [variant["text"] or "-" for variant in variants])
    candidates = [
        ReplyCandidate(
            tone=variant["tone"],
            text=variant["text"],
            score=verdict.score if verdict.label == "POSITIVE" else 1 - verdict.score,
        )
        for variant, verdict in zip(variants, verdicts, strict=True)
    ]
    ranked = sorted(candidates, key=lambda c: (c.score, len(c.text)), reverse=True)
    return ReplyOutput(
        best=ranked[0],
        alternatives=ranked[1:],
        analysis=SentimentOutput.model_validate(variants[0]["analysis"]),
    ).model_dump()
