"""Causal-LM tickets: local text cut into training blocks, and perplexity as the round metric.

A decoder finds a ticket like a classifier does: `LotteryTrainer(model=AutoModelForCausalLM..., ...)` with a
dataset of token blocks whose `labels` are the `input_ids` (the model shifts them). The default prunable set of a
decoder is its attention and MLP projections: `lm_head` lives outside the base model and embeddings are never
pruned by default, so tied input/output embeddings stay dense and tied.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from torch import nn
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..utils.parameters import is_peft_model

if TYPE_CHECKING:
    from datasets import Dataset

_CAUSAL_LM_CLASSES = frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def is_causal_lm(model: nn.Module) -> bool:
    """True for a model of an `AutoModelForCausalLM` class (also under peft)."""
    if is_peft_model(model) and hasattr(model, "get_base_model"):
        model = cast(Any, model).get_base_model()
    return type(model).__name__ in _CAUSAL_LM_CLASSES


def with_perplexity(metrics: Mapping[str, float]) -> dict[str, float]:
    """`metrics` plus `eval_perplexity = exp(eval_loss)` (the mean token cross-entropy), when there is a loss."""
    out = dict(metrics)
    if "eval_loss" in out:
        loss = float(out["eval_loss"])
        out["eval_perplexity"] = math.exp(loss) if loss < 700 else float("inf")
    return out


def load_text(path: str | os.PathLike, split: str = "train") -> Dataset:
    """Local text as a `Dataset` with a `text` column: a `.txt` file (one example per line), a folder of them, or a
    folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (then `split` is taken).

    Needs `datasets` (the `glue` extra).

    Nothing is downloaded: a path that does not exist raises `FileNotFoundError`.
    """
    from datasets import DatasetDict, load_dataset, load_from_disk  # an extra: the core runs without datasets

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No text at {path!r}: give a .txt file, a folder of .txt files or a datasets folder.")
    if os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, marker)) for marker in ("dataset_info.json", "dataset_dict.json")
    ):
        loaded = load_from_disk(path)
        return loaded[split] if isinstance(loaded, DatasetDict) else loaded
    files = (
        sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".txt"))
        if os.path.isdir(path)
        else [path]
    )
    if not files:
        raise FileNotFoundError(f"No .txt files in {path!r}.")
    return load_dataset("text", data_files=files, split="train")


def text_blocks(
    texts: Dataset | Sequence[str],
    tokenizer: Any,
    block_size: int,
    text_column: str = "text",
) -> Dataset:
    """Tokenize `texts`, join them and cut the stream into `block_size`-token training blocks (as `run_clm.py`).

    Each block has `input_ids`, `attention_mask` and `labels` (= `input_ids`); the tail shorter than a block is
    dropped. End-of-sequence tokens separate the texts when the tokenizer has one.
    """
    from datasets import Dataset  # an extra: the core runs without datasets

    if block_size < 2:
        raise ValueError(f"block_size must be >= 2 tokens, got {block_size}.")
    rows = list(texts[text_column]) if isinstance(texts, Dataset) else list(texts)
    eos = getattr(tokenizer, "eos_token_id", None)
    stream: list[int] = []
    for text in rows:
        if text and text.strip():
            stream.extend(tokenizer(text)["input_ids"])
            if eos is not None:
                stream.append(eos)
    n = len(stream) // block_size
    if n == 0:
        raise ValueError(f"The text holds {len(stream)} tokens, fewer than one block of {block_size}.")
    blocks = [stream[i * block_size : (i + 1) * block_size] for i in range(n)]
    return Dataset.from_dict(
        {"input_ids": blocks, "attention_mask": [[1] * block_size] * n, "labels": [list(b) for b in blocks]}
    )
