"""Early checks of what users hand to `LotteryTrainer`, with errors that say what to do.

Each check catches an input that otherwise fails deep inside the Trainer with an unrelated message, or does not
fail at all and silently gives another result than asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..ticket.mask import TicketMask

__all__ = ["MAX_SCHEDULE_ROUNDS", "as_initial_mask", "check_datasets", "check_resumed_schedule"]

# The most IMP rounds a run may schedule: far beyond any sensible run (20 rounds of 20% reach 98.8% sparsity), and
# a bound on the schedule's size before it is built (pruning_rate=1e-9 would ask for a billion rounds).
MAX_SCHEDULE_ROUNDS = 1000


def _is_empty(dataset: Any) -> bool:
    try:
        return len(dataset) == 0
    except TypeError:  # an IterableDataset: its length is unknown
        return False


def check_datasets(trainer: Any) -> None:
    """Refuse empty train or eval datasets (torch's sampler reports "num_samples=0"; an empty eval set gives a
    history without metrics)."""
    if trainer.train_dataset is not None and _is_empty(trainer.train_dataset):
        raise ValueError(
            "train_dataset is empty: every lottery round trains on it. Check the split and the preprocessing "
            "(e.g. a filter that removed every example)."
        )
    eval_sets = trainer.eval_dataset if isinstance(trainer.eval_dataset, dict) else {"": trainer.eval_dataset}
    for name, dataset in eval_sets.items():
        if dataset is not None and _is_empty(dataset):
            raise ValueError(
                f"eval_dataset{f'[{name!r}]' if name else ''} is empty, so the rounds would be recorded without "
                "metrics. Pass a non-empty eval_dataset, or none at all."
            )


def as_initial_mask(mask: Any, args: Any) -> TicketMask | None:
    """The `mask=` given to `LotteryTrainer` as a [`TicketMask`], checked against the lottery settings.

    Raises:
        `TypeError`: `mask` is not a mapping of parameter names to tensors.
        `ValueError`: `mask` is already sparser than `args.target_sparsity` (the trainer would only train it).
    """
    if mask is None:
        return None
    if not isinstance(mask, Mapping):
        raise TypeError(
            f"mask= must be a TicketMask (or a dict of parameter name to boolean tensor), got {type(mask).__name__}. "
            "Load one with TicketMask.from_pretrained(...) or compute it with hf_lottery.prune(model, sparsity)."
        )
    mask = mask if isinstance(mask, TicketMask) else TicketMask(mask)
    if mask.sparsity > args.target_sparsity + 1e-9:
        raise ValueError(
            f"The mask is already {mask.sparsity:.2%} sparse, above target_sparsity={args.target_sparsity}: no "
            "round could reach the target. Raise target_sparsity to at least the mask's sparsity (equal: train the "
            "mask as it is, one round)."
        )
    return mask


def check_resumed_schedule(saved: list[float], args: Any) -> None:
    """Refuse to resume a run with lottery settings that give another sparsity schedule than the saved one."""
    current = args.sparsity_schedule(start=saved[0]) if saved else []
    if len(current) != len(saved) or any(abs(a - b) > 1e-9 for a, b in zip(current, saved)):
        raise ValueError(
            f"The run in {args.output_dir} was started with the sparsity schedule {saved}, but these LotteryArguments "
            f"(target_sparsity, pruning_rate, pruning_rate_of) give {current}. Resume with the settings the run "
            "started with, or start a new run in another output_dir."
        )
