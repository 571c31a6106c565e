"""hf_lottery: lottery tickets and structured pruning for Hugging Face Transformers."""

from .arguments import LotteryArguments, sparsity_schedule
from .callback import LotteryCallback
from .hub import TicketConfig, TicketUploadError, save_sparse_model
from .masks import TicketMask
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
    "TicketConfig",
    "TicketMask",
    "TicketUploadError",
    "default_prunable_names",
    "get_scoring",
    "prunable_parameters",
    "prune",
    "register_scoring",
    "registered_methods",
    "save_sparse_model",
    "select_mask",
    "sparsity_schedule",
]
