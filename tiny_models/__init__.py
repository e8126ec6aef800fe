"""The ``tiny`` models: three small transformers built offline, deterministically.

They let the whole service run without a model hub: a byte-level BPE tokenizer trained
on the corpus in ``tiny_models/assets``, then briefly trained models of the real families
(GPT-2, DistilBERT, BART), each saved as an ordinary Hugging Face folder so that they
go through the same loading code as real model ids. Built once into the model cache;
when two processes build at once, a file lock makes one wait for the other.

``python -m tiny_models`` builds them and prints the time each took.
"""

import hashlib
import json
import logging
import random
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import torch
import transformers
from filelock import FileLock
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

logger = logging.getLogger(__name__)

#: Bump when the recipe changes: the cache folder name depends on it.
RECIPE_VERSION = 6
SEED = 1234
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>", "<|end|>"]
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
#: Ends a turn of a conversation (in the chat template), as <|eot_id|> does for Llama 3.
END_OF_TURN, END_OF_TURN_ID = "<|end|>", 5
VOCAB_SIZE = 2048
GENERATOR_CONTEXT = 256
LABELS = {0: "NEGATIVE", 1: "POSITIVE"}
ROLES = ("generator", "classifier", "summarizer")
COMPLETE_MARKER = "COMPLETE.json"


def _asset(name: str) -> str:
    return (
        resources.files("tiny_models").joinpath("assets").joinpath(name).read_text(encoding="utf-8")
    )


def corpus_paragraphs() -> list[str]:
    return [line.strip() for line in _asset("corpus.txt").splitlines() if line.strip()]


#: The generator's chat template: each turn a line "role: content" ended by <|end|>, and
#: the reply starts after "assistant:". The model learns it from the chat lines it is
#: trained on, so that a `chat` job's answer reads like one and ends with its turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def chat_lines() -> list[str]:
    """Short conversations, rendered as the chat template renders them."""
    lines = []
    for line in _asset("chat.txt").splitlines():
        if line.strip():
            turns = line.split("\t")
            lines.append("".join(f"{turn.strip()}{END_OF_TURN}\n" for turn in turns))
    return lines


def sentiment_examples() -> list[tuple[str, int]]:
    rows = [line.split("\t", 1) for line in _asset("sentiment.tsv").splitlines()[1:] if line]
    label_ids = {label: index for index, label in LABELS.items()}
    return [(text, label_ids[label]) for label, text in rows]


def recipe_digest() -> str:
    """Names the build: the recipe, the shipped data and the transformers major version."""
    digest = hashlib.sha256()
    digest.update(f"{RECIPE_VERSION}:{transformers.__version__.split('.')[0]}".encode())
    digest.update(_asset("corpus.txt").encode())
    digest.update(_asset("chat.txt").encode())
    digest.update(_asset("sentiment.tsv").encode())
    return digest.hexdigest()[:12]


def tiny_models_dir(cache_dir: Path) -> Path:
    return cache_dir / f"tiny-{recipe_digest()}"


def ensure_tiny_models(cache_dir: Path) -> Path:
    """The folder holding ``generator/``, ``classifier/`` and ``summarizer/``; built if missing."""
    target = tiny_models_dir(cache_dir)
    if (target / COMPLETE_MARKER).exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / COMPLETE_MARKER).exists():
            return target
        logger.info("building the tiny models into %s (once per machine)", target)
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_dir))
        try:
            timings = build_tiny_models(staging)
            (staging / COMPLETE_MARKER).write_text(json.dumps({"build_seconds": timings}))
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tiny_models(out: Path) -> dict[str, float]:
    """Train the tokenizer and the three models into ``out``; returns seconds per part."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    tokenizer = _train_tokenizer()
    timings["tokenizer"] = time.perf_counter() - started
    for role, build in (
        ("generator", _build_generator),
        ("classifier", _build_classifier),
        ("summarizer", _build_summarizer),
    ):
        started = time.perf_counter()
        _seed_everything()
        model, role_tokenizer = build(tokenizer)
        model.save_pretrained(out / role)
        role_tokenizer.save_pretrained(out / role)
        timings[role] = time.perf_counter() - started
        logger.info("tiny %s built in %.1fs", role, timings[role])
    return timings


def _seed_everything() -> None:
    random.seed(SEED)
    torch.manual_seed(SEED)


def _train_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = corpus_paragraphs() + chat_lines() + [text for text, _ in sentiment_examples()]
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def _wrap(tokenizer: Tokenizer, *, with_special: bool, max_length: int) -> PreTrainedTokenizerFast:
    copy = Tokenizer.from_str(tokenizer.to_str())
    if with_special:
        copy.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", BOS_ID), ("</s>", EOS_ID)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=copy,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=max_length,
    )


def _train(
    model: PreTrainedModel, batches: Iterator[dict[str, torch.Tensor]], steps: int, lr: float
) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(steps):
        loss = model(**next(batches)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    model.eval()


def _build_generator(tokenizer: Tokenizer) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    wrapped = _wrap(tokenizer, with_special=False, max_length=GENERATOR_CONTEXT)
    config = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=GENERATOR_CONTEXT,
        n_embd=128,
        n_layer=2,
        n_head=4,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    model = GPT2LMHeadModel(config)
    # Paragraphs run on without an end-of-text token, so that the model writes on until
    # max_new_tokens rather than stopping after a sentence.
    # The chat lines (each turn ended by <|end|>, as the chat template writes them) are mixed
    # in between the paragraphs, so that an answer after "assistant:" ends its turn.
    paragraphs, chats = corpus_paragraphs(), chat_lines()
    random.Random(SEED).shuffle(chats)
    mixed = [text for pair in zip(paragraphs, chats, strict=False) for text in pair]
    mixed += paragraphs[len(chats) :]
    data = torch.tensor(wrapped("\n".join(mixed))["input_ids"])
    block, batch = 64, 16

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        while True:
            starts = torch.randint(0, len(data) - block, (batch,))
            ids = torch.stack([data[s : s + block] for s in starts])
            yield {"input_ids": ids, "labels": ids}

    _train(model, batches(), steps=200, lr=3e-3)
    model.generation_config.pad_token_id = PAD_ID
    wrapped.chat_template = CHAT_TEMPLATE
    return model, wrapped


def _build_classifier(tokenizer: Tokenizer) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    wrapped = _wrap(tokenizer, with_special=True, max_length=128)
    config = DistilBertConfig(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=128,
        n_layers=2,
        n_heads=2,
        dim=64,
        hidden_dim=128,
        pad_token_id=PAD_ID,
        id2label=LABELS,
        label2id={label: index for index, label in LABELS.items()},
    )
    model = DistilBertForSequenceClassification(config)
    examples = sentiment_examples()

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        while True:
            picked = random.sample(examples, 32)
            encoded = wrapped([text for text, _ in picked], padding=True, return_tensors="pt")
            yield {
                "input_ids": encoded["input_ids"],
                "attention_mask": encoded["attention_mask"],
                "labels": torch.tensor([label for _, label in picked]),
            }

    _train(model, batches(), steps=300, lr=3e-3)
    return model, wrapped


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _build_summarizer(tokenizer: Tokenizer) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A BART trained on lead-sentence summaries (the opening sentence of a text).

    Briefly: it writes fluent corpus sentences rather than faithful summaries."""
    wrapped = _wrap(tokenizer, with_special=True, max_length=512)
    config = BartConfig(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=512,
        d_model=128,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=256,
        decoder_ffn_dim=256,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=EOS_ID,
    )
    model = BartForConditionalGeneration(config)
    sentences = [
        sentence for paragraph in corpus_paragraphs() for sentence in _SENTENCE_END.split(paragraph)
    ]

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        while True:
            texts = [random.sample(sentences, random.randint(2, 3)) for _ in range(8)]
            source = wrapped([" ".join(text) for text in texts], padding=True, return_tensors="pt")
            target = wrapped([text[0] for text in texts], padding=True, return_tensors="pt")
            labels = target["input_ids"].masked_fill(target["attention_mask"] == 0, -100)
            yield {
                "input_ids": source["input_ids"],
                "attention_mask": source["attention_mask"],
                "labels": labels,
            }

    _train(model, batches(), steps=300, lr=3e-3)
    model.generation_config.forced_bos_token_id = BOS_ID
    model.generation_config.forced_eos_token_id = EOS_ID
    model.generation_config.max_new_tokens = 48
    model.generation_config.no_repeat_ngram_size = 3
    model.generation_config.repetition_penalty = 1.3
    return model, wrapped
