"""Chat: messages rendered by the model's own template and continued by the decode loop
give what transformers' ``generate`` gives on ``apply_chat_template``; a reply ends with
its turn; a model without a template is refused with a clear error."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from worker import chat, engine_client
from worker.config import WorkerSettings
from worker.engine_client import Served
from worker.errors import InvalidInput
from worker.models import ModelRegistry, ModelRole

#: A Llama-3-like template: the BOS text first, each turn closed by a special token.
TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
MESSAGES = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "Where does the fox live?"},
    {"role": "assistant", "content": "By the river."},
    {"role": "user", "content": "And the baker?"},
]


@pytest.fixture(scope="module")
def llama_folder(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models_dir / "generator")
    tokenizer.chat_template = TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
    )
    torch.manual_seed(17)
    folder = tmp_path_factory.mktemp("llama-chat")
    AutoModelForCausalLM.from_config(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_chat_reply_equals_generate_on_the_rendered_template(llama_folder: Path):
    loaded = ModelRegistry(WorkerSettings(generator_model=str(llama_folder))).get(
        ModelRole.GENERATOR
    )
    tokenizer = loaded.tokenizer
    ids = chat.render(tokenizer, MESSAGES, loaded.name)
    assert ids == list(
        tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)["input_ids"]
    )
    assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id  # one BOS
    end_of_turn = tokenizer.convert_tokens_to_ids("<|end|>")
    assert chat.turn_end_ids(tokenizer) == {end_of_turn}

    ours = engine_client.generate_text(
        Served.here(loaded), prompt="", prompt_ids=ids, end_ids=chat.turn_end_ids(tokenizer),
        max_new_tokens=24, temperature=0.0, top_p=1.0, seed=0,
    )  # fmt: skip
    with torch.inference_mode():
        output = loaded.model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=24,
            eos_token_id=[tokenizer.eos_token_id, end_of_turn],
            pad_token_id=tokenizer.pad_token_id,
        )
    expected = output[0, len(ids) :].tolist()
    ended = [i for i, t in enumerate(expected) if t in {tokenizer.eos_token_id, end_of_turn}]
    expected = expected[: ended[0]] if ended else expected
    assert ours.tokens == len(expected)
    assert ours.text == tokenizer.decode(expected, skip_special_tokens=True)
    assert ours.prompt_tokens == len(ids)


def test_a_model_without_a_chat_template_is_refused(tiny_models_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models_dir / "classifier")
    assert not tokenizer.chat_template
    with pytest.raises(InvalidInput, match="no chat template"):
        chat.render(tokenizer, MESSAGES, "classifier")
    assert chat.turn_end_ids(tokenizer) == frozenset()
