"""The sparsity-inducing penalties of conv-net structured pruning, applied as gradient terms.

- Channels: the BatchNorm scales γ of the inner units are the channel gates. The polarization regularizer
  (Zhuang et al., NeurIPS 2020) `t·‖γ‖₁ − ‖γ − mean(γ)‖₁`, with γ projected into [0, 1] after each step, drives
  them to 0 or to a shared value; plain L1 (`‖γ‖₁`, Liu et al. 2017, "network slimming") is the baseline.
- Stripes: the Filter Skeleton (Meng et al., NeurIPS 2020) multiplies each stripe by a learnable I (shape
  `(out, kh, kw)` per conv) trained with an L1 penalty `α·‖I‖₁`. It is kept folded into the weights: every step
  starts from I = 1, so `∂L/∂I = Σ_c W ⊙ ∂L/∂W` comes from the gradients the Trainer already computed; I takes one
  gradient step and is merged into W (W ← W ⊙ I). That is one step of joint SGD on (W, I) followed by merging, so
  the model keeps its vanilla keys and a checkpoint holds the whole state (resume stays exact). A stripe the
  skeleton shrinks loses its norm, which is what stripe pruning then ranks.

The penalties are added to `.grad` just before the optimizer step (after gradient clipping), as network slimming's
reference code does; they are not part of the logged loss.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .polarization import polarization_regularizer


def alive_gates(gate: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    """Which gates are still in the model: a pruned channel has scale *and* shift exactly 0 (mask enforced)."""
    alive = gate.detach() != 0
    return alive | (shift.detach() != 0) if shift is not None else alive


def add_channel_penalty_grad_(
    gates: Mapping[str, nn.Parameter],
    shifts: Mapping[str, nn.Parameter] | None,
    strength: float,
    kind: str = "polarization",
    t: float = 1.2,
) -> None:
    """
    Add `strength · ∂R/∂γ` to the gradients of the BatchNorm scales `gates` (`{unit: γ}`).

    Args:
        gates (`Mapping[str, nn.Parameter]`): the channel gates, by unit.
        shifts (`Mapping[str, nn.Parameter]`, *optional*): the matching BatchNorm shifts (to tell pruned channels).
        strength (`float`): λ, the weight of the penalty.
        kind (`str`): `"polarization"` (one mean over every live gate of the model) or `"l1"`.
        t (`float`): the polarization regularizer's `t`.
    """
    if strength == 0 or not gates:
        return
    live = [alive_gates(g, shifts.get(k) if shifts else None) for k, g in gates.items()]
    if kind == "l1":
        for gate, keep in zip(gates.values(), live):
            _accumulate(gate, strength * torch.sign(gate.detach()) * keep)
        return
    if kind != "polarization":
        raise ValueError(f"Unknown channel penalty {kind!r}; use 'polarization' or 'l1'.")
    leaves = [g.detach().float().clone().requires_grad_(True) for g in gates.values()]
    with torch.enable_grad():
        value = polarization_regularizer([leaf[keep] for leaf, keep in zip(leaves, live)], t=t)
        grads = torch.autograd.grad(value, leaves)
    for gate, grad in zip(gates.values(), grads):
        _accumulate(gate, strength * grad)


def _accumulate(param: nn.Parameter, extra: torch.Tensor) -> None:
    extra = extra.to(param.dtype)
    if param.grad is None:
        param.grad = extra.clone()
    else:
        param.grad.add_(extra)


@torch.no_grad()
def clamp_gates_(gates: Iterable[nn.Parameter], low: float = 0.0, high: float = 1.0) -> None:
    """Project the gates into `[low, high]` (polarization keeps γ in [0, 1])."""
    for gate in gates:
        gate.clamp_(low, high)


@torch.no_grad()
def skeleton_factors(
    weights: Iterable[nn.Parameter], learning_rate: float, penalty: float
) -> list[torch.Tensor | None]:
    """
    One gradient step of each conv's Filter Skeleton from I = 1: `I' = max(0, 1 − lr·(Σ_c W ⊙ ∂L/∂W + α))`.

    Call before the optimizer step (the gradients are those of this step). Returns one `(out, kh, kw)` factor per
    weight (`None` for a weight without a gradient); merge them with [`fold_skeleton_`] after the step.
    """
    factors: list[torch.Tensor | None] = []
    for weight in weights:
        if weight.grad is None:
            factors.append(None)
            continue
        grad_skeleton = (weight.detach().float() * weight.grad.float()).sum(dim=1)
        factors.append((1.0 - learning_rate * (grad_skeleton + penalty)).clamp_(min=0.0))
    return factors


@torch.no_grad()
def fold_skeleton_(weights: Iterable[nn.Parameter], factors: Iterable[torch.Tensor | None]) -> None:
    """Merge the skeleton factors into the weights, `W ← W ⊙ I'` (I is 1 again afterwards)."""
    for weight, factor in zip(weights, factors):
        if factor is not None:
            weight.mul_(factor.unsqueeze(1).to(weight.dtype))
