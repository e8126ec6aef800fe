"""Worker entry point for the tests: the real Celery app, plus faults on request.

Started as ``celery -A tests.support.fault_worker worker``. Markers in a generation's
prompt (anywhere, so that workflow steps built from a topic carry them too):

- ``FAULT: message`` — raise :class:`InjectedFault` (a permanent error) with that message;
- ``FAULT_AT:t:`` — the same, only in the generation whose temperature is t (one
  variation of a variations job);
- ``TRANSIENT:n:`` — raise :class:`~worker.errors.TransientError` on the first n attempts;
- ``OOM:n:`` — raise CUDA's out-of-memory error on the first n attempts;
- ``TRANSIENT_AFTER:n:k:`` — on the first n attempts, stop after k tokens (streamed as
  usual) and raise :class:`~worker.errors.TransientError`;
- ``SLOW:`` — take 0.1 s per token, so that a test can cancel a running generation (a
  decode-loop step hook, registered in the inference process through its initializer).

Production workers never import this module.
"""

import contextlib
import re
from typing import Any

import torch
from celery import current_task

from tests.support.slow_rows import slow_rows
from worker import engine_client
from worker.celery_app import app
from worker.config import get_settings
from worker.errors import Canceled, TransientError
from worker.inference_process import inference_process

_real_generate_text = engine_client.generate_text


class InjectedFault(RuntimeError):
    """Raised by the tests' worker on request."""


def _generate_text(loaded: engine_client.Served, *, prompt: str, **options: Any) -> Any:
    if (at := re.search(r"FAULT_AT:([\d.]+):", prompt)) and options["temperature"] == float(at[1]):
        raise InjectedFault(f"injected fault at temperature {at[1]}")
    if (fault := re.search(r"(?<!_)FAULT:\s*(.*)", prompt)) is not None:
        raise InjectedFault(fault.group(1).strip() or "injected fault")
    attempt = current_task.request.retries if current_task else 0
    if (transient := re.search(r"TRANSIENT:(\d+):", prompt)) and attempt < int(transient[1]):
        raise TransientError(f"injected transient fault, attempt {attempt + 1}")
    if (oom := re.search(r"OOM:(\d+):", prompt)) and attempt < int(oom[1]):
        raise torch.cuda.OutOfMemoryError(f"injected CUDA out of memory, attempt {attempt + 1}")
    if (after := re.search(r"TRANSIENT_AFTER:(\d+):(\d+):", prompt)) and attempt < int(after[1]):
        _fail_after(int(after[2]), loaded, prompt, options)
        raise TransientError(f"injected transient fault after {after[2]} tokens")
    return _real_generate_text(loaded, prompt=prompt, **options)


def _fail_after(tokens: int, loaded: engine_client.Served, prompt: str, options: Any) -> None:
    """Generate (and stream) ``tokens`` tokens, then stop."""
    seen = [0]
    should_stop = options.pop("should_stop", None) or (lambda: False)
    on_tokens = options.pop("on_tokens", None)

    def counting(generated: list[int]) -> None:
        seen[0] = len(generated)
        if on_tokens is not None:
            on_tokens(generated)

    def stop_there() -> bool:
        return seen[0] >= tokens or bool(should_stop())

    with contextlib.suppress(Canceled):
        _real_generate_text(
            loaded, prompt=prompt, should_stop=stop_there, on_tokens=counting, **options
        )


engine_client.generate_text = _generate_text  # type: ignore[assignment]
inference_process().initializer = slow_rows
if not get_settings().inference_process:
    slow_rows()

__all__ = ["app"]
