"""Trainer callbacks that apply the conv-net penalties during every round (see `structured/conv_regularizers.py`)."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from ..structured.conv_imp import channel_roles, stripe_parameters
from ..structured.conv_regularizers import add_channel_penalty_grad_, clamp_gates_, fold_skeleton_, skeleton_factors


def _unwrapped(model: Any) -> Any:
    return getattr(model, "module", model)  # DDP


class ChannelPenaltyCallback(TrainerCallback):
    """Adds the polarization (or L1) penalty on the inner channels' BatchNorm scales to their gradients before each
    optimizer step; with polarization, projects the scales into [0, 1] after it.

    Args:
        kind (`str`): `"polarization"` or `"l1"`.
        strength (`float`): λ.
        t (`float`): the polarization regularizer's `t`.
    """

    def __init__(self, kind: str, strength: float, t: float = 1.2):
        self.kind, self.strength, self.t = kind, strength, t
        self._gates: dict[str, Any] = {}
        self._shifts: dict[str, Any] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model = _unwrapped(model)
        params = dict(model.named_parameters())
        roles = channel_roles(model)
        self._gates = {unit: params[r["gate"]] for unit, r in roles.items()}
        self._shifts = {unit: params[r["gate_bias"]] for unit, r in roles.items()}

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        add_channel_penalty_grad_(self._gates, self._shifts, self.strength, self.kind, self.t)

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.kind == "polarization":
            clamp_gates_(self._gates.values())


class FilterSkeletonCallback(TrainerCallback):
    """Trains the Filter Skeleton of every stripe-prunable conv, folded into the weights after each optimizer step.

    Args:
        penalty (`float`): α, the skeleton's L1 weight.
        learning_rate (`float`, *optional*): the skeleton's step size; default: the optimizer's current learning
            rate (so it follows the schedule).
    """

    def __init__(self, penalty: float, learning_rate: float | None = None):
        self.penalty, self.learning_rate = penalty, learning_rate
        self._weights: list[Any] = []
        self._factors: list[Any] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._weights = list(stripe_parameters(_unwrapped(model)).values())

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        lr = self.learning_rate
        if lr is None:
            lr = optimizer.param_groups[0]["lr"] if optimizer is not None else args.learning_rate
        self._factors = skeleton_factors(self._weights, lr, self.penalty)

    def on_optimizer_step(self, args, state, control, **kwargs):
        fold_skeleton_(self._weights, self._factors)
        self._factors = []
