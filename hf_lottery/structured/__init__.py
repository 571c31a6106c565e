"""Structured pruning: attention heads and feed-forward neurons of transformer blocks; inner channels and stripes
of conv nets.

`from_pretrained` rebuilds shrunk models through the loading hooks of `hf_lottery.integrations.transformers`,
which `import hf_lottery` installs.
"""

from .conv_flops import conv_macs
from .conv_imp import (
    compact_channels_by_mask,
    conv_structure_counts,
    prune_channels,
    prune_stripes,
    stripe_model_by_mask,
)
from .conv_layouts import ConvLayout, find_conv_layout, get_conv_layout, register_conv_layout
from .flops import encoder_matmul_flops
from .gates import GroupScores, StructureGates, attach_gates
from .layouts import BlockLayout, find_layout, get_layout, register_layout
from .polarization import polarization_regularizer
from .removal import compact, select_below, select_structures
from .scores import (
    STRUCTURE_SCORERS,
    StructureScores,
    first_order_scores,
    gate_scores,
    magnitude_scores,
    random_scores,
    register_structure_scoring,
    score_structures,
)
from .stripes import StripeConv2d, stripe_conv_im2col
from .surgery import (
    pad_neurons,
    prune_heads,
    prune_layers,
    prune_neurons,
    pruned_structure,
    removed_layers,
    structure_counts,
)

__all__ = [
    "STRUCTURE_SCORERS",
    "BlockLayout",
    "ConvLayout",
    "GroupScores",
    "StructureGates",
    "StripeConv2d",
    "StructureScores",
    "attach_gates",
    "compact",
    "compact_channels_by_mask",
    "conv_macs",
    "conv_structure_counts",
    "encoder_matmul_flops",
    "find_conv_layout",
    "find_layout",
    "first_order_scores",
    "gate_scores",
    "get_conv_layout",
    "get_layout",
    "magnitude_scores",
    "pad_neurons",
    "polarization_regularizer",
    "prune_heads",
    "prune_channels",
    "prune_layers",
    "prune_neurons",
    "prune_stripes",
    "pruned_structure",
    "random_scores",
    "removed_layers",
    "register_structure_scoring",
    "register_conv_layout",
    "register_layout",
    "score_structures",
    "select_below",
    "select_structures",
    "stripe_conv_im2col",
    "stripe_model_by_mask",
    "structure_counts",
]
