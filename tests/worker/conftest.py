"""Fixtures of the worker's tests."""

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase


@pytest.fixture(scope="session")
def project_tokenizer(tiny_models_dir: Path) -> PreTrainedTokenizerBase:
    """The project's tokenizer (the tiny generator's), for random-weight models."""
    return AutoTokenizer.from_pretrained(tiny_models_dir / "generator")
