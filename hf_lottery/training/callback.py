"""`LotteryCallback`: lottery tickets for users who keep their own `Trainer` (or Trainer subclass)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..constants import LOTTERY_HISTORY_NAME
from ..ticket.mask import TicketMask
from ..utils.io import load_tensors, save_tensors
from .arguments import LotteryArguments
from .causal_lm import is_causal_lm, with_perplexity
from .distributed import check_distributed_setup
from .enforcement import MaskEnforcerCallback
from .rounds import LotteryRounds, check_lottery_arguments, ticket_beside_weights
from .run_state import RunState, load_weights_

logger = logging.get_logger(__name__)

_CALLBACK_MASK_NAME = "lottery_callback_mask.safetensors"


class LotteryCallback(TrainerCallback):
    """Lottery tickets inside a plain [`~transformers.Trainer`] run.

    - `LotteryCallback(args, mask=ticket)`: sparse fine-tuning of a ticket. The mask is applied when training
      begins and enforced at every step (pruned gradients zeroed, pruned weights reset after each optimizer step).
    - `LotteryCallback(args)`: gradual IMP inside one training run (as BERT-Tickets' script does), with the round
      engine [`LotteryTrainer`] uses: the same granularities (`"weight"`, `"head"`, `"neuron"`, `"head+neuron"`),
      scoring methods, seeds and history records. The levels of `args.sparsity_schedule()` are reached one by
      one, one every `args.pruning_interval_steps` optimizer steps (default: the run's steps spread evenly, so the
      final level is trained as long as each other level). At each level the current weights are scored, pruned
      and rewound per `args.rewind`: `"pretrained"` (to the weights at the start of the run), `"step"` (to those
      after `rewind_step` steps) or `"none"` (keep training). When an eval strategy is set, each level is
      evaluated before it is pruned, so its record carries its own metrics.

    What one training run cannot do is refused, never done silently: `rewind="lr"` and `finetune_learning_rate`
    need a fresh optimizer and schedule per round (use [`LotteryTrainer`]).

    The current mask is saved in every checkpoint folder, so `trainer.train(resume_from_checkpoint=True)`
    continues with the right mask.

    Args:
        args (`LotteryArguments`): the lottery settings (the Trainer's own `TrainingArguments` may differ).
        mask (`TicketMask` or `Mapping[str, torch.Tensor]`, *optional*): the mask to enforce.

    Attributes:
        ticket (`TicketMask`): the current mask.
        history (`list[dict]`): one record per finished level (schema:
            `hf_lottery.ticket.history.ROUND_RECORD_FIELDS`), also written to `output_dir/lottery_history.json`.
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
        if mask is None and args.finetune_learning_rate is not None:
            raise ValueError(
                "finetune_learning_rate sets the learning rate of the rounds after the first, which one training "
                "run cannot change; use LotteryTrainer(rewind='none'), or leave finetune_learning_rate unset."
            )
        check_lottery_arguments(args)
        self.lottery_args = args
        self.fixed_mask = mask is not None
        self._enforcer = MaskEnforcerCallback()
        self._initial_mask = None if mask is None else (mask if isinstance(mask, TicketMask) else TicketMask(mask))
        self.ticket: TicketMask | None = self._initial_mask
        self._rounds: LotteryRounds | None = None
        self._interval = 0
        self._level = 0
        self._level_start = (0, time.time())  # (global step, wall time) at which the current level began
        self._last_eval: tuple[int, dict[str, float]] = (-1, {})

    @property
    def history(self) -> list[dict[str, Any]]:
        return self._rounds.history if self._rounds is not None else []

    # -- events -----------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        check_distributed_setup(args)
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
        run_state = RunState(args.output_dir, should_write=args.should_save)
        if self._rounds is None or state.global_step == 0:
            self._rounds = LotteryRounds(self.lottery_args, run_state)
        rounds = self._rounds
        batches = lambda: kwargs.get("train_dataloader") or []  # noqa: E731
        if state.global_step == 0:
            mask = rounds.start(model, ticket_beside_weights(model), batches)
        else:
            mask = resumed_mask
            initial = ticket_beside_weights(model) or TicketMask.ones_like(
                rounds.granularity.covered_parameters(model, self.lottery_args)
            )
            rounds.set_schedule(initial)
            rounds.restore()
            rounds.history = self._read_history(args.output_dir, state.global_step)
        levels = len(rounds.schedule) - 1
        self._interval = self.lottery_args.pruning_interval_steps or max(1, state.max_steps // (levels + 1))
        if levels and self._interval * levels >= state.max_steps:
            logger.warning(
                "LotteryCallback: %d pruning levels every %d steps need more than the run's %d steps; the target "
                "sparsity will not be reached. Lower pruning_interval_steps or train longer.",
                levels,
                self._interval,
                state.max_steps,
            )
        if levels and self.lottery_args.rewind == "step" and self.lottery_args.rewind_step > self._interval:
            raise ValueError(
                f"rewind_step={self.lottery_args.rewind_step} was never reached: the first pruning comes after "
                f"{self._interval} optimizer steps. Choose a smaller rewind_step (or a larger pruning_interval_steps)."
            )
        self._level = self._level_of(mask)
        self._level_start = (self._level * self._interval if state.global_step else 0, time.time())
        self._enforcer.set_mask(model, mask, optimizer)
        self.ticket = mask

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.fixed_mask or self._rounds is None:
            return
        self._rounds.capture_rewind_point(model, state.global_step)
        if self._due_level(state) is not None and args.eval_strategy != "no":
            control.should_evaluate = True  # the finishing level's metrics, before it is pruned

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        level = None if self.fixed_mask or self._rounds is None else self._due_level(state)
        if level is None:
            return
        rounds = self._rounds
        self._record_level(args, state, model)
        batches = lambda: kwargs.get("train_dataloader") or []  # noqa: E731
        mask = rounds.next_mask(model, level, self.ticket, batches)
        weights = rounds.rewind_weights(level, None, steps_run=state.global_step)
        if weights is not None:
            load_weights_(model, weights)
        self._enforcer.set_mask(model, mask, optimizer)
        self.ticket = mask
        self._level = level
        self._level_start = (state.global_step, time.time())
        logger.info("LotteryCallback: pruned to %.1f%% at step %d.", 100 * mask.sparsity, state.global_step)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._enforcer.on_optimizer_step(args, state, control, **kwargs)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = {k: v for k, v in (metrics or {}).items() if k.startswith("eval_")}
        model = kwargs.get("model")
        self._last_eval = (
            state.global_step,
            with_perplexity(metrics) if model is not None and is_causal_lm(model) else metrics,
        )

    def on_save(self, args, state, control, **kwargs):
        if args.should_save and self.ticket is not None:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            if os.path.isdir(folder):
                save_tensors(os.path.join(folder, _CALLBACK_MASK_NAME), self.ticket.to_dict())

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.fixed_mask and self._rounds is not None and state.global_step > self._level_start[0]:
            self._record_level(args, state, model)
        self._enforcer.on_train_end(args, state, control, model=model, **kwargs)

    # -- helpers ----------------------------------------------------------------------------------------------
    def _due_level(self, state) -> int | None:
        """The level the run must prune to now (at a level boundary, not yet reached), or None."""
        rounds = self._rounds
        if self._interval <= 0 or state.global_step == 0 or state.global_step % self._interval:
            return None
        level = state.global_step // self._interval
        if not 0 < level < len(rounds.schedule) or self.ticket.sparsity >= rounds.schedule[level] - 1e-9:
            return None
        return level

    def _level_of(self, mask: TicketMask) -> int:
        reached = [i for i, s in enumerate(self._rounds.schedule) if mask.sparsity >= s - 1e-9]
        return reached[-1] if reached else 0

    def _record_level(self, args, state, model) -> None:
        start_step, started = self._level_start
        eval_step, metrics = self._last_eval
        losses = [e["loss"] for e in state.log_history if "loss" in e and start_step < e.get("step", -1)]
        self._rounds.record(
            self._level,
            model,
            self.ticket,
            metrics=metrics if start_step < eval_step <= state.global_step else {},
            train_loss=sum(losses) / len(losses) if losses else None,
            steps=state.global_step - start_step,
            total_steps=state.global_step,
            seconds=time.time() - started,
        )
        self._rounds.write_history(args.output_dir, args.should_save, self.lottery_args.metric_for_best_model)

    @staticmethod
    def _read_history(output_dir: str, global_step: int) -> list[dict[str, Any]]:
        path = Path(output_dir) / LOTTERY_HISTORY_NAME
        if not path.is_file():
            return []
        try:
            records = json.loads(path.read_text(encoding="utf-8")).get("rounds", [])
        except (ValueError, AttributeError):
            return []
        return [r for r in records if isinstance(r, dict) and r.get("total_steps", global_step + 1) <= global_step]

    @staticmethod
    def _mask_from_checkpoint(args, state) -> TicketMask | None:
        if state.global_step == 0:
            return None
        path = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / _CALLBACK_MASK_NAME
        return TicketMask(load_tensors(path)) if path.is_file() else None
