"""Conversations: messages rendered by the model's own chat template, and where a reply's
turn ends.

The template adds what the model was trained with (its BOS text, role markers, the
generation prompt), so its token ids are used as they are: no second BOS is added.
"""

from functools import lru_cache
from typing import Any

from worker.errors import InvalidInput

#: A content that no template writes by itself, to find what follows a message.
_MARK = "\u2063llm-tasks-mark\u2063"


def render(tokenizer: Any, messages: list[dict[str, str]], model: str) -> list[int]:
    """The prompt's token ids: ``messages`` in the template, and the reply's start."""
    if not tokenizer.chat_template:
        raise InvalidInput(f"model: {model} has no chat template; use the generate kind")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):  # a BatchEncoding
        ids = ids["input_ids"]
    return [int(token) for token in ids]


@lru_cache(maxsize=32)
def turn_end_ids(tokenizer: Any) -> frozenset[int]:
    """The special tokens the template writes right after a message (``<|eot_id|>``,
    ``<|im_end|>``, ``<end_of_turn>``…): a reply ends with its turn. Instruct models list
    them among their end-of-sequence ids too; this covers a model that does not."""
    if not tokenizer.chat_template:
        return frozenset()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": _MARK}], add_generation_prompt=False, tokenize=False
    )
    after = str(text).split(_MARK, 1)[-1]
    special = {
        token_id
        for token_id, token in tokenizer.added_tokens_decoder.items()
        if getattr(token, "special", False)
    }
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    return frozenset(token for token in ids[:1] if token in special)
