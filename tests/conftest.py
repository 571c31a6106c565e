"""Shared fixtures: tiny random BERT/RoBERTa models built in-process (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from datasets import Dataset

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("HF_LOTTERY_SHARED_DIR", REPO_ROOT.parent / "shared"))


def tiny_config(family: str = "bert", **overrides):
    from transformers import BertConfig, RobertaConfig

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


def tiny_model(family: str = "bert", seed: int = 0, **overrides):
    from transformers import AutoModelForSequenceClassification

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


@pytest.fixture
def bert():
    return tiny_model("bert")


@pytest.fixture
def roberta():
    return tiny_model("roberta")


@pytest.fixture
def toy_data():
    return toy_dataset(64, seed=0), toy_dataset(32, seed=1)
