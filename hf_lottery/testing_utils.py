"""Tiny random models and a learnable toy dataset, built in-process (no downloads), shared by tests and bench."""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    PreTrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    RobertaConfig,
)

__all__ = ["tiny_causal_lm", "tiny_config", "tiny_model", "toy_dataset", "toy_text_dataset"]


def tiny_config(family: str = "bert", **overrides) -> PreTrainedConfig:
    """A 2-layer, 4-head, 32-wide BERT (or RoBERTa) config with a 64-token vocabulary and 2 labels."""
    common = dict(
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


def tiny_causal_lm(family: str = "llama", seed: int = 0, **overrides) -> PreTrainedModel:
    """A randomly initialised 2-layer causal LM (`"llama"`, `"qwen2"` with grouped-query attention, or `"gpt2"`,
    whose `lm_head` is tied to the token embeddings) over the 64-token vocabulary of [`toy_text_dataset`]."""
    torch.manual_seed(seed)
    if family == "gpt2":
        values = dict(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
        values.update(overrides)
        config: PreTrainedConfig = GPT2Config(**values)
    else:
        values = dict(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        values.update(overrides)
        config = Qwen2Config(**values) if family == "qwen2" else LlamaConfig(**values)
    return AutoModelForCausalLM.from_config(config)


def toy_text_dataset(n: int = 32, seq_len: int = 16, seed: int = 0, vocab: int = 64) -> Dataset:
    """Learnable token blocks for causal LMs: each block counts up from a random start (mod `vocab`, above 2)."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(3, vocab, (n, 1), generator=g)
    ids = (start + torch.arange(seq_len)) % (vocab - 3) + 3
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": [[1] * seq_len] * n, "labels": ids.tolist()}
    )
