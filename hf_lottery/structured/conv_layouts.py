"""Architecture tables of conv nets: where the residual blocks and their conv + norm units live.

A family is data (one [`ConvLayout`]), never a per-model code path. Channel pruning removes only the *inner*
channels of a residual block (the outputs of every unit of the block's chain but the last): the channels that
flow through the residual connection are never touched, so the shortcut, the addition and the next block keep
their widths and no tie between blocks is needed. A depthwise unit of the chain (groups == its channels, as in
MobileNetV2's inverted residuals) passes channels through: a channel removed before it is removed from it too.

This module only depends on the standard library: its source is also copied into the self-contained modeling file
written beside shrunk conv checkpoints (see `remote.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ConvLayout:
    """
    Where the residual blocks of one conv-net family live.

    Args:
        name (`str`):
            Family name, used in messages.
        model_types (`tuple[str, ...]`):
            The `config.model_type` values that share this layout.
        blocks (`str`):
            Regular expression matched (`re.fullmatch`) against module paths relative to the base model
            (`model.base_model`); every match is one residual block.
        chain (`tuple[str, ...]`):
            Paths, relative to a block, of its conv + norm units in the order data flows through them (paths a
            block lacks are skipped: ResNet's basic blocks have two units, bottleneck blocks three).
        conv (`str`):
            Attribute of a unit holding its `nn.Conv2d`.
        norm (`str`):
            Attribute of a unit holding the `nn.BatchNorm2d` right after the conv (its scales gate the channels).
    """

    name: str
    model_types: tuple[str, ...]
    blocks: str
    chain: tuple[str, ...]
    conv: str = "convolution"
    norm: str = "normalization"


RESNET_LAYOUT = ConvLayout(
    name="resnet",
    model_types=("resnet",),
    blocks=r"encoder\.stages\.\d+\.layers\.\d+",
    chain=("layer.0", "layer.1", "layer.2"),
)

CONV_LAYOUTS: dict[str, ConvLayout] = {}


def register_conv_layout(layout: ConvLayout, overwrite: bool = False) -> None:
    """
    Make a conv-net family channel-prunable by registering its [`ConvLayout`] for each of its `model_types`.

    Args:
        layout (`ConvLayout`):
            The architecture table of the family.
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace a layout already registered for one of the model types.
    """
    for model_type in layout.model_types:
        if model_type in CONV_LAYOUTS and not overwrite and CONV_LAYOUTS[model_type] != layout:
            raise ValueError(f"A conv layout is already registered for model type {model_type!r}.")
        CONV_LAYOUTS[model_type] = layout


MOBILENET_V2_LAYOUT = ConvLayout(
    name="mobilenet_v2",
    model_types=("mobilenet_v2",),
    blocks=r"conv_stem|layer\.\d+",
    chain=("first_conv", "expand_1x1", "conv_3x3", "reduce_1x1"),
)

for _layout in (RESNET_LAYOUT, MOBILENET_V2_LAYOUT):
    register_conv_layout(_layout)


def find_conv_layout(config: Any) -> ConvLayout | None:
    """The [`ConvLayout`] of a model config, or `None` when its family is not supported."""
    model_type = getattr(config, "model_type", None)
    return None if model_type is None else CONV_LAYOUTS.get(model_type)


def get_conv_layout(config: Any) -> ConvLayout:
    """
    The [`ConvLayout`] of a model config.

    Raises:
        `ValueError`: if the family has no registered conv layout.
    """
    layout = find_conv_layout(config)
    if layout is None:
        raise ValueError(
            f"Channel pruning does not support model type {getattr(config, 'model_type', None)!r}; "
            f"supported: {', '.join(sorted(CONV_LAYOUTS))} (add one with `register_conv_layout`)."
        )
    return layout


def block_paths(module_paths: list[str], layout: ConvLayout) -> list[str]:
    """The paths among `module_paths` (relative to the base model) that are residual blocks of `layout`."""
    pattern = re.compile(layout.blocks)
    return [path for path in module_paths if pattern.fullmatch(path)]
