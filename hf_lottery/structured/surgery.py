"""Public surgery: remove attention heads and feed-forward neurons from a model, in place."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn
from transformers import PreTrainedModel
from transformers.utils import logging

from .layouts import get_layout
from .shrink import (
    PRUNED_HEADS_ATTR,
    PRUNED_NEURONS_ATTR,
    get_blocks,
    kept_indices,
    original_counts,
    remove_heads_,
    remove_neurons_,
)

logger = logging.get_logger(__name__)

# What each kind of group is called, where it is tracked, and which size bounds its indices.
_KINDS = {
    "head": (PRUNED_HEADS_ATTR, remove_heads_, 1),
    "neuron": (PRUNED_NEURONS_ATTR, remove_neurons_, 2),
}


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _validate(
    request: Mapping[int, Iterable[int]], blocks: nn.ModuleList, kind: str, total: int
) -> dict[int, list[int]]:
    """Check a `{layer: [original indices]}` request against the model; nothing is modified."""
    fn = f"prune_{kind}s"
    if not isinstance(request, Mapping):
        raise ValueError(f"{fn} expects a mapping {{layer: [{kind} indices]}}, got {type(request).__name__}.")
    attr = _KINDS[kind][0]
    num_layers = len(blocks)
    clean: dict[int, list[int]] = {}
    for key, indices in request.items():
        layer = _as_int(key)
        if layer is None or not 0 <= layer < num_layers:
            raise ValueError(f"{fn}: layer {key!r} is not a valid layer index (valid layers: 0..{num_layers - 1}).")
        if layer in clean:
            raise ValueError(f"{fn}: layer {layer} is given twice.")
        if isinstance(indices, (str, bytes)) or not isinstance(indices, Iterable):
            raise ValueError(f"{fn}: layer {layer} must map to a list of {kind} indices, got {indices!r}.")
        removed: set[int] = getattr(blocks[layer], attr, set())
        seen: list[int] = []
        for raw in indices:
            index = _as_int(raw)
            if index is None or not 0 <= index < total:
                raise ValueError(
                    f"{fn}: layer {layer}, {kind} {raw!r} is not a valid index; valid {kind}s are 0..{total - 1} "
                    "(original numbering)."
                )
            if index in seen:
                raise ValueError(f"{fn}: layer {layer}, {kind} {index} is listed twice.")
            if index in removed:
                raise ValueError(
                    f"{fn}: layer {layer}, {kind} {index} was already removed; indices refer to the original "
                    f"numbering (0..{total - 1}) and the remaining {kind}s of this layer are "
                    f"{kept_indices(total, removed)}."
                )
            seen.append(index)
        clean[layer] = seen
    return clean


def _prune(model: PreTrainedModel, request: Mapping[int, Iterable[int]], kind: str) -> PreTrainedModel:
    layout = get_layout(model.config)
    counts = original_counts(model.config, layout)
    attr, remove, count_index = _KINDS[kind]
    total = counts[count_index]
    blocks = get_blocks(model, layout)
    clean = _validate(request, blocks, kind, total)
    for layer, indices in clean.items():
        remove(blocks[layer], layout, total, indices)
    record = {layer: sorted(getattr(block, attr)) for layer, block in enumerate(blocks) if getattr(block, attr, None)}
    setattr(model.config, attr, record)
    n = sum(len(v) for v in clean.values())
    # Counts, not indices: a neuron list runs to thousands of numbers (the indices are in config.json).
    so_far = {layer: f"{len(v)}/{total}" for layer, v in record.items()}
    logger.info(f"Removed {n} {kind}(s) from {len(clean)} layer(s); {kind}s removed so far per layer: {so_far}.")
    return model


def prune_heads(model: PreTrainedModel, heads_to_prune: Mapping[int, Iterable[int]]) -> PreTrainedModel:
    """
    Physically remove attention heads: the matching rows of Q, K and V and columns of the attention output
    projection are deleted and the attention module runs with fewer heads.

    Indices refer to the ORIGINAL numbering of the unpruned model, so repeated calls compose (`{0: [1]}` then
    `{0: [2]}` removes heads 1 and 2). The removed heads are recorded in `model.config.pruned_heads`, which
    `save_pretrained` writes and `from_pretrained` replays. Removing every head of a layer is allowed: its attention
    then contributes only the output projection's bias. Build optimizers after the surgery: parameters are replaced.

    Args:
        model (`PreTrainedModel`):
            A model of a supported family (see `hf_lottery.structured.layouts`); modified in place.
        heads_to_prune (`Mapping[int, Iterable[int]]`):
            `{layer index: [head indices]}`.

    Returns:
        `PreTrainedModel`: the same model.

    Raises:
        `ValueError`: for an unsupported family, or a layer or head index that is not an integer, negative, out of
        range, duplicated or already removed (nothing is modified then).

    Example:

    ```python
    >>> from hf_lottery.structured import prune_heads
    >>> prune_heads(model, {0: [1, 4], 3: [0]})
    ```
    """
    return _prune(model, heads_to_prune, "head")


def prune_neurons(model: PreTrainedModel, neurons_to_prune: Mapping[int, Iterable[int]]) -> PreTrainedModel:
    """
    Physically remove feed-forward neurons: the matching rows (and bias entries) of the intermediate Linear and
    columns of the output Linear are deleted.

    Indices refer to the ORIGINAL numbering, so repeated calls compose; the removed neurons are recorded in
    `model.config.pruned_neurons`. Removing every neuron of a layer is allowed (the feed-forward block then adds only
    its output bias). Build optimizers after the surgery: parameters are replaced.

    Args:
        model (`PreTrainedModel`):
            A model of a supported family; modified in place.
        neurons_to_prune (`Mapping[int, Iterable[int]]`):
            `{layer index: [neuron indices]}`.

    Returns:
        `PreTrainedModel`: the same model.

    Raises:
        `ValueError`: for an unsupported family, or a layer or neuron index that is not an integer, negative, out of
        range, duplicated or already removed (nothing is modified then).
    """
    return _prune(model, neurons_to_prune, "neuron")


def pruned_structure(model: PreTrainedModel) -> dict[str, dict[int, list[int]]]:
    """
    What has been removed from each layer, in the original numbering.

    Args:
        model (`PreTrainedModel`):
            A model of a supported family.

    Returns:
        `dict`: `{"heads": {layer: [removed heads]}, "neurons": {layer: [removed neurons]}}`; layers with nothing
        removed are omitted.
    """
    layout = get_layout(model.config)
    blocks = get_blocks(model, layout)
    return {
        kind: {i: sorted(getattr(b, attr)) for i, b in enumerate(blocks) if getattr(b, attr, None)}
        for kind, attr in (("heads", PRUNED_HEADS_ATTR), ("neurons", PRUNED_NEURONS_ATTR))
    }


def structure_counts(model: PreTrainedModel) -> dict[str, dict[str, int]]:
    """
    How many heads and neurons remain, out of how many in the unpruned model.

    Args:
        model (`PreTrainedModel`):
            A model of a supported family.

    Returns:
        `dict`: `{"heads": {"remaining": int, "total": int}, "neurons": {"remaining": int, "total": int}}`, summed
        over layers.
    """
    layout = get_layout(model.config)
    num_layers, num_heads, num_neurons = original_counts(model.config, layout)
    removed = pruned_structure(model)
    return {
        kind: {
            "remaining": num_layers * per_layer - sum(map(len, removed[kind].values())),
            "total": num_layers * per_layer,
        }
        for kind, per_layer in (("heads", num_heads), ("neurons", num_neurons))
    }
