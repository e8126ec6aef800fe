"""The runner of a generator in vLLM's engine (:mod:`worker.vllm_engine`): the rows of a
:class:`~worker.device_loop.MicroBatcher`'s run as vLLM requests, one engine step per pass
of the device loop."""

import itertools
from collections.abc import Iterator
from typing import Any, Literal

from contracts.metrics import TOKENS
from llm_tasks.kinds import PRIORITY_LEVELS
from worker.decode_loop import Decoded, DecodeRow, run_step_hooks
from worker.device_loop import Arrivals, Pending, call_safely
from worker.metrics import tally
from worker.models import LoadedModel
from worker.vllm_engine import VllmGenerator

_request_ids = itertools.count()


def vllm_priority(priority: int) -> int:
    """vLLM serves the lowest value first; a job's priority 9 is its most urgent."""
    return PRIORITY_LEVELS - 1 - priority


def sampling_params(row: DecodeRow) -> Any:
    """The row's ``SamplingParams``: its ends (the model's end of sequence vLLM adds
    itself), its sampling, and its stop strings (which need the text: detokenized only
    then)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    sampled = row.temperature > 0
    return SamplingParams(
        max_tokens=row.max_new_tokens,
        temperature=row.temperature if sampled else 0.0,
        top_p=row.top_p if sampled else 1.0,
        seed=row.seed if sampled else None,
        stop_token_ids=sorted(row.end_ids),
        stop=list(row.stop) or None,
        detokenize=bool(row.stop),
        output_kind=RequestOutputKind.DELTA,
    )


def vllm_steps(
    loaded: LoadedModel,
    batch: list[Pending[DecodeRow, Decoded]],
    arrivals: Arrivals | None,
    _: int,
) -> Iterator[None]:
    """The rows of ``batch`` and every arrival, one engine step per pass, until the engine
    has none left (a runner of :class:`~worker.device_loop.MicroBatcher`)."""
    generator = loaded.model
    assert isinstance(generator, VllmGenerator)
    engine = generator.engine
    renderer = engine.renderer
    labels = {"model": str(loaded.role)}
    live: dict[str, Pending[DecodeRow, Decoded]] = {}
    tokens: dict[str, list[int]] = {}

    def add(pendings: list[Pending[DecodeRow, Decoded]]) -> None:
        prompts = renderer.render_cmpl([{"prompt_token_ids": p.item.context} for p in pendings])
        for pending, prompt in zip(pendings, prompts, strict=True):
            request_id = str(next(_request_ids))
            live[request_id], tokens[request_id] = pending, []
            engine.add_request(
                request_id,
                prompt,
                sampling_params(pending.item),
                priority=vllm_priority(pending.item.priority),
            )

    def finish(request_id: str, reason: Literal["length", "stop", "canceled"]) -> None:
        pending, generated = live.pop(request_id), tokens.pop(request_id)
        tally.inc(TOKENS, labels, len(generated))
        pending.future.set_result(Decoded(generated, reason))

    add(batch)
    try:
        while live:
            run_step_hooks([pending.item for pending in live.values()])
            for output in engine.step():
                request_id = output.request_id
                if request_id not in live:
                    continue
                completion = output.outputs[0]
                generated = tokens[request_id]
                generated += completion.token_ids
                stopped_by_token = not isinstance(completion.stop_reason, str)
                if completion.finish_reason == "stop" and stopped_by_token and generated:
                    # The end of sequence or a turn's end that stopped the row: not text.
                    generated.pop()
                control = live[request_id].control
                if completion.token_ids and control.on_tokens is not None:
                    call_safely(control.on_tokens, generated)
                if output.finished:
                    finish(request_id, "stop" if completion.finish_reason == "stop" else "length")
            canceled = [
                request_id
                for request_id, pending in live.items()
                if pending.control.should_stop is not None and pending.control.should_stop()
            ]
            if canceled:
                engine.abort_request(canceled)
                for request_id in canceled:
                    finish(request_id, "canceled")
            if arrivals is not None and (waiting := arrivals.waiting()):
                arrived = arrivals.take(waiting)
                batch.extend(arrived)
                add(arrived)
            yield
    finally:
        if live:  # the run failed: its rows leave the engine with it
            engine.abort_request(list(live))
