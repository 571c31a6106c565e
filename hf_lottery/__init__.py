"""hf_lottery: lottery tickets and structured pruning for Hugging Face Transformers."""

from .branches import random_pruning_like, reinitialize_survivors, transfer_ticket
from .masks import TicketMask
from .pruning import prune
from .scoring import get_scoring, register_scoring, registered_methods, scoring_kwargs_from_args, scoring_spec
from .selection import default_prunable_names, prunable_parameters
from .selector import LayerCollapseError, select_mask

__version__ = "0.1.0"

__all__ = [
    "LayerCollapseError",
    "TicketMask",
    "default_prunable_names",
    "get_scoring",
    "prunable_parameters",
    "prune",
    "random_pruning_like",
    "register_scoring",
    "registered_methods",
    "reinitialize_survivors",
    "scoring_kwargs_from_args",
    "scoring_spec",
    "select_mask",
    "transfer_ticket",
]
