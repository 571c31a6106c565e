"""Structured pruning of transformer blocks: remove attention heads and feed-forward neurons.

Importing this package installs the loading hooks (see `loading.py`), so that `from_pretrained` rebuilds shrunk
models (ours, and transformers-4 checkpoints that carry `pruned_heads`) and `save_pretrained` writes checkpoints that
also load without hf_lottery (`trust_remote_code=True`).
"""

from .flops import encoder_matmul_flops
from .gates import GroupScores, StructureGates, attach_gates
from .layouts import BlockLayout, find_layout, get_layout, register_layout
from .loading import hooks_installed, install_hooks, remove_hooks
from .polarization import polarization_regularizer
from .scores import (
    STRUCTURE_SCORERS,
    StructureScores,
    first_order_scores,
    gate_scores,
    magnitude_scores,
    random_scores,
    score_structures,
)
from .selection import compact, select_below, select_structures
from .surgery import prune_heads, prune_neurons, pruned_structure, structure_counts

install_hooks()

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
    "hooks_installed",
    "install_hooks",
    "magnitude_scores",
    "polarization_regularizer",
    "prune_heads",
    "prune_neurons",
    "pruned_structure",
    "random_scores",
    "register_layout",
    "remove_hooks",
    "score_structures",
    "select_below",
    "select_structures",
    "structure_counts",
]
