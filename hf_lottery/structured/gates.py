"""Multiplicative gates on attention-head outputs and FFN activations, attached with removable hooks.

A head gate scales that head's slice of the context vector just before the attention output projection; a neuron
gate scales one intermediate activation just before the second feed-forward Linear. With every gate at 1 the model
is unchanged; a gate at 0 is exactly the removal of its head or neuron. The gates live outside the model (its state
dict keeps its vanilla keys): pass `gates.parameters()` to an optimizer to learn them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from .layouts import get_layout
from .polarization import polarization_regularizer
from .shrink import PRUNED_HEADS_ATTR, PRUNED_NEURONS_ATTR, get_blocks, kept_indices, layout_linear, original_counts

GroupScores = dict[int, torch.Tensor]
"""Scores of one kind of group: `{layer: tensor}`, one value per ORIGINAL index; `nan` marks a removed group."""


def _scale_heads(gate: nn.Parameter):
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        context = args[0]
        shape = context.shape
        # -1, not head_size: under grouped-query attention a gated unit spans its KV group's query heads.
        scaled = context.view(*shape[:-1], gate.numel(), -1) * gate.to(context.dtype).unsqueeze(-1)
        return (scaled.view(shape), *args[1:])

    return hook


def _scale_neurons(gate: nn.Parameter):
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0] * gate.to(args[0].dtype), *args[1:])

    return hook


class StructureGates(nn.Module):
    """
    Gates on the heads and/or FFN neurons of a model, one `nn.Parameter` per layer.

    Use as a context manager, or call [`~StructureGates.remove`] when done; the model is not otherwise modified.

    Args:
        model (`PreTrainedModel`):
            A model of a supported family (possibly already shrunk: only the surviving groups get gates).
        heads (`bool`, *optional*, defaults to `True`):
            Gate attention heads.
        neurons (`bool`, *optional*, defaults to `True`):
            Gate feed-forward neurons.
        init (`float`, *optional*, defaults to 1.0):
            Initial gate value (1 leaves the model unchanged).

    Example:

    ```python
    >>> gates = StructureGates(model)
    >>> optimizer = torch.optim.AdamW([*model.parameters(), *gates.parameters()])
    >>> loss = model(**batch).loss + 1e-3 * gates.polarization(t=1.2)
    >>> loss.backward(); optimizer.step(); gates.clamp_()
    >>> heads = select_below(gates.scores()["heads"], threshold=0.05)
    >>> gates.remove()
    ```
    """

    def __init__(self, model: PreTrainedModel, heads: bool = True, neurons: bool = True, init: float = 1.0):
        super().__init__()
        layout = get_layout(model.config)
        num_layers, num_heads, num_neurons = original_counts(model.config, layout)
        self.totals = {"heads": num_heads, "neurons": num_neurons}
        self.head_gates = nn.ParameterDict()
        self.neuron_gates = nn.ParameterDict()
        self.ids: dict[str, dict[int, list[int]]] = {"heads": {}, "neurons": {}}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for layer, block in enumerate(get_blocks(model, layout)):
            if heads:
                ids = kept_indices(num_heads, getattr(block, PRUNED_HEADS_ATTR, ()))
                if ids:
                    target = layout_linear(block, layout.attention_output)
                    gate = self._new_gate(len(ids), init, target.weight.device)
                    self.head_gates[str(layer)] = gate
                    self.ids["heads"][layer] = ids
                    self._handles.append(target.register_forward_pre_hook(_scale_heads(gate)))
            if neurons:
                ids = kept_indices(num_neurons, getattr(block, PRUNED_NEURONS_ATTR, ()))
                if ids:
                    target = layout_linear(block, layout.output)
                    gate = self._new_gate(len(ids), init, target.weight.device)
                    self.neuron_gates[str(layer)] = gate
                    self.ids["neurons"][layer] = ids
                    self._handles.append(target.register_forward_pre_hook(_scale_neurons(gate)))

    @staticmethod
    def _new_gate(n: int, init: float, device: torch.device) -> nn.Parameter:
        # float32 whatever the model's dtype: gates are few and learned with small steps.
        return nn.Parameter(torch.full((n,), float(init), dtype=torch.float32, device=device))

    def gate_tensors(self, kind: str | None = None) -> Iterator[nn.Parameter]:
        """The gate parameters of `kind` (`"heads"`, `"neurons"` or `None` for both), layer by layer."""
        if kind in (None, "heads"):
            yield from self.head_gates.values()
        if kind in (None, "neurons"):
            yield from self.neuron_gates.values()

    @torch.no_grad()
    def clamp_(self, min: float = 0.0, max: float = 1.0) -> StructureGates:
        """Project every gate into `[min, max]` (call after each optimizer step)."""
        for gate in self.gate_tensors():
            gate.clamp_(min, max)
        return self

    def polarization(self, t: float = 1.2) -> torch.Tensor:
        """
        The polarization regularizer, summed over the kinds of gates held (heads and neurons are polarized
        separately: each kind has its own mean). See [`polarization_regularizer`].
        """
        terms = [
            polarization_regularizer(list(self.gate_tensors(kind)), t=t)
            for kind in ("heads", "neurons")
            if self.ids[kind]
        ]
        return torch.stack(terms).sum() if terms else torch.zeros(())

    @torch.no_grad()
    def scores(self) -> dict[str, GroupScores]:
        """
        The current gate values as scores in the original numbering (`nan` for groups already removed).

        Returns:
            `dict[str, GroupScores]`: `{"heads": {layer: tensor}, "neurons": {layer: tensor}}`.
        """
        result: dict[str, GroupScores] = {"heads": {}, "neurons": {}}
        for kind, gates in (("heads", self.head_gates), ("neurons", self.neuron_gates)):
            for key, gate in gates.items():
                layer = int(key)
                full = torch.full((self.totals[kind],), math.nan)
                full[self.ids[kind][layer]] = gate.detach().float().cpu()
                result[kind][layer] = full
        return result

    def remove(self) -> None:
        """Detach the gates from the model (the model is then exactly as before)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> StructureGates:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def attach_gates(
    model: PreTrainedModel, heads: bool = True, neurons: bool = True, init: float = 1.0
) -> StructureGates:
    """
    Attach multiplicative gates to the heads and/or FFN neurons of `model` (see [`StructureGates`]).

    Args:
        model (`PreTrainedModel`):
            A model of a supported family.
        heads (`bool`, *optional*, defaults to `True`):
            Gate attention heads.
        neurons (`bool`, *optional*, defaults to `True`):
            Gate feed-forward neurons.
        init (`float`, *optional*, defaults to 1.0):
            Initial gate value.

    Returns:
        `StructureGates`: the gates; call `.remove()` (or use `with`) to detach them.
    """
    return StructureGates(model, heads=heads, neurons=neurons, init=init)
