"""Structured pruning of transformer blocks: remove attention heads and feed-forward neurons.

`from_pretrained` rebuilds shrunk models through the loading hooks of `hf_lottery.integrations.transformers`,
which `import hf_lottery` installs.
"""

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
from .surgery import prune_heads, prune_neurons, pruned_structure, structure_counts

__all__ = [
    "STRUCTURE_SCORERS",
    "BlockLayout",
    "GroupScores",
    "StructureGates",
    "StructureScores",
    "attach_gates",
    "compact",
    "encoder_matmul_flops",
    "find_layout",
    "first_order_scores",
    "gate_scores",
    "get_layout",
    "magnitude_scores",
    "polarization_regularizer",
    "prune_heads",
    "prune_neurons",
    "pruned_structure",
    "random_scores",
    "register_structure_scoring",
    "register_layout",
    "score_structures",
    "select_below",
    "select_structures",
    "structure_counts",
]
