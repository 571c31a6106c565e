"""Shared fixtures: tiny random BERT/RoBERTa models built in-process (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hf_lottery.testing_utils import tiny_config, tiny_model, toy_dataset  # noqa: F401  (re-exported)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("HF_LOTTERY_SHARED_DIR", REPO_ROOT.parent / "shared"))


@pytest.fixture
def bert():
    return tiny_model("bert")


@pytest.fixture
def roberta():
    return tiny_model("roberta")


@pytest.fixture
def toy_data():
    return toy_dataset(64, seed=0), toy_dataset(32, seed=1)
