"""Public surgery: remove attention heads and feed-forward neurons from a model, in place."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from typing import Any, cast

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
    restore_neurons_,
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


def _record(blocks: Iterable[nn.Module], attr: str) -> dict[int, list[int]]:
    """`{layer: sorted original indices}` of what each block lost (`attr`: heads or neurons); layers with none omitted."""
    return {i: sorted(getattr(b, attr)) for i, b in enumerate(blocks) if getattr(b, attr, None)}


def _prune(model: PreTrainedModel, request: Mapping[int, Iterable[int]], kind: str) -> PreTrainedModel:
    layout = get_layout(model.config)
    counts = original_counts(model.config, layout)
    attr, remove, count_index = _KINDS[kind]
    total = counts[count_index]
    blocks = get_blocks(model, layout)
    clean = _validate(request, blocks, kind, total)
    for layer, indices in clean.items():
        remove(blocks[layer], layout, total, indices)
    record = _record(blocks, attr)
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


def pad_neurons(model: PreTrainedModel, multiple_of: int) -> dict[int, int]:
    """
    Round every block's feed-forward width up to a multiple of `multiple_of` by putting removed neurons back as
    zeros (the lowest removed indices first): the model computes exactly the same function, and its matrix products
    get shapes the CPU kernels run at full speed.

    A pruned width such as 1091 or 559 leaves the GEMM kernels a ragged last block: measured on all-MiniLM-L6-v2's
    shapes (batch 32 × 128 tokens, torch 2.13, AVX-512), the intermediate Linear of a 60 %-pruned block ran 30-40 %
    slower than its FLOPs predict and 1.05-1.10× faster end to end once padded to 16 or 32 (`bench/RESULTS.md`,
    "Speed tickets"). The padding costs at most `multiple_of - 1` neurons of FLOPs per block. A layer is never grown
    past its original width, and one with no neuron left stays empty. The restored neurons are recorded as kept
    (`config.pruned_neurons` shrinks), so the model saves and loads like any shrunk one; they stay zero under
    further training (their gradients are zero) but count as weights of the checkpoint.

    Args:
        model (`PreTrainedModel`):
            A model of a supported family; modified in place.
        multiple_of (`int`):
            The width quantum, e.g. 16 (one AVX-512 fp32 vector) or 32.

    Returns:
        `dict[int, int]`: `{layer: neurons put back}`, layers that needed none omitted.

    Raises:
        `ValueError`: for an unsupported family or a `multiple_of` that is not a positive integer.
    """
    quantum = _as_int(multiple_of)
    if quantum is None or quantum < 1:
        raise ValueError(f"pad_neurons: `multiple_of` must be a positive integer, got {multiple_of!r}.")
    layout = get_layout(model.config)
    _, _, total = original_counts(model.config, layout)
    blocks = get_blocks(model, layout)
    added: dict[int, int] = {}
    for layer, block in enumerate(blocks):
        removed = sorted(getattr(block, PRUNED_NEURONS_ATTR, ()))
        kept = total - len(removed)
        wanted = min(-(-kept // quantum) * quantum, total) if kept else 0
        if wanted > kept:
            restore_neurons_(block, layout, total, removed[: wanted - kept])
            added[layer] = wanted - kept
    if added:
        setattr(model.config, PRUNED_NEURONS_ATTR, _record(blocks, PRUNED_NEURONS_ATTR))
        logger.info(f"Padded the feed-forward widths to multiples of {quantum}: neurons put back per layer {added}.")
    return added


PRUNED_LAYERS_ATTR = "pruned_layers"


def _layer_list(value: Any, field: str) -> list[int]:
    """A config's list of original layer indices (`pruned_layers`), checked: distinct non-negative integers."""
    if value is None:
        return []
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ValueError(f"`{field}` must be a list of layer indices, got {type(value).__name__}.")
    indices = [_as_int(v) for v in value]
    if any(i is None or i < 0 for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(f"`{field}` must hold distinct non-negative layer indices, got {list(value)!r}.")
    return sorted(cast(list[int], indices))


def removed_layers(config: Any) -> list[int]:
    """
    The original indices of the blocks [`prune_layers`] removed (`config.pruned_layers`), sorted.

    Raises:
        `ValueError`: if the record is not a list of distinct non-negative integers, or names a layer beyond the
        original depth (`num_hidden_layers` + removed).
    """
    removed = _layer_list(getattr(config, PRUNED_LAYERS_ATTR, None), PRUNED_LAYERS_ATTR)
    layout = get_layout(config)
    total = int(getattr(config, layout.config_num_layers)) + len(removed)
    if removed and removed[-1] >= total:
        raise ValueError(
            f"`{PRUNED_LAYERS_ATTR}` names layer {removed[-1]}, but the unpruned model had {total} layers "
            f"({layout.config_num_layers} kept + {len(removed)} removed)."
        )
    return removed


def prune_layers(model: PreTrainedModel, layers: Iterable[int]) -> PreTrainedModel:
    """
    Physically remove whole transformer blocks: the residual stream skips them.

    `layers` are positions in the model as it is now (the numbering of `prune_heads`' layer keys). The config's layer
    count (`num_hidden_layers` or its family's name) shrinks, the kept blocks are renumbered `0..kept - 1` (their
    `pruned_heads` / `pruned_neurons` records move with them, and per-layer config lists such as `layer_types` and
    the attention modules' `layer_idx` follow), and `config.pruned_layers` records the ORIGINAL indices removed so
    far. The checkpoint that `save_pretrained` writes is a plain shallower model: without removed heads or neurons
    it loads with `from_pretrained` even where hf_lottery is not installed. Build optimizers after the surgery.

    Args:
        model (`PreTrainedModel`):
            A model of a supported family (see `hf_lottery.structured.layouts`); modified in place.
        layers (`Iterable[int]`):
            Positions of the blocks to remove.

    Returns:
        `PreTrainedModel`: the same model.

    Raises:
        `ValueError`: for an unsupported family, a position that is not an integer, out of range or duplicated, or a
        request that would remove every block (nothing is modified then).

    Example:

    ```python
    >>> from hf_lottery.structured import prune_layers
    >>> prune_layers(model, [3, 5])  # a 6-layer model keeps its blocks 0, 1, 2 and 4
    ```
    """
    layout = get_layout(model.config)
    blocks = get_blocks(model, layout)
    if isinstance(layers, (str, bytes, Mapping)) or not isinstance(layers, Iterable):
        raise ValueError(f"prune_layers expects a list of layer positions, got {type(layers).__name__}.")
    requested: list[int] = []
    for raw in layers:
        position = _as_int(raw)
        if position is None or not 0 <= position < len(blocks):
            raise ValueError(
                f"prune_layers: {raw!r} is not a valid layer position (valid positions: 0..{len(blocks) - 1})."
            )
        if position in requested:
            raise ValueError(f"prune_layers: layer {position} is listed twice.")
        requested.append(position)
    if len(requested) == len(blocks):
        raise ValueError(f"prune_layers: removing all {len(blocks)} layers leaves no transformer block; keep one.")
    if not requested:
        return model
    config = model.config
    before = removed_layers(config)
    original = [i for i in range(len(blocks) + len(before)) if i not in set(before)]  # position -> original index
    keep = [p for p in range(len(blocks)) if p not in set(requested)]
    layer_types = getattr(config, "layer_types", None)  # the one per-layer config list transformers keeps
    if isinstance(layer_types, list) and len(layer_types) == len(blocks):
        config.layer_types = [layer_types[p] for p in keep]
    kept_blocks = [blocks[p] for p in keep]
    for new_index, block in enumerate(kept_blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index  # type: ignore[assignment]  # an int, which torch types as Tensor | Module
    base = getattr(model, "base_model", model)
    parent_path, _, name = layout.layers.rpartition(".")
    parent = base.get_submodule(parent_path) if parent_path else base
    setattr(parent, name, nn.ModuleList(kept_blocks))
    setattr(config, layout.config_num_layers, len(kept_blocks))
    setattr(config, PRUNED_LAYERS_ATTR, sorted(before + [original[p] for p in requested]))
    for attr in (PRUNED_HEADS_ATTR, PRUNED_NEURONS_ATTR):
        if getattr(config, attr, None) is not None or any(getattr(b, attr, None) for b in kept_blocks):
            setattr(
                config,
                attr,
                _record(kept_blocks, attr),
            )
    logger.info(
        f"Removed {len(requested)} layer(s); {len(kept_blocks)} remain (original layers removed so far: "
        f"{getattr(config, PRUNED_LAYERS_ATTR)})."
    )
    return model


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
        kind: _record(blocks, attr) for kind, attr in (("heads", PRUNED_HEADS_ATTR), ("neurons", PRUNED_NEURONS_ATTR))
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
