"""What a lottery run prunes: single weights, or whole heads and FFN neurons. One strategy interface.

Both front doors ([`LotteryTrainer`] and [`LotteryCallback`]) ask the strategy of `args.granularity` for the
weights a dense mask covers, for the next mask, for the extra fields of a round's record and for the final model;
neither branches on the granularity itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..pruning.prune import prune_with_arguments, pruning_seed
from ..scoring import scoring_spec
from ..structured.imp import compact_by_mask, prune_structured, removed_groups, structured_parameters
from ..ticket.mask import TicketMask
from ..utils.parameters import prunable_parameters

Batches = Callable[[], Iterable[Any]]


class Granularity:
    """The interface: one instance per run, built by [`granularity_for`]."""

    name = "weight"

    def covered_parameters(self, model: nn.Module, args: Any) -> dict[str, nn.Parameter]:
        """`{name: parameter}` a dense mask of this run covers."""
        raise NotImplementedError

    def prunes_at_init(self, args: Any) -> bool:
        """True when the ticket is chosen once from θ0 (the schedule is then dense, target)."""
        return False

    def prune(
        self, model: nn.Module, args: Any, sparsity: float, mask: TicketMask | None, index: int, batches: Batches
    ) -> TicketMask:
        """The mask of round (or level) `index` at `sparsity`, nested in `mask`."""
        raise NotImplementedError

    def record_fields(self, model: nn.Module, mask: TicketMask) -> dict[str, Any]:
        """Fields this granularity adds to a round's history record."""
        return {}

    def final_model(self, model: nn.Module, mask: TicketMask) -> nn.Module | None:
        """The model `save_model` writes instead of the masked one (None: the masked model, zeros in place)."""
        return None


class WeightGranularity(Granularity):
    """Unstructured pruning: any scoring method of the registry, global or per tensor."""

    name = "weight"

    def covered_parameters(self, model: nn.Module, args: Any) -> dict[str, nn.Parameter]:
        return prunable_parameters(model, args.prune_modules)

    def prunes_at_init(self, args: Any) -> bool:
        return scoring_spec(args.pruning_method).at_init

    def prune(self, model, args, sparsity, mask, index, batches):
        return prune_with_arguments(model, args, sparsity, mask, index, batches)


class GroupGranularity(Granularity):
    """Structured pruning: heads and/or FFN neurons as all-or-nothing groups, compacted when the model is saved."""

    def __init__(self, name: str):
        self.name = name

    def covered_parameters(self, model: nn.Module, args: Any) -> dict[str, nn.Parameter]:
        return structured_parameters(model)

    def prune(self, model, args, sparsity, mask, index, batches):
        extra: dict[str, Any] = {}
        if args.structured_scoring == "first_order":
            extra["batches"] = batches()
        elif args.structured_scoring == "random":
            extra["generator"] = torch.Generator().manual_seed(pruning_seed(args, index))
        return prune_structured(
            model, sparsity, self.name, mask=mask, scope=args.pruning_scope, method=args.structured_scoring, **extra
        )

    def record_fields(self, model: nn.Module, mask: TicketMask) -> dict[str, Any]:
        removed = removed_groups(model, mask)
        return {"removed_groups": {kind: sum(len(v) for v in layers.values()) for kind, layers in removed.items()}}

    def final_model(self, model: nn.Module, mask: TicketMask) -> nn.Module | None:
        return compact_by_mask(model, mask)


def granularity_for(args: Any) -> Granularity:
    """The strategy of `args.granularity`."""
    return WeightGranularity() if args.granularity == "weight" else GroupGranularity(args.granularity)
