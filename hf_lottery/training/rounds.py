"""The round engine: the steps of a lottery run, shared by [`LotteryTrainer`] and [`LotteryCallback`].

A run snapshots θ0 and builds the initial mask (`start`), may keep the weights after `rewind_step` steps
(`capture_rewind_point`), prunes to the next level of the schedule (`next_mask`), sets the weights the next round
starts from (`rewind_weights`), records each finished round in one schema (`record`, see
`hf_lottery.ticket.history.ROUND_RECORD_FIELDS`) and gives the final model (`final_model`). What is pruned
(weights, heads, neurons) is the [`Granularity`] strategy's business. The front doors differ only in how rounds are
trained: `LotteryTrainer` trains each round as its own run, `LotteryCallback` reaches the levels inside one run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.utils import logging

from ..constants import LOTTERY_HISTORY_NAME, SPARSITY_PLOT_NAME
from ..scoring import registered_methods, scoring_spec
from ..structured.scores import STRUCTURE_SCORERS
from ..ticket.history import plot_history, write_history
from ..ticket.mask import TicketMask
from .checks import check_resumed_settings, check_run_settings, check_target_reachable, ticket_settings
from .distributed import sync_mask
from .early_bird import EarlyBird
from .granularity import Batches, granularity_for
from .run_state import RunState, snapshot_weights
from .schedule import at_target
from .sharding import unsharded

logger = logging.get_logger(__name__)

_NO_BATCHES: Batches = lambda: []  # noqa: E731  (methods that need no data never call it)


class _CountedBatches:
    """The batches a scorer reads, counted as it reads them (`len` is the wrapped loader's)."""

    def __init__(self, batches: Iterable[Any]):
        self.batches, self.count = batches, 0

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches:
            self.count += 1
            yield batch

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]  # TypeError without a length, as the loader's own


def check_lottery_arguments(args: Any) -> None:
    """Checks of the arguments against the registries, made when a run is set up (the arguments know fixed
    choices only).

    Raises:
        `ValueError`: an unknown `pruning_method` or `structured_scoring`, naming the registered ones.
    """
    for name, value, registered in (
        ("pruning_method", args.pruning_method, registered_methods()),
        ("structured_scoring", args.structured_scoring, sorted(STRUCTURE_SCORERS)),
    ):
        if value not in registered:
            accepted = ", ".join(map(repr, registered))
            raise ValueError(f"{name}={value!r} is not valid; accepted values: {accepted}.")
    if args.granularity == "weight" and scoring_spec(args.pruning_method).at_init:
        for setting in ("early_bird_interval_steps", "search_round_steps"):
            if getattr(args, setting) is not None:
                # At θ0 no trained weights choose a mask: there is no search round to watch or to shorten.
                raise ValueError(
                    f"{setting} needs a method that prunes trained weights; pruning_method="
                    f"{args.pruning_method!r} chooses the ticket once at θ0. Use a method that scores trained weights "
                    f"(magnitude, hydra, ...), or unset {setting}."
                )


def ticket_beside_weights(model: nn.Module) -> TicketMask | None:
    """The ticket saved with a sparse model folder the model was loaded from, if any."""
    folder = getattr(model, "name_or_path", None)
    if not folder or not os.path.isdir(folder):
        return None
    mask = TicketMask.from_model_folder(folder)
    if mask is not None:
        logger.info(
            "Found a ticket beside the weights in %s (sparsity %.1f%%); keeping it.", folder, 100 * mask.sparsity
        )
    return mask


class LotteryRounds:
    """The state and steps of one lottery run (see the module docstring).

    Args:
        args (`LotteryArguments`): the lottery settings.
        run_state (`RunState`): where θ0, the rewind point and (for the trainer) the rounds are kept.
    """

    def __init__(self, args: Any, run_state: RunState):
        check_lottery_arguments(args)
        check_run_settings(args)
        self.args = args
        self.run_state = run_state
        self.granularity = granularity_for(args)
        self.schedule: list[float] = []
        self.history: list[dict[str, Any]] = []
        self.theta0: dict[str, torch.Tensor] | None = None
        self.step_weights: dict[str, torch.Tensor] | None = None
        self.ticket_at_init: TicketMask | None = None
        self.early_bird = EarlyBird(args.early_bird_threshold, args.early_bird_patience)

    # -- Start ------------------------------------------------------------------------------------------------
    def prunes_at_init(self) -> bool:
        """True when the ticket is chosen once from θ0 (SynFlow): the schedule is then dense, target."""
        return self.granularity.prunes_at_init(self.args)

    def start(self, model: nn.Module, given_mask: TicketMask | None, batches: Batches = _NO_BATCHES) -> TicketMask:
        """Snapshot θ0 (saved to the run state), build the initial mask and the schedule; returns the mask.

        A method that prunes at initialization chooses the ticket here, from θ0 (`ticket_at_init`).
        """
        self.theta0 = snapshot_weights(model)
        self.run_state.save_theta0(self.theta0)
        self.run_state.save_settings(ticket_settings(self.args, self.theta0))
        if given_mask is not None:
            given_mask.validate(model)
            mask = given_mask
        else:
            mask = TicketMask.ones_like(self.granularity.covered_parameters(model, self.args))
        mask = sync_mask(mask)
        check_target_reachable(self.args, mask)
        self.set_schedule(mask)
        self.history = []
        if self.prunes_at_init() and len(self.schedule) > 1:
            self.ticket_at_init = sync_mask(
                self.granularity.prune(model, self.args, self.schedule[1], mask, 1, batches)
            )
            self.run_state.save_mask(1, self.ticket_at_init)
        self.capture_rewind_point(model, 0)
        return mask

    def set_schedule(self, mask: TicketMask) -> list[float]:
        """The schedule from `mask`'s sparsity to the target (two levels for methods that prune at θ0); a mask
        within one weight of the target (`at_target`) is at it."""
        start = mask.sparsity
        if at_target(start, mask.num_params, self.args.target_sparsity):
            start = self.args.target_sparsity
        self.schedule = self.planned_schedule(round(start, 10))
        return self.schedule

    def planned_schedule(self, start: float) -> list[float]:
        """The levels these arguments give from `start`: every level of `args.sparsity_schedule`, or only the
        start and the target for a method that prunes at θ0."""
        schedule = self.args.sparsity_schedule(start=start)
        if self.prunes_at_init() and len(schedule) > 1:
            schedule = [schedule[0], schedule[-1]]
        return schedule

    def restore(self) -> None:
        """Read θ0, the rewind point and a ticket chosen at θ0 back from the run state (a resumed run; the
        schedule is set first)."""
        self.theta0 = self.run_state.load_theta0()
        saved = self.run_state.load_settings()
        if saved is not None:
            check_resumed_settings(saved, ticket_settings(self.args, self.theta0), self.args.output_dir)
        if self.prunes_at_init() and len(self.schedule) > 1:
            self.ticket_at_init = self.run_state.load_mask(1)
        if self.args.rewind == "step" and self.run_state.has_rewind_weights():
            self.step_weights = self.run_state.load_rewind_weights()

    def capture_rewind_point(self, model: nn.Module, step: int) -> None:
        """Keep the weights after `rewind_step` optimizer steps of the first round (rewind='step')."""
        if self.args.rewind == "step" and step == self.args.rewind_step and self.step_weights is None:
            self.step_weights = self.theta0 if step == 0 and self.theta0 is not None else snapshot_weights(model)
            self.run_state.save_rewind_weights(self.step_weights)

    # -- Rounds -----------------------------------------------------------------------------------------------
    def next_mask(self, model: nn.Module, index: int, mask: TicketMask, batches: Batches = _NO_BATCHES) -> TicketMask:
        """The mask of round `index`: the current weights pruned to `schedule[index]` (nested in `mask`), or the
        ticket chosen at θ0."""
        if self.prunes_at_init():
            if self.ticket_at_init is None:
                raise RuntimeError("The ticket chosen at initialization is missing; start() was not called.")
            return self.ticket_at_init
        loaders: list[_CountedBatches] = []

        def counted_batches() -> _CountedBatches:
            loaders.append(_CountedBatches(batches()))
            return loaders[-1]

        started = time.perf_counter()
        with unsharded(model):  # scores read full weights (a no-op without FSDP)
            chosen = self.granularity.prune(model, self.args, self.schedule[index], mask, index, counted_batches)
        self._record_mask_cost(index - 1, sum(loader.count for loader in loaders), time.perf_counter() - started)
        return sync_mask(chosen)

    def _record_mask_cost(self, index: int, scoring_batches: int, seconds: float) -> None:
        """Add to round `index`'s record what choosing the next mask from its weights cost: the batches a scorer
        read (HYDRA's score steps, Wanda's and SparseGPT's calibration passes; 0 for magnitude) and the seconds.
        Written with the next `state.json`, so a resumed run keeps it."""
        for record in self.history:
            if record["round"] == index:
                record["next_mask"] = {"scoring_batches": scoring_batches, "seconds": round(seconds, 3)}

    def rewind_weights(
        self, index: int, trained_previous: Callable[[], dict[str, torch.Tensor]] | None, steps_run: Any = "?"
    ) -> dict[str, torch.Tensor] | None:
        """The weights round `index` starts from; None keeps the model's current weights.

        Args:
            trained_previous (`Callable`, *optional*): the trained weights of the previous round (rewind 'lr' and
                'none'); None keeps the current weights.
            steps_run: optimizer steps run before the first pruning, for the error when `rewind_step` was never
                reached.

        Raises:
            `ValueError`: rewind='step' and `rewind_step` was never reached.
        """
        rewind = self.args.rewind
        if index == 0 or rewind == "pretrained":
            return self.theta0
        if rewind == "step":
            if self.step_weights is None:
                raise ValueError(
                    f"rewind_step={self.args.rewind_step} was never reached: {steps_run} optimizer steps ran before "
                    "the first pruning. Choose a smaller rewind_step."
                )
            return self.step_weights
        return trained_previous() if trained_previous is not None else None

    def early_bird_active(self, index: int) -> bool:
        """Whether round (level) `index` may end early: early-bird rounds are on and it is not the last one."""
        args = self.args
        if args.early_bird_interval_steps is None or index + 1 >= len(self.schedule):
            return False
        return index > 0 or args.early_bird_round0

    def early_bird_check(
        self, model: nn.Module, index: int, mask: TicketMask, step: int, batches: Batches = _NO_BATCHES
    ) -> bool:
        """At a check step of an early-bird round: score the mask the round would produce now; True to stop."""
        if not self.early_bird_active(index) or step % self.args.early_bird_interval_steps:
            return False
        would = self.granularity.prune(model, self.args, self.schedule[index + 1], mask, index + 1, batches)
        return self.early_bird.check(would, step)

    def record(
        self,
        index: int,
        model: nn.Module,
        mask: TicketMask,
        *,
        metrics: dict[str, float],
        train_loss: float | None,
        steps: int,
        total_steps: int,
        seconds: float,
    ) -> dict[str, Any]:
        """Record the finished round `index` (replacing an earlier record of it) and return the record."""
        record: dict[str, Any] = {
            "round": index,
            "sparsity": mask.sparsity,
            "target_sparsity": self.schedule[index] if index < len(self.schedule) else mask.sparsity,
            "metrics": dict(metrics),
            "train_loss": train_loss,
            "steps": int(steps),
            "total_steps": int(total_steps),
            "seconds": round(float(seconds), 3),
            "tensor_sparsity": {name: row["sparsity"] for name, row in mask.report().items() if name != "__total__"},
            **self.granularity.record_fields(model, mask),
        }
        if self.early_bird_active(index):
            record["early_bird"] = self.early_bird.summary()
        self.history = [r for r in self.history if r["round"] != index] + [record]
        return record

    def write_history(
        self, output_dir: str | os.PathLike, should_save: bool, metric: str | None, title: str | None = None
    ) -> None:
        """Write `lottery_history.json` and the metric-vs-sparsity plot (titled `title`) into `output_dir`."""
        if not should_save:
            return
        out = Path(output_dir)
        write_history(out / LOTTERY_HISTORY_NAME, self.history)
        plot_history(out / SPARSITY_PLOT_NAME, self.history, metric, title)

    def final_model(self, model: nn.Module, mask: TicketMask) -> nn.Module | None:
        """The model to save instead of the masked one (the compacted model of a structured run), or None."""
        return self.granularity.final_model(model, mask)
