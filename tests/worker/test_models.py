import shutil
import threading
from pathlib import Path

import pytest
import torch

from worker.config import WorkerSettings
from worker.models import ModelRegistry, ModelRole, resolve_device


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
