"""Group scores for attention heads and FFN neurons (higher = more important).

Every scorer returns `{"heads": GroupScores, "neurons": GroupScores}` where `GroupScores` is `{layer: tensor}` with
one value per ORIGINAL index of that layer and `nan` for groups already removed, so scores from successive rounds
of pruning speak the same numbering as `prune_heads` / `prune_neurons`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.utils import logging

from .gates import GroupScores, StructureGates
from .layouts import get_layout
from .shrink import PRUNED_HEADS_ATTR, PRUNED_NEURONS_ATTR, get_blocks, kept_indices, layout_linear, original_counts

logger = logging.get_logger(__name__)

StructureScores = dict[str, GroupScores]


STRUCTURE_SCORERS: dict[str, Callable[..., StructureScores]] = {}
"""Scorers by name; each takes the model first and returns `{"heads": ..., "neurons": ...}`."""


def register_structure_scoring(
    name: str,
) -> Callable[[Callable[..., StructureScores]], Callable[..., StructureScores]]:
    """Decorator registering a group scorer under `name` (`LotteryArguments(structured_scoring=name)`), as
    `hf_lottery.scoring.register_scoring` does for weight scores."""

    def decorator(fn: Callable[..., StructureScores]) -> Callable[..., StructureScores]:
        if name in STRUCTURE_SCORERS:
            raise ValueError(f"A structure scoring method named {name!r} is already registered.")
        STRUCTURE_SCORERS[name] = fn
        return fn

    return decorator


def _full(total: int, ids: list[int], values: torch.Tensor) -> torch.Tensor:
    scores = torch.full((total,), math.nan)
    scores[ids] = values.detach().float().cpu()
    return scores


@torch.no_grad()
def magnitude_scores(model: PreTrainedModel, p: float = 2.0) -> StructureScores:
    """
    The p-norm of each group's weights: for a head, its rows of Q, K and V and its columns of the attention output
    projection; for a neuron, its row of the intermediate Linear and its column of the output Linear (biases are
    not counted).

    Args:
        model (`PreTrainedModel`):
            A model of a supported family.
        p (`float`, *optional*, defaults to 2.0):
            Order of the norm.

    Returns:
        `dict[str, GroupScores]`: `{"heads": ..., "neurons": ...}`.
    """
    layout = get_layout(model.config)
    _, num_heads, num_neurons = original_counts(model.config, layout)
    result: StructureScores = {"heads": {}, "neurons": {}}
    for layer, block in enumerate(get_blocks(model, layout)):
        head_ids = kept_indices(num_heads, getattr(block, PRUNED_HEADS_ATTR, ()))
        if head_ids:
            head_size = int(getattr(block.get_submodule(layout.attention), layout.head_size_attr))
            n = len(head_ids)
            parts = [
                layout_linear(block, path).weight.reshape(n, head_size, -1).flatten(1)
                for path in (layout.query, layout.key, layout.value)
            ]
            out = layout_linear(
                block, layout.attention_output
            ).weight  # (hidden, n * query heads per unit * head_size)
            parts.append(out.reshape(out.shape[0], n, -1).transpose(0, 1).flatten(1))
            norms = torch.cat([part.float() for part in parts], dim=1).norm(p=p, dim=1)
            result["heads"][layer] = _full(num_heads, head_ids, norms)
        neuron_ids = kept_indices(num_neurons, getattr(block, PRUNED_NEURONS_ATTR, ()))
        if neuron_ids:
            inner = [
                layout_linear(block, path).weight.float() for path in (layout.intermediate, *layout.intermediate_extra)
            ]
            outer = layout_linear(block, layout.output).weight.float()  # (hidden, neurons)
            norms = torch.cat([*inner, outer.t()], dim=1).norm(p=p, dim=1)
            result["neurons"][layer] = _full(num_neurons, neuron_ids, norms)
    return result


def random_scores(model: PreTrainedModel, generator: torch.Generator | None = None) -> StructureScores:
    """
    Uniform random scores (the control for any other criterion).

    Args:
        model (`PreTrainedModel`):
            A model of a supported family.
        generator (`torch.Generator`, *optional*):
            Source of randomness, for reproducible draws.
    """
    layout = get_layout(model.config)
    _, num_heads, num_neurons = original_counts(model.config, layout)
    result: StructureScores = {"heads": {}, "neurons": {}}
    for layer, block in enumerate(get_blocks(model, layout)):
        for kind, attr, total in (
            ("heads", PRUNED_HEADS_ATTR, num_heads),
            ("neurons", PRUNED_NEURONS_ATTR, num_neurons),
        ):
            ids = kept_indices(total, getattr(block, attr, ()))
            if ids:
                result[kind][layer] = _full(total, ids, torch.rand(len(ids), generator=generator))
    return result


def _default_loss(outputs: Any, batch: Mapping[str, Any]) -> torch.Tensor:
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
    if loss is None:
        raise ValueError("The model returned no loss: pass batches with labels or give `loss_fn`.")
    return loss


def first_order_scores(
    model: PreTrainedModel,
    batches: Iterable[Mapping[str, Any]],
    heads: bool = True,
    neurons: bool = True,
    loss_fn: Callable[[Any, Mapping[str, Any]], torch.Tensor] | None = None,
    max_batches: int | None = None,
    normalize_layers: bool = True,
) -> StructureScores:
    """
    First-order importance (Michel et al., 2019, "Are Sixteen Heads Really Better than One?"): gates at 1 multiply
    each head's output and each FFN activation, and a group's importance is `|∂L/∂gate|` accumulated over the
    batches (the estimated change of the loss if the group were removed).

    The model runs in eval mode (no dropout) and its own parameters get no gradients during the pass; both are
    restored afterwards.

    Args:
        model (`PreTrainedModel`):
            A model of a supported family.
        batches (`Iterable[Mapping[str, Any]]`):
            Model inputs, e.g. a `DataLoader` over a tokenized dataset with labels; tensors are moved to the
            model's device.
        heads (`bool`, *optional*, defaults to `True`):
            Score attention heads.
        neurons (`bool`, *optional*, defaults to `True`):
            Score feed-forward neurons.
        loss_fn (`Callable`, *optional*):
            `loss_fn(outputs, batch) -> scalar`; defaults to `outputs.loss`.
        max_batches (`int`, *optional*):
            Stop after this many batches.
        normalize_layers (`bool`, *optional*, defaults to `True`):
            Divide each layer's scores by their L2 norm, as Michel et al. do before comparing heads across layers.

    Returns:
        `dict[str, GroupScores]`: `{"heads": ..., "neurons": ...}` (empty for a kind not requested).
    """
    loss_fn = loss_fn or _default_loss
    device = next(model.parameters()).device
    was_training = model.training
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    model.eval()
    model.requires_grad_(False)
    try:
        with StructureGates(model, heads=heads, neurons=neurons) as gates, torch.enable_grad():
            params = list(gates.gate_tensors())
            totals = {id(g): torch.zeros_like(g) for g in params}
            seen = 0
            for batch in batches:
                if max_batches is not None and seen >= max_batches:
                    break
                inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                loss = loss_fn(model(**inputs), inputs)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                for gate, grad in zip(params, grads):
                    if grad is not None:
                        totals[id(gate)] += grad.abs()
                seen += 1
            if seen == 0:
                raise ValueError("first_order_scores got no batches.")
            result: StructureScores = {"heads": {}, "neurons": {}}
            for kind, layer_gates in (("heads", gates.head_gates), ("neurons", gates.neuron_gates)):
                for key, gate in layer_gates.items():
                    layer = int(key)
                    result[kind][layer] = _full(gates.totals[kind], gates.ids[kind][layer], totals[id(gate)])
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad[name])
        model.train(was_training)
    if normalize_layers:
        for kind_scores in result.values():
            for layer, values in kind_scores.items():
                norm = values.nan_to_num(0.0).norm()
                kind_scores[layer] = values / (norm + 1e-20)
    return result


def gate_scores(gates: StructureGates) -> StructureScores:
    """
    Learned gate values (clamped to [0, 1]) as scores; after training with the polarization regularizer the gates
    near 0 are the groups to remove.

    Args:
        gates (`StructureGates`):
            Trained gates.
    """
    scores = gates.scores()
    return {kind: {layer: v.clamp(0.0, 1.0) for layer, v in s.items()} for kind, s in scores.items()}


register_structure_scoring("magnitude")(magnitude_scores)
register_structure_scoring("first_order")(first_order_scores)
register_structure_scoring("random")(random_scores)


def score_structures(model: PreTrainedModel, method: str = "magnitude", **kwargs: Any) -> StructureScores:
    """
    Score heads and neurons with a registered method (`"magnitude"`, `"first_order"`, `"random"`).

    Args:
        model (`PreTrainedModel`):
            A model of a supported family.
        method (`str`, *optional*, defaults to `"magnitude"`):
            A key of `STRUCTURE_SCORERS`.
        kwargs:
            Passed to the scorer (e.g. `batches=` for `"first_order"`).
    """
    try:
        scorer = STRUCTURE_SCORERS[method]
    except KeyError:
        raise ValueError(f"Unknown structure scoring method {method!r}; known: {sorted(STRUCTURE_SCORERS)}.") from None
    return scorer(model, **kwargs)
