"""Stop strings: where a generation's text ends, and how much of it may be shown yet.

A stop string can span tokens, so it is looked for in the decoded text, not in token ids.
While a generation streams, the text shown is cut at the first stop string found, and a
tail that could still grow into one is held back: a streamed delta never carries text
that a stop later cuts.
"""

from collections.abc import Sequence


def cut_at_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first stop string in ``text`` begins, or None."""
    found = [at for stop in stops if (at := text.find(stop)) >= 0]
    return min(found) if found else None


def visible_text(text: str, stops: Sequence[str]) -> str:
    """The part of a growing ``text`` that no stop string can cut any more."""
    if not stops:
        return text
    at = cut_at_stop(text, stops)
    if at is not None:
        return text[:at]
    held = 0
    for stop in stops:
        # The longest end of the text that is the beginning of this stop string.
        for size in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:size]):
                held = size
                break
    return text[: len(text) - held]
