"""The compiled decode step (``LLM_TASKS_COMPILE``): compiled at load for every number of
rows, and token for token what ``generate`` writes.

The compiled model runs in a process of its own, as in a worker: Inductor imports a part
of torch that warns of its own deprecated TorchScript use on import (pytorch/pytorch#189914),
which this suite's ``error`` filter would turn into a failure of torch's import."""

import subprocess
import sys
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase

from tests.worker.test_parity import save_random_model
from worker.config import WorkerSettings
from worker.models import ModelRegistry, ModelRole


def test_the_compiled_step_writes_what_generate_writes_without_compiling_again(
    tmp_path: Path, project_tokenizer: PreTrainedTokenizerBase
):
    # Llama's architecture (rotary positions, grouped keys and values), as most instruct
    # models have it; compiling takes half a minute, so one architecture here.
    save_random_model("llama", tmp_path, project_tokenizer)
    checked = subprocess.run(
        [sys.executable, "-m", "tests.support.compiled_rows", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert "Warning" not in checked.stderr, checked.stderr[-3000:]  # none a user would see


def test_the_step_is_not_compiled_by_default(
    tmp_path: Path, project_tokenizer: PreTrainedTokenizerBase
):
    save_random_model("gpt2", tmp_path, project_tokenizer)
    settings = WorkerSettings(generator_model=str(tmp_path), device="cpu")
    assert ModelRegistry(settings).get(ModelRole.GENERATOR).compiled_step is None


def test_without_a_cpp_compiler_the_step_runs_eager_and_says_why(
    tmp_path: Path,
    project_tokenizer: PreTrainedTokenizerBase,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
):
    save_random_model("gpt2", tmp_path, project_tokenizer)
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    settings = WorkerSettings(generator_model=str(tmp_path), device="cpu", compile=True)
    assert ModelRegistry(settings).get(ModelRole.GENERATOR).compiled_step is None
    assert "no C++ compiler" in caplog.text and "decode step eager" in caplog.text
