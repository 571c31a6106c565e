"""Tiny random models and a learnable toy dataset, built in-process (no downloads), shared by tests and bench."""

from __future__ import annotations

from typing import Any

import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    MobileNetV2Config,
    MobileNetV2ForImageClassification,
    PreTrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    ResNetConfig,
    ResNetForImageClassification,
    RobertaConfig,
)

__all__ = [
    "tiny_causal_lm",
    "tiny_config",
    "tiny_conv_model",
    "tiny_model",
    "toy_dataset",
    "toy_image_dataset",
    "toy_text_dataset",
]


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


def tiny_conv_model(family: str = "resnet", seed: int = 0, **overrides) -> PreTrainedModel:
    """A randomly initialised image classifier for 1-channel 12x12 images and 3 labels, seeded.

    `family` is `"resnet"` (two stages of basic blocks, 8 and 16 channels; `layer_type="bottleneck"` for bottleneck
    blocks) or `"mobilenet_v2"` (depth multiplier 0.25).
    """
    torch.manual_seed(seed)
    if family == "resnet":
        common: dict[str, Any] = dict(
            num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3
        )
        common.update(overrides)
        return ResNetForImageClassification(ResNetConfig(**common))
    if family == "mobilenet_v2":
        common = dict(num_channels=1, image_size=12, depth_multiplier=0.25, num_labels=3)
        common.update(overrides)
        return MobileNetV2ForImageClassification(MobileNetV2Config(**common))
    raise ValueError(f"tiny_conv_model: unknown family {family!r} (resnet, mobilenet_v2).")


def toy_image_dataset(n: int = 48, size: int = 12, seed: int = 0, num_labels: int = 3) -> Dataset:
    """A learnable image task: label = which third of the image holds a bright bar (1-channel `pixel_values`)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_labels, (n,), generator=g)
    pixels = 0.1 * torch.randn(n, 1, size, size, generator=g)
    band = size // num_labels
    for i, label in enumerate(labels.tolist()):
        pixels[i, 0, label * band : (label + 1) * band, :] += 1.0
    return Dataset.from_dict({"pixel_values": pixels.tolist(), "labels": labels.tolist()}).with_format("torch")


def tiny_causal_lm(family: str = "llama", seed: int = 0, **overrides) -> PreTrainedModel:
    """A randomly initialised 2-layer causal LM (`"llama"`, `"qwen2"` with grouped-query attention, or `"gpt2"`,
    whose `lm_head` is tied to the token embeddings) over the 64-token vocabulary of [`toy_text_dataset`]."""
    torch.manual_seed(seed)
    if family == "gpt2":
        values: dict[str, Any] = dict(
            vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
        )
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
