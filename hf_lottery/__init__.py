"""hf_lottery: lottery tickets and structured pruning for Hugging Face Transformers."""

from .arguments import LotteryArguments, sparsity_schedule
from .branches import random_pruning_like, reinitialize_survivors, transfer_ticket
from .callback import LotteryCallback
from .hub import TicketConfig, TicketUploadError, save_sparse_model
from .masks import TicketMask
from .peft_utils import apply_ticket_to_peft, merge_and_unload_sparse, remove_ticket_from_peft
from .pruning import prune
from .scoring import get_scoring, register_scoring, registered_methods, scoring_kwargs_from_args, scoring_spec
from .selection import default_prunable_names, prunable_parameters
from .selector import LayerCollapseError, select_mask
from .structured import (
    BlockLayout,
    StructureGates,
    attach_gates,
    compact,
    polarization_regularizer,
    prune_heads,
    prune_neurons,
    pruned_structure,
    register_layout,
    select_structures,
    structure_counts,
)
from .trainer import LotteryTrainer

__version__ = "0.1.0"

__all__ = [
    "BlockLayout",
    "StructureGates",
    "attach_gates",
    "compact",
    "polarization_regularizer",
    "prune_heads",
    "prune_neurons",
    "pruned_structure",
    "register_layout",
    "select_structures",
    "structure_counts",
    "LayerCollapseError",
    "LotteryArguments",
    "LotteryCallback",
    "LotteryTrainer",
    "TicketConfig",
    "TicketMask",
    "TicketUploadError",
    "apply_ticket_to_peft",
    "default_prunable_names",
    "get_scoring",
    "merge_and_unload_sparse",
    "prunable_parameters",
    "prune",
    "random_pruning_like",
    "register_scoring",
    "registered_methods",
    "reinitialize_survivors",
    "save_sparse_model",
    "scoring_kwargs_from_args",
    "scoring_spec",
    "remove_ticket_from_peft",
    "select_mask",
    "sparsity_schedule",
    "transfer_ticket",
]
