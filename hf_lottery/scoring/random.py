"""Random scoring: the control that every lottery claim needs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .registry import register_scoring


@register_scoring("random")
@torch.no_grad()
def random_scores(
    model: nn.Module,
    parameters: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor] | None,
    seed: int = 0,
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    """Uniform random scores from a generator seeded with `seed` (independent of the global RNG)."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(p.shape, generator=generator) for name, p in parameters.items()}
