"""What a submitted job must pass before it is accepted, as dependencies of ``POST
/v1/jobs``: the deployment's limits, a model it has, a webhook it may call, a chat
template, and room in the queues (backpressure).

Every problem with the input is reported at once (a 422 naming each field). The queues'
room is checked only when the job is about to be accepted: a retried submit whose first
attempt was accepted gets its job back even while the queues are full.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Body, Depends

from app import workflows
from app.core.config import ApiSettings
from app.core.redis import AsyncRedis
from app.deps import ServicesDep, SettingsDep
from app.errors import InputRejected, QueueFull
from app.routes.models import published
from app.webhooks.targets import TargetRefused, resolve
from contracts.limits import limit_violations
from llm_tasks.job_schema import JobCreate, job_examples
from llm_tasks.kinds import DEFAULT_PRIORITY, JobKind
from llm_tasks.model_info import ModelRole

WHY_LIMITED = {
    "delay_seconds": " (a job must not expire before it starts: half of how long it is kept)",
    "expires_in": " (the job itself is kept no longer)",
}

#: One example per kind, from each input schema's own example (shown by /docs and the page).
EXAMPLES: dict[str, Any] = {
    kind: {
        "summary": (model.__doc__ or kind).strip(),
        "value": {"kind": kind, "input": example, "priority": DEFAULT_PRIORITY},
    }
    for kind, model, example in job_examples()
}


async def admit(
    job: Annotated[JobCreate, Body(openapi_examples=EXAMPLES)],
    settings: SettingsDep,
    services: ServicesDep,
) -> JobCreate:
    """The job, if this deployment can run it as asked; else a 422 naming every problem."""
    errors = [
        {"loc": ["body", "input", v.field], "msg": v.message, "type": "limit"}
        for v in limit_violations(job.input, settings)
    ] + [
        {"loc": ["body", v.field], "msg": v.message + WHY_LIMITED.get(v.field, ""), "type": "limit"}
        for v in limit_violations(job, settings)
    ]
    errors += _model_problems(job, settings)
    if job.webhook is not None:
        errors += await _webhook_problems(job.webhook, settings)
    if job.kind == "chat" and not errors:
        errors += await _chat_template_missing(services.redis, settings, job.model)
    if errors:
        raise InputRejected(errors)
    return job


AdmittedJob = Annotated[JobCreate, Depends(admit)]

#: Raises :class:`~app.errors.QueueFull` unless every queue the job goes to has room.
RoomCheck = Callable[[JobCreate], Awaitable[None]]


async def queue_room(settings: SettingsDep, services: ServicesDep) -> RoomCheck:
    """The backpressure check, to run when a job is about to be accepted."""

    async def check(job: JobCreate) -> None:
        if not settings.max_queue_depth:
            return
        kind, job_input = JobKind(job.kind), job.input.model_dump()
        for queue in workflows.queues_of(kind, job_input, settings, job.model):
            depth = await services.depths.depth(queue)
            if depth >= settings.max_queue_depth:
                raise QueueFull(queue, depth, settings.max_queue_depth)

    return check


QueueRoomDep = Annotated[RoomCheck, Depends(queue_room)]


async def _webhook_problems(url: str, settings: ApiSettings) -> list[dict[str, Any]]:
    """The webhook can be signed, and goes where this deployment lets it."""
    problem = None
    if settings.webhook_key is None:
        problem = "this deployment sends no webhooks (LLM_TASKS_WEBHOOK_SECRET is not set)"
    else:
        try:
            await resolve(url, allow_private=settings.webhook_allow_private_networks)
        except TargetRefused as refused:
            problem = str(refused)
    return [{"loc": ["body", "webhook"], "msg": problem, "type": "webhook"}] if problem else []


def _model_problems(job: Any, settings: ApiSettings) -> list[dict[str, Any]]:
    """``model`` names a declared model of a role the kind runs."""
    if job.model is None:
        return []
    declared = {model.name: model for model in settings.declared_models()}
    named = declared.get(job.model)
    if named is None:
        message = f"no model named {job.model!r}; the models are {', '.join(sorted(declared))}"
        return [{"loc": ["body", "model"], "msg": message, "type": "unknown_model"}]
    roles = workflows.roles_of(JobKind(job.kind), job.input.model_dump())
    if named.role not in roles:
        message = (
            f"{job.model} is a {named.role} model; a {job.kind} job runs "
            + " and ".join(sorted(roles))
            + " models"
        )
        return [{"loc": ["body", "model"], "msg": message, "type": "model_role"}]
    return []


async def _chat_template_missing(
    redis: AsyncRedis, settings: ApiSettings, model: str | None
) -> list[dict[str, Any]]:
    """A chat needs the generator's chat template: known once a worker published the model
    (before that, the job is accepted and a worker fails it if the template is missing)."""
    generator = settings.model_for(ModelRole.GENERATOR, model)
    card = await published(redis, generator.name)
    if card is None or card.source != generator.source or card.chat_template:
        return []
    message = (
        f"the generator model {generator.name} ({generator.source}) has no chat template; "
        "send a prompt with the generate kind"
    )
    field = "model" if model else "kind"
    return [{"loc": ["body", field], "msg": message, "type": "chat_template"}]
