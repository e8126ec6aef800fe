"""``SLOW:`` rows: a decode pass that runs a row whose text says ``SLOW:`` takes 0.1 s, so
that a test can watch, cancel or overtake a running generation. Registered as a step hook
in the process that runs the generator (an inference process's initializer)."""

import time
from collections.abc import Sequence

from worker.decode_loop import DecodeRow, add_step_hook
from worker.models import ModelRole, get_registry

SECONDS_PER_SLOW_TOKEN = 0.1


def slow_rows() -> None:
    """A decode pass that runs a row whose text says ``SLOW:`` takes 0.1 s (in whichever
    process runs the decode loop)."""
    tokenizer = get_registry().card(ModelRole.GENERATOR).tokenizer
    marked: dict[tuple[int, int, int], bool] = {}  # a row decoded once, not every step

    def is_slow(row: DecodeRow) -> bool:
        key = (id(row), len(row.context), row.seed)
        if key not in marked:
            marked[key] = "SLOW:" in tokenizer.decode(row.context)
        return marked[key]

    def slow(rows: Sequence[DecodeRow]) -> None:
        if any(is_slow(row) for row in rows):
            time.sleep(SECONDS_PER_SLOW_TOKEN)

    add_step_hook(slow)
