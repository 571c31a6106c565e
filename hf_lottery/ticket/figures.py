"""Figures of a mask given as a plain `{name: BoolTensor}` mapping: counts and sparsity, overall and per tensor."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def mask_figures(masks: Mapping[str, torch.Tensor]) -> dict[str, dict[str, float | int]]:
    """Per-tensor figures `{name: {"numel", "kept", "sparsity"}}`, plus an `"__total__"` entry."""
    rows: dict[str, dict[str, float | int]] = {}
    numel = kept = 0
    for name, mask in masks.items():
        tensor_kept = int(mask.sum())
        rows[name] = {"numel": mask.numel(), "kept": tensor_kept, "sparsity": 1.0 - tensor_kept / max(mask.numel(), 1)}
        numel += mask.numel()
        kept += tensor_kept
    rows["__total__"] = {"numel": numel, "kept": kept, "sparsity": 1.0 - kept / numel if numel else 0.0}
    return rows
