"""Parity with transformers' own ``generate``, across architectures.

Random-weight models of real architectures (fixed seeds, tiny sizes, the project's
tokenizer) are saved as local folders and loaded as the worker loads a generator. Eight
greedy rows of different prompt lengths go through the decode loop: three start it, five
join it while it runs (continuous batching), rows leave at the end of text or at their
limit. Each row's tokens must equal ``model.generate(do_sample=False)`` run on it alone
(in float32; in bfloat16, rows may part from it only at a near tie).
"""

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen3Config,
)

from tests.support.arrivals import Scripted
from worker.config import WorkerSettings
from worker.decode_loop import Decoded, DecodeRow, decode_steps
from worker.device_loop import Pending
from worker.models import LoadedModel, ModelRegistry, ModelRole

PROMPTS = [
    "Hi",
    "Once upon a time",
    "The weather will be fine tomorrow, said the old fisherman to the harbor master",
    "A task queue lets a program run",
    "Seven",
    "Meanwhile, in the busy market square, a very long sentence went on and on and on",
    "The cat sat",
    "Why did the ship sail at night, and who was on board when it left the harbor?",
]
#: Each row's limit (some rows end at the end of text before theirs).
LIMITS = [24, 18, 30, 12, 26, 20, 16, 28]
#: The decode loop starts with the first rows; the others arrive at these steps.
STARTING_ROWS = 3
ARRIVAL_STEPS = [2, 4, 7, 10, 13]
SLIDING_WINDOW = 8  # smaller than most rows' text: the window is used


def _shape(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def _llama_like(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    return _shape(tokenizer) | {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 256,
    }


ARCHITECTURES: dict[str, Callable[[PreTrainedTokenizerBase], PretrainedConfig]] = {
    "gpt2": lambda t: GPT2Config(
        **_shape(t), n_embd=64, n_layer=3, n_head=4, n_positions=256, initializer_range=0.1
    ),
    "llama": lambda t: LlamaConfig(**_llama_like(t)),
    "qwen2": lambda t: Qwen2Config(**_llama_like(t)),
    "qwen3": lambda t: Qwen3Config(**_llama_like(t)),
    "mistral-sliding": lambda t: MistralConfig(**_llama_like(t), sliding_window=SLIDING_WINDOW),
    "gemma2": lambda t: Gemma2Config(
        **_llama_like(t), sliding_window=SLIDING_WINDOW, query_pre_attn_scalar=16
    ),
    "phi3": lambda t: Phi3Config(**_llama_like(t)),
}


def context(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    ids: list[int] = tokenizer(prompt)["input_ids"]
    return ids


def generate_alone(model: Any, prompt: list[int], limit: int, eos_id: int | None) -> list[int]:
    """``generate`` on one row, greedy, up to (not including) its end of text."""
    input_ids = torch.tensor([prompt])
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=limit,
            eos_token_id=eos_id,
            pad_token_id=0,
        )
    tokens: list[int] = output[0, len(prompt) :].tolist()
    return tokens[: tokens.index(eos_id)] if eos_id is not None and eos_id in tokens else tokens


def _end_of_text_for_some_rows(model: Any, tokenizer: PreTrainedTokenizerBase) -> int:
    """A token that the model's greedy text reaches in some rows within their limit, but
    not in all: made the end of text, it ends those rows early and not the others."""
    model.generation_config.eos_token_id = None
    seen: Counter[int] = Counter()
    for prompt, limit in zip(PROMPTS, LIMITS, strict=True):
        text = generate_alone(model, context(tokenizer, prompt), limit, eos_id=None)
        seen.update(set(text[1:]))  # not a row's first token: the row makes a step first
    candidates = [token for token, rows in seen.items() if rows < len(PROMPTS)]
    return max(candidates, key=lambda token: (seen[token], -token))


def save_random_model(
    name: str,
    folder: Path,
    tokenizer: PreTrainedTokenizerBase,
    config: PretrainedConfig | None = None,
) -> None:
    """A seeded random-weight model of ``name``'s architecture (or of ``config``), with an
    end-of-text token that some rows reach, saved with the tokenizer as a Hugging Face
    folder."""
    config = config or ARCHITECTURES[name](tokenizer)
    torch.manual_seed(sum(map(ord, name)))
    model = AutoModelForCausalLM.from_config(config).eval()
    eos_id = _end_of_text_for_some_rows(model, tokenizer)
    model.config.eos_token_id = model.generation_config.eos_token_id = eos_id
    model.save_pretrained(folder)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_id)
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def served(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    project_tokenizer: PreTrainedTokenizerBase,
) -> LoadedModel:
    """The architecture's model, loaded from its folder as the worker loads a generator."""
    folder = tmp_path_factory.mktemp(request.param)
    save_random_model(request.param, folder, project_tokenizer)
    settings = WorkerSettings(generator_model=str(folder), device="cpu")
    return ModelRegistry(settings).get(ModelRole.GENERATOR)


def decode_joining_rows(served: LoadedModel) -> tuple[list[DecodeRow], list[Decoded]]:
    """The greedy rows of ``PROMPTS`` through the decode loop: ``STARTING_ROWS`` start it,
    the others join it at ``ARRIVAL_STEPS``. Returns the rows and their results."""
    rows = [
        DecodeRow(context(served.tokenizer, prompt), limit, temperature=0.0, top_p=1.0, seed=0)
        for prompt, limit in zip(PROMPTS, LIMITS, strict=True)
    ]
    batch = [Pending(row) for row in rows[:STARTING_ROWS]]
    arrivals = Scripted(list(zip(ARRIVAL_STEPS, rows[STARTING_ROWS:], strict=True)))
    with torch.inference_mode():
        for _ in decode_steps(served, batch, arrivals, capacity=len(rows)):
            arrivals.step += 1
    assert not arrivals.pending and len(batch) == len(rows)  # every row joined the loop
    results = {id(pending.item): pending.future.result() for pending in batch}
    return rows, [results[id(row)] for row in rows]


def assert_rows_match_generate(served: LoadedModel, reference: Any) -> None:
    """Each of :func:`decode_joining_rows`'s rows writes what ``reference.generate`` writes
    for it alone, and some rows end at the end of text, others at their limit."""
    rows, decoded = decode_joining_rows(served)
    eos_id = served.tokenizer.eos_token_id
    expected = [generate_alone(reference, row.context, row.max_new_tokens, eos_id) for row in rows]
    for i, (ours, theirs) in enumerate(zip(decoded, expected, strict=True)):
        assert ours.tokens == theirs, f"row {i} ({len(rows[i].context)} prompt tokens)"
    reasons = Counter(result.finish_reason for result in decoded)
    assert reasons["stop"] >= 1 and reasons["length"] >= 1, reasons  # both ways of ending


def test_rows_joining_and_leaving_the_decode_loop_match_generate(served: LoadedModel):
    assert_rows_match_generate(served, served.model)


#: Where a bfloat16 row may part from ``generate``'s: only at a near tie, its two tokens'
#: logits (as ``generate`` scores them) within this much of each other — what bfloat16's
#: 8-bit mantissa does to a batched pass's sums.
BFLOAT16_TIE = 0.1


@pytest.mark.parametrize("name", ["gpt2", "llama", "mistral-sliding", "gemma2"])
def test_in_bfloat16_the_decode_loop_parts_from_generate_only_at_near_ties(
    name: str, tmp_path: Path, project_tokenizer: PreTrainedTokenizerBase
):
    save_random_model(name, tmp_path, project_tokenizer)
    settings = WorkerSettings(generator_model=str(tmp_path), device="cpu", dtype="bfloat16")
    served = ModelRegistry(settings).get(ModelRole.GENERATOR)
    assert next(served.model.parameters()).dtype is torch.bfloat16
    rows, decoded = decode_joining_rows(served)
    exact = 0
    for row, result in zip(rows, decoded, strict=True):
        ours = result.tokens
        input_ids = torch.tensor([row.context])
        with torch.inference_mode():
            output = served.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                max_new_tokens=row.max_new_tokens,
                pad_token_id=0,
                output_scores=True,
                return_dict_in_generate=True,
            )
        theirs = output.sequences[0, len(row.context) :].tolist()
        # Up to the shorter: the one that ended at its end of text ended there.
        pairs = zip(ours, theirs, strict=False)
        parted = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
        if parted is None:
            exact += 1
            continue
        scores = output.scores[parted][0].float()
        gap = (scores[theirs[parted]] - scores[ours[parted]]).item()
        assert 0 <= gap <= BFLOAT16_TIE, f"parted at token {parted} by {gap:.3f}"
    assert exact >= len(rows) // 2, f"only {exact} of {len(rows)} rows equal generate's"
