"""``GET /v1/models``: the deployment's models, as the workers that hold them publish them."""

import time

from fastapi import APIRouter, Depends

from app.core.redis import AsyncRedis
from app.deps import ServicesDep, SettingsDep, enforce_rate_limit
from contracts.models import MODELS_KEY, WORKER_TTL, PublishedModel, model_workers_key
from contracts.settings import CommonSettings
from llm_tasks.model_info import ModelList, ModelPublic

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(enforce_rate_limit)])


async def published(redis: AsyncRedis, name: str) -> PublishedModel | None:
    """What a worker that loaded the model published of it, if one has."""
    raw = await redis.hget(MODELS_KEY, name)
    return PublishedModel.model_validate_json(raw) if raw else None


async def list_models(redis: AsyncRedis, settings: CommonSettings) -> list[ModelPublic]:
    declared = settings.declared_models()
    since = time.time() - WORKER_TTL
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(MODELS_KEY)
        for model in declared:
            pipe.zcount(model_workers_key(model.name), since, "+inf")
        cards, *counts = await pipe.execute()
    known = {name.decode(): PublishedModel.model_validate_json(raw) for name, raw in cards.items()}
    models = []
    for model, workers in zip(declared, counts, strict=True):
        card = known.get(model.name)
        # The published card counts only while it describes the model declared now.
        if card is not None and card.source != model.source:
            card = None
        models.append(
            ModelPublic(
                **model.model_dump() | {"engine": card.engine if card else model.engine},
                context_window=card.context_window if card else None,
                chat_template=card.chat_template if card else None,
                workers=int(workers),
            )
        )
    return models


@router.get("")
async def read_models(services: ServicesDep, settings: SettingsDep) -> ModelList:
    """Each model: name, role, source, queue, context window and chat template (once a
    worker has loaded it), and how many live workers hold it — 0 means its jobs wait."""
    return ModelList(data=await list_models(services.redis, settings))
