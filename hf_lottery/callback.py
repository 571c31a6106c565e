"""`LotteryCallback`: lottery tickets for users who keep their own `Trainer` (or Trainer subclass)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from .arguments import LotteryArguments
from .constants import LOTTERY_HISTORY_NAME
from .distributed import check_distributed_setup, sync_mask
from .enforcement import MaskEnforcerCallback
from .history import write_history
from .io_utils import load_tensors, save_tensors
from .masks import TicketMask
from .pruning import prune_with_arguments
from .run_state import RunState, load_weights_, snapshot_weights
from .selection import prunable_parameters
from .trainer import _ticket_beside_weights

logger = logging.get_logger(__name__)

_CALLBACK_MASK_NAME = "lottery_callback_mask.safetensors"


class LotteryCallback(TrainerCallback):
    """Lottery tickets inside a plain [`~transformers.Trainer`] run.

    - `LotteryCallback(args, mask=ticket)`: sparse fine-tuning of a ticket. The mask is applied when training
      begins and enforced at every step (pruned gradients zeroed, pruned weights reset after each optimizer step).
    - `LotteryCallback(args)`: gradual IMP inside one training run (as BERT-Tickets' script does). The levels of
      `args.sparsity_schedule()` are reached one by one, one every `args.pruning_interval_steps` optimizer steps
      (default: the run's steps spread evenly, so the final level is trained as long as each other level). At
      each level the current weights are scored, pruned, and rewound per `args.rewind`: `"pretrained"` (to the
      weights at the start of the run), `"step"` (to those after `rewind_step` steps) or `"none"` (keep training).
      Learning-rate rewinding needs a fresh schedule per round: use [`LotteryTrainer`] for it.

    The current mask is saved in every checkpoint folder, so `trainer.train(resume_from_checkpoint=True)`
    continues with the right mask.

    Args:
        args (`LotteryArguments`): the lottery settings (the Trainer's own `TrainingArguments` may differ).
        mask (`TicketMask` or `Mapping[str, torch.Tensor]`, *optional*): the mask to enforce.
    """

    def __init__(self, args: LotteryArguments, mask: TicketMask | None = None):
        if not isinstance(args, LotteryArguments):
            raise TypeError(
                f"LotteryCallback needs LotteryArguments, got {type(args).__name__}: "
                "LotteryCallback(LotteryArguments(output_dir=..., target_sparsity=...), mask=None)."
            )
        if mask is None and args.rewind == "lr":
            raise ValueError(
                "rewind='lr' restarts the learning-rate schedule each round, which one training run cannot do; use "
                "LotteryTrainer, or rewind='pretrained' | 'step' | 'none' with LotteryCallback."
            )
        self.lottery_args = args
        self.fixed_mask = mask is not None
        self._enforcer = MaskEnforcerCallback()
        self._initial_mask = None if mask is None else (mask if isinstance(mask, TicketMask) else TicketMask(mask))
        self.ticket: TicketMask | None = self._initial_mask
        self.history: list[dict[str, Any]] = []
        self._schedule: list[float] = []
        self._interval = 0
        self._theta0: dict | None = None
        self._rewind_weights: dict | None = None
        self._last_metrics: dict[str, float] = {}
        self._output_dir: str | None = None

    # -- events -----------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        check_distributed_setup(args)
        self._output_dir = args.output_dir
        run_state = RunState(args.output_dir, should_write=args.should_save)
        resumed_mask = self._mask_from_checkpoint(args, state)
        if self.fixed_mask:
            self._enforcer.set_mask(model, resumed_mask or self._initial_mask, optimizer)
            return
        if state.global_step > 0 and resumed_mask is None:
            # Restarting from a dense mask would silently undo the pruning already in the checkpoint's weights.
            raise ValueError(
                f"Resuming gradual IMP at step {state.global_step}, but {args.output_dir}/{PREFIX_CHECKPOINT_DIR}-"
                f"{state.global_step} has no {_CALLBACK_MASK_NAME} (the run was killed while saving, or the "
                "checkpoint is not in output_dir). Delete that checkpoint folder to resume from the previous one."
            )
        if state.global_step == 0 or self._theta0 is None:
            if state.global_step == 0:
                self._theta0 = snapshot_weights(model)
                run_state.save_theta0(self._theta0)
            else:
                self._theta0 = run_state.load_theta0()
                if run_state.has_rewind_weights():
                    self._rewind_weights = run_state.load_rewind_weights()
        mask = (
            resumed_mask
            or _ticket_beside_weights(model)
            or TicketMask.ones_like(prunable_parameters(model, self.lottery_args.prune_modules))
        )
        self._schedule = self.lottery_args.sparsity_schedule(start=round(mask.sparsity, 10))
        levels = len(self._schedule) - 1
        self._interval = self.lottery_args.pruning_interval_steps or max(1, state.max_steps // (levels + 1))
        if levels and self._interval * levels >= state.max_steps:
            logger.warning(
                "LotteryCallback: %d pruning levels every %d steps need more than the run's %d steps; the target "
                "sparsity will not be reached. Lower pruning_interval_steps or train longer.",
                levels,
                self._interval,
                state.max_steps,
            )
        self._enforcer.set_mask(model, mask, optimizer)
        self.ticket = mask

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.fixed_mask:
            return
        largs = self.lottery_args
        if largs.rewind == "step" and state.global_step == largs.rewind_step:
            self._rewind_weights = snapshot_weights(model)
            RunState(args.output_dir, should_write=args.should_save).save_rewind_weights(self._rewind_weights)
        level = state.global_step // self._interval
        if state.global_step % self._interval or not 0 < level < len(self._schedule):
            return
        if self.ticket is not None and self.ticket.sparsity >= self._schedule[level] - 1e-9:
            return
        mask = prune_with_arguments(
            model, largs, self._schedule[level], self.ticket, level, lambda: kwargs.get("train_dataloader")
        )
        mask = sync_mask(mask)
        if largs.rewind == "pretrained":
            load_weights_(model, self._theta0)
        elif largs.rewind == "step":
            load_weights_(model, self._rewind_weights if self._rewind_weights is not None else self._theta0)
        self._enforcer.set_mask(model, mask, optimizer)
        self.ticket = mask
        self.history.append(
            {"level": level, "step": state.global_step, "sparsity": mask.sparsity, "metrics": dict(self._last_metrics)}
        )
        logger.info("LotteryCallback: pruned to %.1f%% at step %d.", 100 * mask.sparsity, state.global_step)
        if args.should_save:
            write_history(Path(args.output_dir) / LOTTERY_HISTORY_NAME, self.history)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._enforcer.on_optimizer_step(args, state, control, **kwargs)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._last_metrics = {k: v for k, v in (metrics or {}).items() if k.startswith("eval_")}

    def on_save(self, args, state, control, **kwargs):
        if args.should_save and self.ticket is not None:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            if os.path.isdir(folder):
                save_tensors(os.path.join(folder, _CALLBACK_MASK_NAME), self.ticket.to_dict())

    def on_train_end(self, args, state, control, **kwargs):
        self._enforcer.on_train_end(args, state, control, **kwargs)

    # -- helpers ----------------------------------------------------------------------------------------------
    @staticmethod
    def _mask_from_checkpoint(args, state) -> TicketMask | None:
        if state.global_step == 0:
            return None
        path = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / _CALLBACK_MASK_NAME
        return TicketMask(load_tensors(path)) if path.is_file() else None
