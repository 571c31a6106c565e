"""hf_lottery: lottery tickets and structured pruning for Hugging Face Transformers."""

from .arguments import LotteryArguments, sparsity_schedule
from .callback import LotteryCallback
from .masks import TicketMask
from .peft_utils import apply_ticket_to_peft, merge_and_unload_sparse, remove_ticket_from_peft
from .pruning import prune
from .scoring import get_scoring, register_scoring, registered_methods
from .selection import default_prunable_names, prunable_parameters
from .selector import LayerCollapseError, select_mask
from .trainer import LotteryTrainer

__version__ = "0.1.0"

__all__ = [
    "LayerCollapseError",
    "LotteryArguments",
    "LotteryCallback",
    "LotteryTrainer",
    "TicketMask",
    "apply_ticket_to_peft",
    "default_prunable_names",
    "get_scoring",
    "merge_and_unload_sparse",
    "prunable_parameters",
    "prune",
    "register_scoring",
    "registered_methods",
    "remove_ticket_from_peft",
    "select_mask",
    "sparsity_schedule",
]
