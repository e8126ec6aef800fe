"""Each job kind as a Celery canvas, and its steps' results as the job's output.

Step task ids are fixed at submission, so the registry knows every step before anything
runs; the API follows them without restoring group results or guessing. No step waits on
another: chains pass results along, chords gather parallel results into their body.
"""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery, chain, chord, group
from celery.canvas import Signature

from contracts.celery_config import broker_priority
from contracts.models import TASK_ROLES
from contracts.names import TASK_QUEUES, TaskName
from contracts.records import JobRecord, StepRecord
from contracts.settings import CommonSettings
from llm_tasks.kinds import JobKind
from llm_tasks.model_info import DeclaredModel, ModelRole
from llm_tasks.payloads import (
    DocumentOutput,
    GenerateOutput,
    JobOutput,
    LongTextOutput,
    ReplyOutput,
    SentimentOutput,
    StoryOutput,
    SummarizeOutput,
    Variation,
    VariationsInput,
    VariationsOutput,
)

REPLY_TONES = 3
KEY_POINTS_PROMPT = "Key points from: {text}\n"


@dataclass(frozen=True)
class Step:
    name: str
    task: TaskName
    #: Steps run stage after stage (a chain's links; a chord's header, then its body);
    #: the steps of one stage run side by side.
    stage: int = 0


def steps_of(kind: JobKind, job_input: dict[str, Any]) -> list[Step]:
    """The steps a job of ``kind`` runs, in the order the registry lists them."""
    match kind:
        case JobKind.STORY:
            return [
                Step("outline", TaskName.STORY_OUTLINE, 0),
                Step("expand", TaskName.STORY_EXPAND, 1),
                Step("dialogue", TaskName.STORY_DIALOGUE, 2),
            ]
        case JobKind.VARIATIONS:
            temperatures = VariationsInput.model_validate(job_input).temperatures
            return [Step(f"variation-{i + 1}", TaskName.GENERATE) for i in range(len(temperatures))]
        case JobKind.DOCUMENT:
            return [
                Step("summarize", TaskName.SUMMARIZE),
                Step("sentiment", TaskName.SENTIMENT),
                Step("key_points", TaskName.GENERATE),
                Step("combine", TaskName.DOCUMENT_COMBINE, 1),
            ]
        case JobKind.REPLY:
            variants = [
                Step(f"variant-{i + 1}", TaskName.REPLY_VARIANT, 1) for i in range(REPLY_TONES)
            ]
            return [
                Step("analyze", TaskName.REPLY_ANALYZE),
                *variants,
                Step("rank", TaskName.REPLY_RANK, 2),
            ]
        case _:
            return [Step(kind.value, _SINGLE_TASKS[kind])]


_SINGLE_TASKS = {
    JobKind.GENERATE: TaskName.GENERATE,
    JobKind.CHAT: TaskName.CHAT,
    JobKind.LONG_TEXT: TaskName.LONG_TEXT,
    JobKind.SUMMARIZE: TaskName.SUMMARIZE,
    JobKind.SENTIMENT: TaskName.SENTIMENT,
}


def new_steps(kind: JobKind, job_input: dict[str, Any]) -> list[StepRecord]:
    return [
        StepRecord(name=step.name, task_id=str(uuid.uuid4())) for step in steps_of(kind, job_input)
    ]


def roles_of(kind: JobKind, job_input: dict[str, Any]) -> set[ModelRole]:
    """The roles of the models a job of ``kind`` runs."""
    return {role for step in steps_of(kind, job_input) if (role := TASK_ROLES[step.task])}


def step_model(step: Step, settings: CommonSettings, model: str | None) -> DeclaredModel | None:
    """The model a step runs: the job's ``model`` if it has the step's role, else the
    role's default; None for an orchestration step."""
    role = TASK_ROLES[step.task]
    return settings.model_for(role, model) if role is not None else None


def queues_of(
    kind: JobKind, job_input: dict[str, Any], settings: CommonSettings, model: str | None = None
) -> list[str]:
    """The queues a job's steps go to, each once, in step order."""
    queues = []
    for step in steps_of(kind, job_input):
        served_by = step_model(step, settings, model)
        queues.append(served_by.queue if served_by else TASK_QUEUES[step.task].value)
    return list(dict.fromkeys(queues))


def canvas(celery: Celery, record: JobRecord, settings: CommonSettings) -> Signature:
    """The job as one Celery canvas, every signature carrying its frozen task id, on the
    queue of the model it runs."""
    steps = steps_of(record.kind, record.input)
    ids = [step.task_id for step in record.steps]
    priority = broker_priority(record.priority, celery.conf.broker_url)

    def sig(index: int, first: bool = False, **kwargs: Any) -> Signature:
        """The index-th step; ``first`` steps carry the job's start delay and expiry."""
        options: dict[str, Any] = {"task_id": ids[index], "priority": priority}
        if first:
            options |= {"eta": record.not_before, "expires": record.expires_at}
        served_by = step_model(steps[index], settings, record.model)
        if served_by is not None:
            options["queue"] = served_by.queue
            if served_by != settings.model_for(served_by.role):
                kwargs["model"] = served_by.name  # not the role's default: the task is told
        return celery.signature(steps[index].task.value, kwargs=kwargs, **options)

    job = record.input
    match record.kind:
        case JobKind.STORY:
            options = {k: job[k] for k in ("max_new_tokens", "temperature", "seed")}
            return chain(
                sig(0, True, topic=job["topic"], **options), sig(1, **options), sig(2, **options)
            )
        case JobKind.VARIATIONS:
            return group(
                sig(
                    i,
                    True,
                    prompt=job["prompt"],
                    temperature=temperature,
                    max_new_tokens=job["max_new_tokens"],
                    seed=job["seed"],
                )
                for i, temperature in enumerate(job["temperatures"])
            )
        case JobKind.DOCUMENT:
            tokens = job["max_new_tokens"]
            return chord(
                [
                    sig(0, True, text=job["text"], max_new_tokens=tokens),
                    sig(1, True, text=job["text"]),
                    sig(
                        2,
                        True,
                        prompt=KEY_POINTS_PROMPT.format(text=job["text"][:500]),
                        max_new_tokens=tokens,
                    ),
                ],
                sig(3),
            )
        case JobKind.REPLY:
            options = {k: job[k] for k in ("max_new_tokens", "temperature", "seed")}
            variants = group(sig(1 + i, tone_index=i, **options) for i in range(REPLY_TONES))
            return chain(
                sig(0, True, message=job["message"]), chord(variants, sig(1 + REPLY_TONES))
            )
        case _:
            return sig(0, True, **job)


def _single(model: type[JobOutput]) -> Callable[[dict[str, Any], list[Any]], JobOutput]:
    return lambda _input, results: model.model_validate(results[-1])


def _story(_input: dict[str, Any], results: list[Any]) -> JobOutput:
    outline, story, dialogue = (result["text"] for result in results)
    return StoryOutput(outline=outline, story=story, dialogue=dialogue)


def _variations(job_input: dict[str, Any], results: list[Any]) -> JobOutput:
    return VariationsOutput(
        variations=[
            Variation(temperature=temperature, text=GenerateOutput.model_validate(result).text)
            for temperature, result in zip(job_input["temperatures"], results, strict=True)
        ]
    )


_OUTPUTS: dict[JobKind, Callable[[dict[str, Any], list[Any]], JobOutput]] = {
    JobKind.GENERATE: _single(GenerateOutput),
    JobKind.CHAT: _single(GenerateOutput),
    JobKind.LONG_TEXT: _single(LongTextOutput),
    JobKind.SUMMARIZE: _single(SummarizeOutput),
    JobKind.SENTIMENT: _single(SentimentOutput),
    JobKind.STORY: _story,
    JobKind.VARIATIONS: _variations,
    JobKind.DOCUMENT: _single(DocumentOutput),
    JobKind.REPLY: _single(ReplyOutput),
}


def stages_of(kind: JobKind, job_input: dict[str, Any]) -> list[int]:
    """Each step's stage, in the order the registry lists the steps."""
    return [step.stage for step in steps_of(kind, job_input)]


def output_of(kind: JobKind, job_input: dict[str, Any], results: list[Any]) -> JobOutput:
    """The job's output from its steps' results (all steps succeeded)."""
    return _OUTPUTS[kind](job_input, results)


def progress_unit(kind: JobKind) -> str:
    return "variations" if kind is JobKind.VARIATIONS else "steps"
