"""Plain inference functions: no Celery here, so tests and benchmarks call them directly."""

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from contracts.schemas import GenerateOutput
from worker.errors import Canceled
from worker.models import LoadedModel

StopCheck = Callable[[], bool]
#: Told the tokens generated so far and their text, after each new token.
OnText = Callable[[int, str], None]


class _EachToken(StoppingCriteria):
    """Runs after every generated token: reports the text so far, and stops all rows once
    ``should_stop()`` says so (a cooperative cancel: nothing is killed)."""

    def __init__(
        self,
        *,
        offset: int,
        done: list[int],
        tokenizer: Any,
        should_stop: StopCheck | None,
        on_text: OnText | None,
    ) -> None:
        self._offset = offset  # where this round's new tokens begin in input_ids
        self._done = done  # tokens generated in earlier rounds
        self._tokenizer = tokenizer
        self._should_stop = should_stop
        self._on_text = on_text

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **_: object
    ) -> torch.BoolTensor:
        if self._on_text is not None:
            tokens = self._done + input_ids[0, self._offset :].tolist()
            self._on_text(len(tokens), stable_text(self._tokenizer, tokens))
        stop = bool(self._should_stop and self._should_stop())
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def stable_text(tokenizer: Any, tokens: list[int]) -> str:
    """Decoded text that later tokens only extend: a character still missing bytes (shown as
    U+FFFD) is held back, and no spaces are "cleaned up" around punctuation."""
    text: str = tokenizer.decode(
        tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    return text.rstrip("\ufffd")


def _generative(loaded: LoadedModel) -> Any:
    """The model, for ``generate``: transformers' own annotations of it do not type-check."""
    return loaded.model


@dataclass(frozen=True)
class Sentiment:
    label: str
    score: float


def generate_text(
    loaded: LoadedModel,
    *,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    should_stop: StopCheck | None = None,
    on_text: OnText | None = None,
) -> GenerateOutput:
    """Continue ``prompt``; when prompt and continuation outgrow the context window, the
    oldest tokens are dropped from what the model sees (never an error).

    ``on_text`` hears the text generated so far after every token (it throttles itself);
    ``should_stop`` is asked after every token: once it answers yes, the generation ends
    there and :class:`~worker.errors.Canceled` is raised.
    """
    tokenizer, model = loaded.tokenizer, _generative(loaded)
    prompt_ids: list[int] = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
    window = loaded.context_window
    eos_id = tokenizer.eos_token_id
    generated: list[int] = []
    finish_reason: Literal["length", "stop"] = "length"
    seen_prompt_tokens = 0
    with loaded.lock, torch.inference_mode():
        torch.manual_seed(seed if seed is not None else secrets.randbits(32))
        while len(generated) < max_new_tokens:
            remaining = max_new_tokens - len(generated)
            context = prompt_ids + generated
            step = remaining if len(context) + remaining <= window else min(remaining, window // 2)
            context = context[-(window - step) :] or [eos_id]
            if not generated:
                seen_prompt_tokens = len(context)
            input_ids = torch.tensor([context], device=loaded.device)
            each_token = _EachToken(
                offset=len(context),
                done=list(generated),
                tokenizer=tokenizer,
                should_stop=should_stop,
                on_text=on_text,
            )
            output = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=step,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=top_p if temperature > 0 else None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos_id,
                stopping_criteria=StoppingCriteriaList([each_token]),
            )
            new_tokens = output[0, input_ids.shape[1] :].tolist()
            if eos_id in new_tokens:
                generated += new_tokens[: new_tokens.index(eos_id)]
                finish_reason = "stop"
                break
            generated += new_tokens
            if should_stop is not None and should_stop():
                raise Canceled(f"canceled after {len(generated)} of {max_new_tokens} tokens")
    return GenerateOutput(
        text=tokenizer.decode(
            generated, skip_special_tokens=True, clean_up_tokenization_spaces=False
        ),
        tokens=len(generated),
        finish_reason=finish_reason,
        prompt_tokens=seen_prompt_tokens,
        model=loaded.name,
    )


def classify(loaded: LoadedModel, texts: list[str]) -> list[Sentiment]:
    """Label each text with the classifier's most likely class and its probability."""
    tokenizer, model = loaded.tokenizer, loaded.model
    encoded = tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=min(loaded.context_window, tokenizer.model_max_length),
        return_tensors="pt",
    ).to(loaded.device)
    with loaded.lock, torch.inference_mode():
        probabilities = model(**encoded).logits.float().softmax(dim=-1)
    scores, indices = probabilities.max(dim=-1)
    labels = cast(dict[int, str], model.config.id2label)
    return [
        Sentiment(label=labels[int(index)], score=float(score))
        for score, index in zip(scores, indices, strict=True)
    ]


def summarize(loaded: LoadedModel, *, text: str, min_new_tokens: int, max_new_tokens: int) -> str:
    """Summarize with the seq2seq model's own ``generate`` (transformers 5 has no pipeline)."""
    tokenizer, model = loaded.tokenizer, _generative(loaded)
    encoded = tokenizer(
        text,
        truncation=True,
        max_length=min(loaded.context_window, tokenizer.model_max_length),
        return_tensors="pt",
    ).to(loaded.device)
    with loaded.lock, torch.inference_mode():
        output = model.generate(
            **encoded,
            min_new_tokens=min_new_tokens,
            max_new_tokens=max_new_tokens,
            num_beams=1,
            do_sample=False,
        )
    return str(tokenizer.decode(output[0], skip_special_tokens=True)).strip()
