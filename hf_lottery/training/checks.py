"""Early checks of what users hand to `LotteryTrainer`, with errors that say what to do.

Each check catches an input that otherwise fails deep inside the Trainer with an unrelated message, or does not
fail at all and silently gives another result than asked for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from transformers.utils import logging

from ..selector import resolve_max_tensor_sparsity
from ..ticket.fingerprint import combine_digests, tensor_digests
from ..ticket.mask import TicketMask
from .schedule import at_target

__all__ = [
    "MAX_SCHEDULE_ROUNDS",
    "as_initial_mask",
    "check_datasets",
    "check_resumed_settings",
    "check_run_settings",
    "check_target_reachable",
    "resumed_schedule",
    "ticket_settings",
]

# The most IMP rounds a run may schedule: far beyond any sensible run (20 rounds of 20% reach 98.8% sparsity), and
# a bound on the schedule's size before it is built (pruning_rate=1e-9 would ask for a billion rounds).
MAX_SCHEDULE_ROUNDS = 1000

logger = logging.get_logger(__name__)


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
        `ValueError`: `mask` is already sparser than `args.target_sparsity` by more than one weight (`at_target`).
    """
    if mask is None:
        return None
    if not isinstance(mask, Mapping):
        raise TypeError(
            f"mask= must be a TicketMask (or a dict of parameter name to boolean tensor), got {type(mask).__name__}. "
            "Load one with TicketMask.from_pretrained(...) or compute it with hf_lottery.prune(model, sparsity)."
        )
    mask = mask if isinstance(mask, TicketMask) else TicketMask(mask)
    if mask.sparsity > args.target_sparsity and not at_target(mask.sparsity, mask.num_params, args.target_sparsity):
        raise ValueError(
            f"The mask is already {mask.sparsity:.2%} sparse, above target_sparsity={args.target_sparsity}: no "
            "round could reach the target. Raise target_sparsity to at least the mask's sparsity (equal: train the "
            "mask as it is, one round)."
        )
    return mask


def resumed_schedule(
    saved: list[float], planned: list[float], output_dir: str | None, extendable: bool = True
) -> list[float]:
    """The schedule a resumed run goes on with: the saved one, or `planned` when it extends the saved one.

    `planned` is the schedule these arguments give from the saved start. A planned schedule that begins with every
    saved level and goes further (a higher `target_sparsity`) continues the run to the new target: the rounds
    already trained are kept, as open_lth keeps its levels when asked for more. Any other difference is refused,
    and so is every difference when not `extendable` (a method that prunes at θ0 chose its one ticket at the start).
    """
    if _same_levels(saved, planned):
        return saved
    if extendable and len(planned) > len(saved) and _same_levels(saved, planned[: len(saved)]):
        logger.info(
            "Extending the lottery run in %s from %.1f%% to %.1f%% sparsity: rounds 0-%d are kept.",
            output_dir,
            100 * saved[-1],
            100 * planned[-1],
            len(saved) - 1,
        )
        return planned
    raise ValueError(
        f"The run in {output_dir} was started with the sparsity schedule {saved}, but these LotteryArguments "
        f"(target_sparsity, pruning_rate, pruning_rate_of, pruning_method) give {planned}. Resume with the settings "
        "the run started with, raise only target_sparsity to extend it (same pruning_rate and pruning_rate_of), "
        "or start a new run in another output_dir."
    )


def _same_levels(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-9 for x, y in zip(a, b))


# Fields of LotteryArguments that must hold integers (a JSON config may give 100.0, or 1e2).
_INTEGER_FIELDS = (
    "rewind_step",
    "pruning_seed",
    "pruning_interval_steps",
    "search_round_steps",
    "synflow_iterations",
    "hydra_epochs",
    "hydra_adversarial_steps",
)
# Fields that must hold finite numbers (NaN passes every `<= 0` check).
_FLOAT_FIELDS = (
    "target_sparsity",
    "pruning_rate",
    "finetune_learning_rate",
    "hydra_learning_rate",
    "hydra_adversarial_epsilon",
    "learning_rate",
)


def schedule_length(args: Any) -> int:
    """The number of pruning rounds the schedule from a dense model to `target_sparsity` has, computed without
    building it."""
    target, rate = float(args.target_sparsity), float(args.pruning_rate)
    if target <= 0:
        return 0
    if args.pruning_rate_of == "original":
        return math.ceil(target / rate - 1e-9)
    return math.ceil(math.log1p(-target) / math.log1p(-rate) - 1e-9)


def check_run_settings(args: Any) -> None:
    """Checks of the lottery settings made when a run is set up, before anything trains: finite numbers,
    integer counts and a schedule of at most `MAX_SCHEDULE_ROUNDS` rounds.

    Raises:
        `ValueError`: naming the setting.
    """
    for name in _INTEGER_FIELDS:
        value = getattr(args, name, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    for name in _FLOAT_FIELDS:
        value = getattr(args, name, None)
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}.")
    rounds = schedule_length(args)
    if rounds > MAX_SCHEDULE_ROUNDS:
        raise ValueError(
            f"target_sparsity={args.target_sparsity} at pruning_rate={args.pruning_rate} "
            f"(of the {args.pruning_rate_of} weights) needs {rounds} rounds, more than the {MAX_SCHEDULE_ROUNDS} a run "
            "may schedule. Raise pruning_rate (IMP prunes 10-20% per round)."
        )


def check_target_reachable(args: Any, mask: Mapping[str, Any]) -> None:
    """Refuse a `target_sparsity` the layer-collapse guard cannot reach on the covered weights (`mask`'s tensors):
    no tensor is pruned past `max_tensor_sparsity`, so at most `sum(floor(cap * numel)) / sum(numel)` is reachable.

    Raises:
        `ValueError`: saying the reachable sparsity and what to change.
    """
    cap = resolve_max_tensor_sparsity(args.max_tensor_sparsity, args.target_sparsity)
    if getattr(args, "granularity", "weight") != "weight" or cap is None or cap >= 1.0 or not mask:
        return
    total = sum(m.numel() for m in mask.values())
    reachable = sum(max(math.floor(cap * m.numel()), m.numel() - int(m.sum())) for m in mask.values()) / total
    if args.target_sparsity > reachable + 1e-9:
        raise ValueError(
            f"target_sparsity={args.target_sparsity} cannot be reached: with max_tensor_sparsity={cap} no tensor is "
            f"pruned past {cap:.0%}, so at most {reachable:.4%} of the covered weights can be. Lower target_sparsity "
            "to that, or raise max_tensor_sparsity (1.0 disables the guard)."
        )


# Settings that change which ticket a run finds: resuming with other values would mix two runs in one ticket.
TICKET_SETTINGS = (
    "rewind",
    "rewind_step",
    "pruning_method",
    "pruning_scope",
    "prune_modules",
    "max_tensor_sparsity",
    "on_tensor_collapse",
    "pruning_seed",
    "granularity",
    "structured_scoring",
    "learning_rate",
    "finetune_learning_rate",
    "search_round_steps",
)


def ticket_settings(args: Any, theta0: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a run that decide its ticket (`TICKET_SETTINGS`), and `base_fingerprint`: the fingerprint
    of θ0 (every saved weight), as JSON values."""
    settings: dict[str, Any] = {}
    for name in TICKET_SETTINGS:
        value = getattr(args, name, None)
        value = getattr(value, "value", value)  # enums
        settings[name] = list(value) if isinstance(value, (list, tuple)) else value
    digests = tensor_digests(theta0)
    entries = [{"name": n, "shape": list(t.shape), "sha256": digests[n]} for n, t in theta0.items()]
    settings["base_fingerprint"] = combine_digests(entries)
    return settings


def check_resumed_settings(saved: Mapping[str, Any], current: Mapping[str, Any], output_dir: Any) -> None:
    """Refuse to resume a run whose ticket-deciding settings or θ0 differ from those it started with.

    Raises:
        `ValueError`: naming the settings that differ.
    """
    changed = [name for name in current if name in saved and saved[name] != current[name]]
    if changed:
        shown = "; ".join(f"{n}: {saved[n]!r} then, {current[n]!r} now" for n in changed)[:500]
        what = "θ0 (the weights saved when the run started) changed" if changed == ["base_fingerprint"] else shown
        raise ValueError(
            f"The run in {output_dir} was started with other settings that decide its ticket ({what}). Resume with "
            "the settings the run started with, or start a new run in another output_dir."
        )
