"""Linear layers computed weight first (``worker/linear.py``): each gives the output of
the layer it replaces, and a large model in float32 on a CPU, swapped as the worker loads
it, writes what ``generate`` writes with the layers it came with."""

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

from tests.worker.test_parity import _shape, assert_rows_match_generate, save_random_model
from worker.config import WorkerSettings
from worker.linear import WeightFirstLinear, use_weight_first_linear
from worker.models import LARGE_MODEL_PARAMETERS, ModelRegistry, ModelRole


def test_a_swapped_layer_gives_the_output_of_the_layer_it_replaces():
    torch.manual_seed(0)
    rows = torch.randn(3, 5, 200)
    for layer in (nn.Linear(200, 300), nn.Linear(200, 300, bias=False), Conv1D(300, 200)):
        swapped = WeightFirstLinear.of(layer)
        out = swapped(rows)
        assert out.shape == (3, 5, 300) and out.is_contiguous()
        torch.testing.assert_close(out, layer(rows))  # float32's tolerance
        torch.testing.assert_close(swapped(rows[0, 0]), layer(rows[0, 0]))  # a single row


def test_a_model_keeps_its_parameters_and_its_tied_output_layer(
    project_tokenizer: PreTrainedTokenizerBase,
):
    config = GPT2Config(**_shape(project_tokenizer), n_embd=64, n_layer=2, n_head=4)
    model = AutoModelForCausalLM.from_config(config).eval()
    parameters = model.num_parameters()
    assert use_weight_first_linear(model) == 2 * 4 + 1  # four Conv1D a block, the output
    assert isinstance(model.lm_head, WeightFirstLinear)
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    assert model.num_parameters() == parameters
    assert not any(isinstance(module, Conv1D) for module in model.modules())
    # bfloat16 (measured only in float32) and models off the CPU keep their layers.
    half = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    assert use_weight_first_linear(half) == 0 and isinstance(half.lm_head, nn.Linear)


def test_a_large_float32_model_runs_weight_first_and_writes_generate_s_tokens(
    tmp_path: Path, project_tokenizer: PreTrainedTokenizerBase
):
    config = GPT2Config(
        **_shape(project_tokenizer), n_embd=384, n_layer=6, n_head=6, n_positions=256
    )
    save_random_model("gpt2", tmp_path, project_tokenizer, config)
    settings = WorkerSettings(generator_model=str(tmp_path), device="cpu", dtype="float32")
    served = ModelRegistry(settings).get(ModelRole.GENERATOR)
    assert served.parameters >= LARGE_MODEL_PARAMETERS
    assert isinstance(served.transformers_model.lm_head, WeightFirstLinear)
    as_saved = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert_rows_match_generate(served, as_saved)


def test_a_small_model_keeps_its_layers(tiny_models_dir: Path):
    settings = WorkerSettings(model_cache_dir=tiny_models_dir.parent, device="cpu")
    generator = ModelRegistry(settings).get(ModelRole.GENERATOR)
    assert generator.parameters < LARGE_MODEL_PARAMETERS  # small layers: nothing to gain
    assert not any(isinstance(m, WeightFirstLinear) for m in generator.model.modules())
