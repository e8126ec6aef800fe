"""Stop strings in a growing text: where the text ends, and what may be shown yet."""

import pytest

from worker.stops import cut_at_stop, visible_text


def test_the_first_stop_string_in_the_text_cuts_it():
    assert cut_at_stop("Hello world. Bye.", ["Bye", "world"]) == 6
    assert cut_at_stop("Hello", ["Bye"]) is None
    assert cut_at_stop("Hello", []) is None


@pytest.mark.parametrize(
    ("text", "stops", "shown"),
    [
        ("Hello wor", ["world"], "Hello "),  # "wor" may grow into the stop: held back
        ("Hello w", ["world", "wx"], "Hello "),
        ("Hello world and more", ["world"], "Hello "),  # cut
        ("Hello there", ["world"], "Hello there"),  # nothing it could become
        ("Hello\n\n", ["\n\nUser:"], "Hello"),
        ("anything", [], "anything"),
    ],
)
def test_a_streamed_text_never_shows_what_a_stop_may_cut(text, stops, shown):
    assert visible_text(text, stops) == shown


def test_each_shown_text_is_a_prefix_of_the_final_one():
    final, stops = "The sea was calm. END of story", ["END"]
    end = final[: cut_at_stop(final, stops)]
    shown = [visible_text(final[:n], stops) for n in range(len(final) + 1)]
    assert all(end.startswith(part) for part in shown)
    assert shown[-1] == end
