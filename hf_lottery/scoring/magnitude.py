"""Magnitude scoring: |w| (IMP, Frankle & Carbin; Chen et al.)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .registry import register_scoring


@register_scoring("magnitude")
@torch.no_grad()
def magnitude_scores(
    model: nn.Module,
    parameters: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor] | None,
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    """Score each weight by its absolute value."""
    return {name: p.detach().abs() for name, p in parameters.items()}
