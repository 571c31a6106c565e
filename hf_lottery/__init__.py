"""hf_lottery: lottery tickets and structured pruning for Hugging Face Transformers."""

from .constants import __version__
from .deploy import SpeedReport, export_for_cpu, load_for_cpu, measure_speed, write_speed_card
from .integrations import transformers as _transformers_hooks
from .integrations.peft import (
    apply_ticket_to_peft,
    load_peft_ticket,
    merge_and_unload_sparse,
    remove_ticket_from_peft,
)
from .integrations.transformers import StructureRecordError
from .integrations.transformers_logging import follow_transformers_verbosity
from .pruning.branches import random_pruning_like, reinitialize_survivors, transfer_ticket
from .pruning.prune import prune
from .scoring import get_scoring, register_scoring, registered_methods, scoring_kwargs_from_args, scoring_spec
from .scoring.sparsegpt import load_reconstruction_, sparsegpt_update
from .selector import LayerCollapseError, select_mask
from .structured import (
    BlockLayout,
    StructureGates,
    attach_gates,
    compact,
    pad_neurons,
    polarization_regularizer,
    prune_heads,
    prune_layers,
    prune_neurons,
    pruned_structure,
    register_layout,
    select_structures,
    structure_counts,
)
from .ticket.config import TicketConfig
from .ticket.hub import TicketUploadError
from .ticket.mask import TicketMask
from .ticket.sparse_model import save_sparse_model
from .training.arguments import LotteryArguments
from .training.callback import LotteryCallback
from .training.schedule import sparsity_schedule
from .training.trainer import LotteryTrainer
from .utils.parameters import default_prunable_names, prunable_parameters

# `from_pretrained` rebuilds shrunk models and `save_pretrained` writes checkpoints that load without hf_lottery.
_transformers_hooks.install_hooks()
# Our loggers take transformers' verbosity (set_verbosity_info(), TrainingArguments.log_level).
follow_transformers_verbosity()

__all__ = [
    "__version__",
    "BlockLayout",
    "StructureGates",
    "StructureRecordError",
    "attach_gates",
    "compact",
    "pad_neurons",
    "polarization_regularizer",
    "prune_heads",
    "prune_layers",
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
    "load_peft_ticket",
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
    "SpeedReport",
    "export_for_cpu",
    "load_for_cpu",
    "measure_speed",
    "write_speed_card",
    "load_reconstruction_",
    "sparsegpt_update",
]
