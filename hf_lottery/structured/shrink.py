"""Physical shrinking of transformer blocks: slice Linear layers, fix head counts, replay a recorded structure.

Indices are always in the ORIGINAL numbering of the unpruned model. Each block remembers what it lost in two plain
attributes, `block.pruned_heads` and `block.pruned_neurons` (sets of original indices), and the model config records
the same in `config.pruned_heads` / `config.pruned_neurons` (`{layer: sorted list}`), which is what checkpoints carry.

This module depends only on torch and transformers (and `layouts.py`): its source is also copied into the
self-contained modeling file written beside structured checkpoints (see `remote.py`), so keep it that way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

import torch
from torch import nn
from transformers.utils import logging

from .layouts import BlockLayout, find_layout

logger = logging.get_logger(__name__)

PRUNED_HEADS_ATTR = "pruned_heads"
PRUNED_NEURONS_ATTR = "pruned_neurons"


def get_blocks(model: nn.Module, layout: BlockLayout) -> nn.ModuleList:
    """The transformer blocks of `model` (a task model or its base model)."""
    base = getattr(model, "base_model", model)
    return cast(nn.ModuleList, base.get_submodule(layout.layers))


def original_counts(config: Any, layout: BlockLayout) -> tuple[int, int, int]:
    """(layers, heads per layer, neurons per layer) of the unpruned architecture described by `config`."""
    return (
        int(getattr(config, layout.config_num_layers)),
        int(getattr(config, layout.config_num_heads)),
        int(getattr(config, layout.config_intermediate_size)),
    )


def kept_indices(total: int, removed: Iterable[int]) -> list[int]:
    """Original indices still present, in the order they are stored."""
    removed = set(removed)
    return [i for i in range(total) if i not in removed]


def layout_linear(block: nn.Module, path: str) -> nn.Linear:
    """The Linear layer at `path` of `block`: a projection its layout names (query, key, value, outputs)."""
    # `get_submodule` is typed as returning any module.
    return cast(nn.Linear, block.get_submodule(path))


def slice_linear_(linear: nn.Linear, index: list[int], dim: int) -> None:
    """Keep only `index` along `dim` of `linear` (0: output rows and bias, 1: input columns), in place."""
    weight = linear.weight
    idx = torch.tensor(index, dtype=torch.long, device=weight.device)
    linear.weight = nn.Parameter(weight.detach().index_select(dim, idx), requires_grad=weight.requires_grad)
    if dim == 0:
        if linear.bias is not None:
            bias = linear.bias
            linear.bias = nn.Parameter(bias.detach().index_select(0, idx), requires_grad=bias.requires_grad)
        linear.out_features = len(index)
    else:
        linear.in_features = len(index)


class HeadlessAttentionForward:
    """
    The `forward` of an attention module whose every head was removed.

    The stock forwards reshape with `view(..., -1, head_size)`, which is undefined on an empty tensor; with no head
    left the context is empty, so the output projection (when the attention module holds it) adds only its bias.
    A small callable object rather than a bound method, so that the model still deep-copies and pickles.
    """

    def __init__(self, attention: nn.Module, output_projection: str | None):
        self.attention = attention
        self.output_projection = output_projection

    def __call__(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        context = hidden_states.new_zeros((*hidden_states.shape[:-1], 0))
        if self.output_projection is not None:
            context = self.attention.get_submodule(self.output_projection)(context)
        length = hidden_states.shape[-2]
        weights = hidden_states.new_zeros((*hidden_states.shape[:-2], 0, length, length))
        return context, weights


def _make_headless(attention: nn.Module, layout: BlockLayout) -> None:
    prefix = layout.attention + "."
    inner = layout.attention_output[len(prefix) :] if layout.attention_output.startswith(prefix) else None
    attention.forward = HeadlessAttentionForward(attention, inner)


def remove_heads_(block: nn.Module, layout: BlockLayout, num_heads: int, heads: Iterable[int]) -> None:
    """
    Remove attention heads from one block, in place.

    `heads` are original indices, already validated (in range, not yet removed); `num_heads` is the head count of the
    unpruned layer.
    """
    heads = set(heads)
    if not heads:
        return
    removed = set(getattr(block, PRUNED_HEADS_ATTR, ()))
    attention = block.get_submodule(layout.attention)
    head_size = int(getattr(attention, layout.head_size_attr))
    # Grouped-query attention: a structural head is a KV head with its `group` query heads.
    group = int(getattr(attention, layout.query_group_attr)) if layout.query_group_attr else 1
    current = kept_indices(num_heads, removed)
    positions = [p for p, h in enumerate(current) if h not in heads]
    rows = [p * head_size + j for p in positions for j in range(head_size)]
    query_rows = [p * group * head_size + j for p in positions for j in range(group * head_size)]
    slice_linear_(layout_linear(block, layout.query), query_rows, dim=0)
    for path in (layout.key, layout.value):
        slice_linear_(layout_linear(block, path), rows, dim=0)
    slice_linear_(layout_linear(block, layout.attention_output), query_rows, dim=1)
    for attr in layout.head_count_attrs:
        setattr(attention, attr, len(positions))
    for attr in layout.head_width_attrs:
        setattr(attention, attr, len(positions) * head_size)
    setattr(block, PRUNED_HEADS_ATTR, removed | heads)
    if not positions:
        _make_headless(attention, layout)


def remove_neurons_(block: nn.Module, layout: BlockLayout, num_neurons: int, neurons: Iterable[int]) -> None:
    """
    Remove feed-forward neurons from one block, in place.

    `neurons` are original indices, already validated; `num_neurons` is the intermediate size of the unpruned layer.
    """
    neurons = set(neurons)
    if not neurons:
        return
    removed = set(getattr(block, PRUNED_NEURONS_ATTR, ()))
    current = kept_indices(num_neurons, removed)
    positions = [p for p, n in enumerate(current) if n not in neurons]
    for path in (layout.intermediate, *layout.intermediate_extra):
        slice_linear_(layout_linear(block, path), positions, dim=0)
    slice_linear_(layout_linear(block, layout.output), positions, dim=1)
    setattr(block, PRUNED_NEURONS_ATTR, removed | neurons)


def widen_linear_(linear: nn.Linear, source: list[int], dim: int) -> None:
    """
    Grow `linear` along `dim` (0: output rows and bias, 1: input columns), in place: new position `p` takes the old
    row or column `source[p]`, or zeros where `source[p]` is -1.
    """
    weight = linear.weight.detach()
    shape = list(weight.shape)
    shape[dim] = len(source)
    dest = torch.tensor([p for p, s in enumerate(source) if s >= 0], dtype=torch.long, device=weight.device)
    src = torch.tensor([s for s in source if s >= 0], dtype=torch.long, device=weight.device)
    grown = weight.new_zeros(shape).index_copy_(dim, dest, weight.index_select(dim, src))
    linear.weight = nn.Parameter(grown, requires_grad=linear.weight.requires_grad)
    if dim == 0:
        if linear.bias is not None:
            bias = linear.bias
            grown_bias = bias.detach().new_zeros(len(source)).index_copy_(0, dest, bias.detach().index_select(0, src))
            linear.bias = nn.Parameter(grown_bias, requires_grad=bias.requires_grad)
        linear.out_features = len(source)
    else:
        linear.in_features = len(source)


def restore_neurons_(block: nn.Module, layout: BlockLayout, num_neurons: int, neurons: Iterable[int]) -> None:
    """
    Put removed feed-forward neurons back as zeros, in place: their intermediate rows and bias entries and their
    output columns are zero, so the block computes the same function (whatever the activation gives at 0, the zero
    output columns drop it).

    `neurons` are original indices, already validated (removed from this block); `num_neurons` is the intermediate
    size of the unpruned layer.
    """
    neurons = set(neurons)
    if not neurons:
        return
    removed = set(getattr(block, PRUNED_NEURONS_ATTR, ()))
    position = {n: p for p, n in enumerate(kept_indices(num_neurons, removed))}
    source = [position.get(n, -1) for n in kept_indices(num_neurons, removed - neurons)]
    for path in (layout.intermediate, *layout.intermediate_extra):
        widen_linear_(layout_linear(block, path), source, dim=0)
    widen_linear_(layout_linear(block, layout.output), source, dim=1)
    setattr(block, PRUNED_NEURONS_ATTR, removed - neurons)


def normalize_structure(value: Any, field: str, num_layers: int, group_size: int) -> dict[int, list[int]]:
    """
    Parse a `{layer: [indices]}` record (JSON gives string keys) into `{int: sorted list}`, dropping empty layers.

    Raises:
        `ValueError`: on a layer or an index that is not an integer or out of range, or on a duplicate.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"`{field}` must map layer indices to lists of indices, got {type(value).__name__}.")
    result: dict[int, list[int]] = {}
    layers: set[int] = set()
    for key, indices in value.items():
        try:
            layer = int(key)
        except (TypeError, ValueError):
            raise ValueError(
                f"`{field}`: layer {key!r} is not an integer (valid layers: 0..{num_layers - 1})."
            ) from None
        if not 0 <= layer < num_layers:
            raise ValueError(f"`{field}`: layer {layer} is out of range (valid layers: 0..{num_layers - 1}).")
        if layer in layers:  # "0" and "00" name the same layer: merging them would hide an edit
            raise ValueError(f"`{field}`: layer {layer} appears twice ({key!r} and an earlier spelling).")
        layers.add(layer)
        seen: set[int] = set()
        for index in indices:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < group_size:
                raise ValueError(
                    f"`{field}`: layer {layer} lists {index!r}, which is not a valid index (0..{group_size - 1})."
                )
            if index in seen:
                raise ValueError(f"`{field}`: layer {layer} lists index {index} twice.")
            seen.add(index)
        if seen:
            result[layer] = sorted(seen)
    return result


def read_config_structure(config: Any, layout: BlockLayout) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """The `(pruned_heads, pruned_neurons)` recorded in `config`, normalized (see [`normalize_structure`])."""
    num_layers, num_heads, num_neurons = original_counts(config, layout)
    heads = normalize_structure(getattr(config, PRUNED_HEADS_ATTR, None), PRUNED_HEADS_ATTR, num_layers, num_heads)
    neurons = normalize_structure(
        getattr(config, PRUNED_NEURONS_ATTR, None), PRUNED_NEURONS_ATTR, num_layers, num_neurons
    )
    return heads, neurons


def apply_structure_(
    model: nn.Module,
    layout: BlockLayout,
    heads: Mapping[int, Iterable[int]],
    neurons: Mapping[int, Iterable[int]],
) -> None:
    """
    Bring every block to the given structure (original indices removed per layer), removing only what is missing.

    Idempotent: a block that already lost exactly these groups is left alone.

    Raises:
        `ValueError`: if a block already lost a group that the structure keeps.
    """
    num_layers, num_heads, num_neurons = original_counts(model.config, layout)
    blocks = get_blocks(model, layout)
    for layer, block in enumerate(blocks):
        for attr, wanted, total, remove in (
            (PRUNED_HEADS_ATTR, heads, num_heads, remove_heads_),
            (PRUNED_NEURONS_ATTR, neurons, num_neurons, remove_neurons_),
        ):
            want = set(wanted.get(layer, ()))
            have = set(getattr(block, attr, ()))
            if want == have:
                continue
            if not have <= want:
                raise ValueError(
                    f"Layer {layer} has already lost {sorted(have - want)} which the structure to apply keeps "
                    f"(`{attr}` only grows)."
                )
            remove(block, layout, total, want - have)


def apply_config_structure_(model: nn.Module) -> bool:
    """
    Shrink `model` to the structure recorded in `model.config` (`pruned_heads`, `pruned_neurons`).

    Called at the end of model construction, before weights are loaded, so that `from_pretrained` finds tensors of
    the saved shapes. Also normalizes the config fields to `{int: sorted list}`.

    Returns:
        `bool`: whether the config records a structure that was applied.
    """
    config = getattr(model, "config", None)
    if config is None or not (getattr(config, PRUNED_HEADS_ATTR, None) or getattr(config, PRUNED_NEURONS_ATTR, None)):
        return False
    layout = find_layout(config)
    if layout is None:
        logger.warning_once(
            f"The config records pruned heads or neurons but model type {config.model_type!r} has no structured "
            "pruning layout; the model is built unpruned."
        )
        return False
    try:
        get_blocks(model, layout)
    except AttributeError:
        return False  # a model of the family that does not hold the encoder blocks (nothing to shrink)
    heads, neurons = read_config_structure(config, layout)
    apply_structure_(model, layout, heads, neurons)
    for attr, value in ((PRUNED_HEADS_ATTR, heads), (PRUNED_NEURONS_ATTR, neurons)):
        if getattr(config, attr, None) is not None:
            setattr(config, attr, value)
    return True
