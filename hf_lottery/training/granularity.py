"""What a lottery run prunes: single weights, whole heads and FFN neurons, or conv channels and stripes. One
strategy interface.

Both front doors ([`LotteryTrainer`] and [`LotteryCallback`]) ask the strategy of `args.granularity` for the
weights a dense mask covers, for the next mask, for the extra fields of a round's record, for the callbacks that
train its penalties and for the final model; neither branches on the granularity itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from torch import nn
from transformers import PreTrainedModel, TrainerCallback

from ..pruning.prune import prune_with_arguments, pruning_seed
from ..scoring import scoring_spec
from ..structured.conv_imp import (
    channel_parameters,
    compact_channels_by_mask,
    kept_stripes,
    prune_channels,
    prune_stripes,
    removed_channels,
    stripe_model_by_mask,
    stripe_parameters,
)
from ..structured.imp import compact_by_mask, prune_structured, removed_groups, structured_parameters
from ..ticket.mask import TicketMask
from ..utils.parameters import prunable_parameters
from .conv_regularization import ChannelPenaltyCallback, FilterSkeletonCallback

Batches = Callable[[], Iterable[Any]]


def _pretrained(model: nn.Module) -> PreTrainedModel:
    # The structured strategies read the architecture from `model.config` (its layout): they are handed the
    # Transformers model a run trains, which the interface types as any module.
    return cast(PreTrainedModel, model)


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

    def training_callbacks(self, args: Any) -> list[TrainerCallback]:
        """Callbacks that train this granularity's penalties during every round (none by default)."""
        return []


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
        return structured_parameters(_pretrained(model))

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
        removed = removed_groups(_pretrained(model), mask)
        return {"removed_groups": {kind: sum(len(v) for v in layers.values()) for kind, layers in removed.items()}}

    def final_model(self, model: nn.Module, mask: TicketMask) -> nn.Module | None:
        return compact_by_mask(_pretrained(model), mask)


class ChannelGranularity(Granularity):
    """Conv nets: the inner channels of residual blocks, ranked by |BatchNorm scale| (the gates), trained with the
    polarization (or L1) penalty; compacted when the model is saved. Sparsities count channels."""

    name = "channel"

    def covered_parameters(self, model: nn.Module, args: Any) -> dict[str, nn.Parameter]:
        return channel_parameters(_pretrained(model))

    def prune(self, model, args, sparsity, mask, index, batches):
        return prune_channels(
            model, sparsity, mask, scope=args.pruning_scope, max_tensor_sparsity=args.max_tensor_sparsity
        )

    def record_fields(self, model: nn.Module, mask: TicketMask) -> dict[str, Any]:
        removed = removed_channels(_pretrained(model), mask)
        return {"removed_groups": {"channels": sum(len(v) for v in removed.values())}}

    def final_model(self, model: nn.Module, mask: TicketMask) -> nn.Module | None:
        return compact_channels_by_mask(_pretrained(model), mask)

    def training_callbacks(self, args: Any) -> list[TrainerCallback]:
        if args.channel_regularizer == "none":
            return []
        return [ChannelPenaltyCallback(args.channel_regularizer, args.channel_penalty, args.polarization_t)]


class StripeGranularity(Granularity):
    """Conv nets: stripes (a filter's 1x1 slice at one kernel position), ranked by their weights after training
    with the Filter Skeleton; saved as stripe-wise convs. Sparsities count conv weights."""

    name = "stripe"

    def covered_parameters(self, model: nn.Module, args: Any) -> dict[str, nn.Parameter]:
        return stripe_parameters(_pretrained(model))

    def prune(self, model, args, sparsity, mask, index, batches):
        return prune_stripes(
            model, sparsity, mask, scope=args.pruning_scope, max_tensor_sparsity=args.max_tensor_sparsity
        )

    def record_fields(self, model: nn.Module, mask: TicketMask) -> dict[str, Any]:
        return {"removed_groups": {"stripes": sum(int((~kept_stripes(m)).sum()) for m in mask.values())}}

    def final_model(self, model: nn.Module, mask: TicketMask) -> nn.Module | None:
        return stripe_model_by_mask(_pretrained(model), mask)

    def training_callbacks(self, args: Any) -> list[TrainerCallback]:
        return [FilterSkeletonCallback(args.stripe_penalty, args.stripe_skeleton_learning_rate)]


_CONV_GRANULARITIES: dict[str, type[Granularity]] = {"channel": ChannelGranularity, "stripe": StripeGranularity}


def granularity_for(args: Any) -> Granularity:
    """The strategy of `args.granularity`."""
    if args.granularity == "weight":
        return WeightGranularity()
    if args.granularity in _CONV_GRANULARITIES:
        return _CONV_GRANULARITIES[args.granularity]()
    return GroupGranularity(args.granularity)
