"""Tiny random models and a learnable toy dataset, built in-process (no downloads), shared by tests and bench."""

from __future__ import annotations

from typing import Any

import torch
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    PreTrainedConfig,
    PreTrainedModel,
    RobertaConfig,
)

__all__ = ["tiny_config", "tiny_model", "toy_dataset"]


def tiny_config(family: str = "bert", **overrides) -> PreTrainedConfig:
    """A 2-layer, 4-head, 32-wide BERT (or RoBERTa) config with a 64-token vocabulary and 2 labels."""
    common: dict[str, Any] = dict(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        num_labels=2,
    )
    common.update(overrides)
    if family == "roberta":
        return RobertaConfig(pad_token_id=1, bos_token_id=0, eos_token_id=2, **common)
    return BertConfig(**common)


def tiny_model(family: str = "bert", seed: int = 0, **overrides) -> PreTrainedModel:
    """A randomly initialised sequence classifier of [`tiny_config`], seeded."""
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(tiny_config(family, **overrides))


def toy_dataset(n: int = 64, seq_len: int = 12, seed: int = 0, vocab: int = 64) -> Dataset:
    """A learnable task: label = whether token 5 appears in the sequence."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, vocab, (n, seq_len), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    pos = torch.randint(1, seq_len, (n,), generator=g)
    ids[labels == 1, pos[labels == 1]] = 5
    ids[:, 0] = 3
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": [[1] * seq_len] * n, "labels": labels.tolist()}
    )
