"""Physical removal of the inner channels of conv-net residual blocks, and replay of a recorded structure.

A removed channel takes out one output filter of a unit's conv, the matching entries of its BatchNorm (scale, shift,
running statistics) and the matching input channel of the next unit's conv. Indices are in the ORIGINAL numbering
of the unpruned model: each unit remembers what it lost in a plain attribute `unit.pruned_channels` (a set), and the
model config records the same in `config.pruned_channels` (`{unit path: sorted list}`, paths relative to the base
model), which is what checkpoints carry.

This module depends only on torch and transformers (and `conv_layouts.py`): its source is also copied into the
self-contained modeling file written beside shrunk conv checkpoints (see `remote.py`), so keep it that way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from .conv_layouts import ConvLayout, block_paths, find_conv_layout

logger = logging.get_logger(__name__)

PRUNED_CHANNELS_ATTR = "pruned_channels"


def _is_depthwise(unit: nn.Module, layout: ConvLayout) -> bool:
    conv = getattr(unit, layout.conv)
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def channel_units(model: nn.Module, layout: ConvLayout) -> dict[str, tuple[nn.Module, list[nn.Module], nn.Module]]:
    """
    `{unit path: (unit, depthwise units after it, consumer)}` for every inner unit of every block (paths relative
    to the base model): the unit produces the channels, the depthwise units pass them through, the consumer (the
    next ordinary conv of the chain) takes them as input. The last unit of a chain feeds the residual addition and
    is not listed.
    """
    base = getattr(model, "base_model", model)
    units: dict[str, tuple[nn.Module, list[nn.Module], nn.Module]] = {}
    for block_path in block_paths([name for name, _ in base.named_modules()], layout):
        block = base.get_submodule(block_path)
        chain = []
        for path in layout.chain:
            try:
                chain.append((path, block.get_submodule(path)))
            except AttributeError:
                continue
        for i, (path, unit) in enumerate(chain):
            if _is_depthwise(unit, layout):
                continue
            passing = []
            for _, following in chain[i + 1 :]:
                if _is_depthwise(following, layout):
                    passing.append(following)
                    continue
                units[f"{block_path}.{path}"] = (unit, passing, following)
                break
    return units


def original_channels(unit: nn.Module, layout: ConvLayout) -> int:
    """Output channels of `unit` in the unpruned model."""
    return int(getattr(unit, layout.conv).out_channels) + len(getattr(unit, PRUNED_CHANNELS_ATTR, ()))


def kept_channels(unit: nn.Module, layout: ConvLayout) -> list[int]:
    """The original indices of the channels `unit` still has, in order."""
    removed = set(getattr(unit, PRUNED_CHANNELS_ATTR, ()))
    return [i for i in range(original_channels(unit, layout)) if i not in removed]


def _sliced(param: torch.Tensor, keep: torch.Tensor, dim: int) -> nn.Parameter:
    return nn.Parameter(param.data.index_select(dim, keep).clone(), requires_grad=param.requires_grad)


def _slice_norm_(norm: nn.BatchNorm2d, keep: torch.Tensor) -> None:
    if norm.affine:
        norm.weight = _sliced(norm.weight, keep, 0)
        norm.bias = _sliced(norm.bias, keep, 0)
    if norm.track_running_stats:
        assert norm.running_mean is not None and norm.running_var is not None  # registered when tracking
        norm.running_mean = norm.running_mean.index_select(0, keep).clone()
        norm.running_var = norm.running_var.index_select(0, keep).clone()
    norm.num_features = len(keep)


@torch.no_grad()
def remove_channels_(
    unit: nn.Module,
    passing: list[nn.Module],
    following: nn.Module,
    layout: ConvLayout,
    original_ids: Iterable[int],
) -> None:
    """
    Remove the channels `original_ids` (original numbering) from `unit`, from the depthwise units `passing`
    through and from the matching inputs of `following`.

    Raises:
        `ValueError`: an index out of range or already removed, or a removal that would leave no channel.
    """
    kept = kept_channels(unit, layout)
    position = {orig: pos for pos, orig in enumerate(kept)}
    drop = set(int(i) for i in original_ids)
    missing = sorted(i for i in drop if i not in position)
    if missing:
        raise ValueError(f"Channels {missing} are out of range or already removed.")
    if len(drop) >= len(kept):
        raise ValueError("Removing these channels would leave the unit without any channel.")
    if not drop:
        return
    keep = torch.tensor([position[i] for i in kept if i not in drop], dtype=torch.long)
    conv = getattr(unit, layout.conv)
    if conv.groups != 1 or getattr(following, layout.conv).groups != 1:
        raise ValueError("Channels are produced and consumed by ordinary convolutions only (groups=1).")
    keep = keep.to(conv.weight.device)
    for producer in (unit, *passing):  # the depthwise convs keep one filter per remaining channel
        pconv = getattr(producer, layout.conv)
        pconv.weight = _sliced(pconv.weight, keep, 0)
        if pconv.bias is not None:
            pconv.bias = _sliced(pconv.bias, keep, 0)
        pconv.out_channels = len(keep)
        if producer is not unit:
            pconv.in_channels = pconv.groups = len(keep)
        _slice_norm_(getattr(producer, layout.norm), keep)
    nxt = getattr(following, layout.conv)
    nxt.weight = _sliced(nxt.weight, keep, 1)
    nxt.in_channels = len(keep)
    setattr(unit, PRUNED_CHANNELS_ATTR, set(getattr(unit, PRUNED_CHANNELS_ATTR, ())) | drop)


def normalize_channel_structure(value: Any, counts: Mapping[str, int]) -> dict[str, list[int]]:
    """
    Check a `pruned_channels` value read from a config (untrusted input) and return it as `{path: sorted list}`.

    Args:
        value: the config field (`None` or a mapping from unit path to a list of original channel indices).
        counts (`Mapping[str, int]`): the original channel count of every inner unit, by path.

    Raises:
        `ValueError`: naming the field and the first bad entry (unknown unit, bad or repeated index, no channel
        left).
    """
    field = PRUNED_CHANNELS_ATTR
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"`{field}` must map unit paths to lists of channel indices, got {type(value).__name__}.")
    result: dict[str, list[int]] = {}
    for path, ids in value.items():
        if path not in counts:
            raise ValueError(f"`{field}` names {path!r}, which is not an inner conv unit of this model.")
        if not isinstance(ids, (list, tuple)):
            raise ValueError(f"`{field}`: the entry of {path!r} must be a list of channel indices.")
        seen: set[int] = set()
        for index in ids:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < counts[path]:
                raise ValueError(f"`{field}`: {path!r} lists {index!r}, not an index in 0..{counts[path] - 1}.")
            if index in seen:
                raise ValueError(f"`{field}`: {path!r} lists index {index} twice.")
            seen.add(index)
        if len(seen) >= counts[path]:
            raise ValueError(f"`{field}`: {path!r} would lose all of its {counts[path]} channels.")
        if seen:
            result[path] = sorted(seen)
    return result


def apply_channel_structure_(model: nn.Module, layout: ConvLayout, structure: Mapping[str, Iterable[int]]) -> None:
    """
    Bring every inner unit to the given structure (original indices removed per unit), removing only what is
    missing. Idempotent.

    Raises:
        `ValueError`: if a unit already lost a channel that the structure keeps.
    """
    for path, (unit, passing, following) in channel_units(model, layout).items():
        want = set(structure.get(path, ()))
        have = set(getattr(unit, PRUNED_CHANNELS_ATTR, ()))
        if want == have:
            continue
        if not have <= want:
            raise ValueError(f"{path} has already lost channels {sorted(have - want)} which the structure keeps.")
        remove_channels_(unit, passing, following, layout, want - have)


def apply_config_channels_(model: nn.Module) -> bool:
    """
    Shrink `model` to the channels recorded in `model.config.pruned_channels` (before weights are loaded).

    Returns:
        `bool`: whether the config records a channel structure that was applied.
    """
    config = getattr(model, "config", None)
    value = getattr(config, PRUNED_CHANNELS_ATTR, None) if config is not None else None
    if config is None or not value:
        return False
    layout = find_conv_layout(config)
    if layout is None:
        logger.warning_once(
            f"The config records pruned channels but model type {config.model_type!r} has no conv layout; the "
            "model is built unpruned."
        )
        return False
    units = channel_units(model, layout)
    if not units:
        return False  # a model of the family without the encoder blocks (a bare embedder, say)
    counts = {path: original_channels(unit, layout) for path, (unit, _, _) in units.items()}
    structure = normalize_channel_structure(value, counts)
    apply_channel_structure_(model, layout, structure)
    config.pruned_channels = structure
    return True
