"""The polarization regularizer of Zhuang et al. (NeurIPS 2020), "Neuron-level Structured Pruning using
Polarization Regularizer".

    R(γ) = t · ‖γ‖₁ − ‖γ − mean(γ)‖₁,   with γ kept in [0, 1]

The first term pulls every gate towards 0 like an L1 penalty; the second rewards spread around the mean, so gates
end near 0 (pruned) or near 1 (kept) instead of all shrinking together. Keep the gates in [0, 1] by projecting after
each optimizer step (`StructureGates.clamp_()`), as the paper does.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def polarization_regularizer(gates: torch.Tensor | Iterable[torch.Tensor], t: float = 1.2) -> torch.Tensor:
    """
    `t * ‖γ‖₁ − ‖γ − mean(γ)‖₁` over all the given gates together (one global mean, as in the paper).

    Args:
        gates (`torch.Tensor` or an iterable of tensors):
            The gate values γ, expected in [0, 1]; several tensors are concatenated.
        t (`float`, *optional*, defaults to 1.2):
            Weight of the L1 term; larger `t` prunes more. On its own (no task loss), among configurations of `n`
            gates at 0 or 1, the regularizer is lowest with about `n * (2 - t) / 4` gates at 1 (for `0 < t < 2`).

    Returns:
        `torch.Tensor`: a scalar, differentiable with respect to the gates (the mean included).
    """
    if isinstance(gates, torch.Tensor):
        flat = gates.reshape(-1)
    else:
        parts = [g.reshape(-1) for g in gates]
        if not parts:
            raise ValueError("polarization_regularizer needs at least one gate tensor.")
        flat = torch.cat(parts)
    return t * flat.abs().sum() - (flat - flat.mean()).abs().sum()
