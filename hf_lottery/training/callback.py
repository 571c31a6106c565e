"""`LotteryCallback`: lottery tickets for users who keep their own `Trainer` (or Trainer subclass)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from safetensors import safe_open
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..constants import CALLBACK_MASK_NAME, EARLY_BIRD_STATE_NAME, LOTTERY_HISTORY_NAME
from ..ticket.mask import TicketMask
from ..utils.io import load_tensors, save_tensors
from .arguments import LotteryArguments
from .causal_lm import is_causal_lm, with_perplexity
from .distillation import Distiller, load_teacher
from .distributed import check_distributed_setup
from .enforcement import MaskEnforcerCallback
from .rounds import LotteryRounds, check_lottery_arguments, ticket_beside_weights
from .run_state import RunState, load_weights_

logger = logging.get_logger(__name__)

_LEVEL_KEY = "hf_lottery.level"  # mask file metadata: {"level", "start", "early_stop"} of the level being trained


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
      evaluated before it is pruned, so its record carries its own metrics. With early-bird rounds
      (`early_bird_interval_steps`) a level ends as soon as the mask it would produce stops changing.

    At high sparsity the mask of a run without rewinding (`rewind="none"`, with `max_steps` one more than
    `pruning_interval_steps` times the levels, so the last level is pruned as the final step begins) is a cheap
    search for a θ0 ticket: train the pre-trained model under `callback.ticket` with
    `LotteryTrainer(mask=callback.ticket)` (README, "At high sparsity: a gradual search, then the ticket").

    What one training run cannot do is refused, never done silently: `rewind="lr"` and `finetune_learning_rate`
    need a fresh optimizer and schedule per round (use [`LotteryTrainer`]).

    The current mask is saved in every checkpoint folder, so `trainer.train(resume_from_checkpoint=True)`
    continues with the right mask.

    Knowledge distillation (`args.distill_alpha > 0`) needs a teacher given (`teacher=` or `args.distill_teacher`:
    one training run has no finished dense model to learn from) and the callback's loss, since a callback cannot
    change the Trainer's loss by itself:

    ```python
    >>> callback = LotteryCallback(args, mask=ticket, teacher=dense_model)
    >>> trainer = Trainer(model=model, args=training_args, train_dataset=train, callbacks=[callback],
    ...                   compute_loss_func=callback.compute_loss_func)
    ```
    The teacher runs on the batch of every training forward pass (a forward pre-hook on the model); a run whose
    loss never included the distillation term is stopped after its first step with an error saying so.

    Args:
        args (`LotteryArguments`): the lottery settings (the Trainer's own `TrainingArguments` may differ).
        mask (`TicketMask` or `Mapping[str, torch.Tensor]`, *optional*): the mask to enforce.
        teacher (`nn.Module`, *optional*): the teacher of distillation (overrides `args.distill_teacher`).

    Attributes:
        ticket (`TicketMask`): the current mask.
        history (`list[dict]`): one record per finished level (schema:
            `hf_lottery.ticket.history.ROUND_RECORD_FIELDS`), also written to `output_dir/lottery_history.json`.
    """

    def __init__(self, args: LotteryArguments, mask: TicketMask | None = None, teacher: nn.Module | None = None):
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
        if mask is None and args.search_round_steps is not None:
            raise ValueError(
                "search_round_steps shortens the rounds before the ticket's, and one training run has no rounds: "
                "LotteryCallback prunes every pruning_interval_steps. Use LotteryTrainer, or unset "
                "search_round_steps."
            )
        if teacher is not None and not args.distills:
            raise ValueError("A teacher was given but distill_alpha=0 turns distillation off; set distill_alpha > 0.")
        self._teacher: nn.Module | str | None = teacher if teacher is not None else args.distill_teacher
        if args.distills and self._teacher is None:
            raise ValueError(
                "LotteryCallback distills from a teacher you give (teacher=model, or distill_teacher=path or Hub id): "
                "one training run has no finished round-0 model to learn from. Use LotteryTrainer to distill from "
                "the round-0 dense model, or set distill_alpha=0."
            )
        self._distiller: Distiller | None = None
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
        self._early_stop = False  # the early-bird watcher ended the current level
        self._last_eval: tuple[int, dict[str, float]] = (-1, {})
        self._penalties: list[TrainerCallback] = []  # the granularity's own callbacks (channel/stripe penalties)

    @property
    def history(self) -> list[dict[str, Any]]:
        return self._rounds.history if self._rounds is not None else []

    # -- events -----------------------------------------------------------------------------------------------
    def compute_loss_func(self, outputs, labels, num_items_in_batch=None):
        """The loss to pass as `Trainer(compute_loss_func=...)` when distilling: the task loss of the model's
        sequence-classification head mixed with the distillation loss (see
        [`~hf_lottery.training.distillation.Distiller.compute_loss_func`])."""
        if self._distiller is None:
            raise ValueError(
                "LotteryCallback.compute_loss_func is the distillation loss: it needs distill_alpha > 0 and a teacher, "
                "and the callback in the Trainer's callbacks (its teacher is set up when training begins)."
            )
        return self._distiller.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        check_distributed_setup(args)
        if self.lottery_args.distills:
            if self._distiller is None:
                self._distiller = Distiller.from_arguments(
                    self.lottery_args, load_teacher(self._teacher, model), model
                )
            self._distiller.calls = 0
            self._distiller.attach(model)
        resumed_mask, level_state = self._mask_from_checkpoint(args, state)
        if self.fixed_mask:
            self._enforcer.set_mask(model, resumed_mask or self._initial_mask, optimizer)
            return
        if state.global_step > 0 and resumed_mask is None:
            # Restarting from a dense mask would silently undo the pruning already in the checkpoint's weights.
            raise ValueError(
                f"Resuming gradual IMP at step {state.global_step}, but {args.output_dir}/{PREFIX_CHECKPOINT_DIR}-"
                f"{state.global_step} has no {CALLBACK_MASK_NAME} (the run was killed while saving, or the "
                "checkpoint is not in output_dir). Delete that checkpoint folder to resume from the previous one."
            )
        run_state = RunState(args.output_dir, should_write=args.should_save)
        if self._rounds is None or state.global_step == 0:
            self._rounds = LotteryRounds(self.lottery_args, run_state)
        rounds = self._rounds
        batches = _batches(kwargs)
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
        if level_state is not None:
            self._level, start, self._early_stop = (
                level_state["level"],
                level_state["start"],
                level_state["early_stop"],
            )
        else:  # a checkpoint at a level boundary is saved before that level's pruning (done as the next step begins)
            self._level = min(max(state.global_step - 1, 0) // self._interval, levels)
            start, self._early_stop = self._level * self._interval, False
        self._level_start = (start, time.time())
        rounds.early_bird.reset()
        watcher_file = self._checkpoint(args, state) / EARLY_BIRD_STATE_NAME
        if state.global_step > 0 and watcher_file.is_file():
            rounds.early_bird.load(watcher_file)
        self._enforcer.set_mask(model, mask, optimizer)
        self.ticket = mask
        self._penalties = rounds.granularity.training_callbacks(self.lottery_args)
        for penalty in self._penalties:
            penalty.on_train_begin(args, state, control, model=model, optimizer=optimizer, **kwargs)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        for penalty in self._penalties:
            penalty.on_pre_optimizer_step(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self._distiller is not None and self._distiller.calls == 0:
            raise RuntimeError(
                "LotteryCallback: distill_alpha > 0, but the Trainer's loss did not include distillation in the first "
                "step. Pass compute_loss_func=callback.compute_loss_func to the Trainer (a callback cannot change the "
                "loss by itself), or use LotteryTrainer."
            )
        if self.fixed_mask or self._rounds is None:
            return
        rounds = self._rounds
        rounds.capture_rewind_point(model, state.global_step)
        batches = _batches(kwargs)
        if rounds.early_bird_check(model, self._level, self.ticket, state.global_step, batches):
            self._early_stop = True
        if self._due_level(state) is not None and args.eval_strategy != "no":
            control.should_evaluate = True  # the finishing level's metrics, before it is pruned

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        level = None if self.fixed_mask or self._rounds is None else self._due_level(state)
        if level is None:
            return
        rounds = self._rounds
        self._record_level(args, state, model)
        batches = _batches(kwargs)
        mask = rounds.next_mask(model, level, self.ticket, batches)
        rounds.write_history(args.output_dir, args.should_save, self.lottery_args.metric_for_best_model)  # its cost
        weights = rounds.rewind_weights(level, None, steps_run=state.global_step)
        if weights is not None:
            load_weights_(model, weights)
        self._enforcer.set_mask(model, mask, optimizer)
        self.ticket = mask
        self._level, self._early_stop = level, False
        self._level_start = (state.global_step, time.time())
        rounds.early_bird.reset()
        logger.info("LotteryCallback: pruned to %.1f%% at step %d.", 100 * mask.sparsity, state.global_step)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._enforcer.on_optimizer_step(args, state, control, **kwargs)
        for penalty in self._penalties:
            penalty.on_optimizer_step(args, state, control, **kwargs)

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
                level = {"level": self._level, "start": self._level_start[0], "early_stop": self._early_stop}
                metadata = {_LEVEL_KEY: json.dumps(level)}
                save_tensors(os.path.join(folder, CALLBACK_MASK_NAME), self.ticket.to_dict(), metadata=metadata)
                if self._rounds is not None and self._rounds.early_bird_active(self._level):
                    self._rounds.early_bird.save(os.path.join(folder, EARLY_BIRD_STATE_NAME))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.fixed_mask and self._rounds is not None and state.global_step > self._level_start[0]:
            self._record_level(args, state, model)
        self._enforcer.on_train_end(args, state, control, model=model, **kwargs)
        if self._distiller is not None:
            self._distiller.detach()

    # -- helpers ----------------------------------------------------------------------------------------------
    def _due_level(self, state) -> int | None:
        """The level the run must prune to now (at a level boundary, not yet reached), or None."""
        assert self._rounds is not None  # asked only in a pruning run, once on_train_begin set it up
        level = self._level + 1
        if state.global_step == 0 or level >= len(self._rounds.schedule):
            return None
        if self._early_stop or state.global_step >= self._level_start[0] + self._interval:
            return level
        return None

    def _record_level(self, args, state, model) -> None:
        rounds, ticket = self._rounds, self.ticket
        assert rounds is not None and ticket is not None  # a pruning run, set up by on_train_begin
        start_step, started = self._level_start
        eval_step, metrics = self._last_eval
        losses = [e["loss"] for e in state.log_history if "loss" in e and start_step < e.get("step", -1)]
        rounds.record(
            self._level,
            model,
            ticket,
            metrics=metrics if start_step < eval_step <= state.global_step else {},
            train_loss=sum(losses) / len(losses) if losses else None,
            steps=state.global_step - start_step,
            total_steps=state.global_step,
            seconds=time.time() - started,
        )
        rounds.write_history(args.output_dir, args.should_save, self.lottery_args.metric_for_best_model)

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
    def _checkpoint(args, state) -> Path:
        return Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"

    @classmethod
    def _mask_from_checkpoint(cls, args, state) -> tuple[TicketMask | None, dict[str, Any] | None]:
        """The mask saved in the checkpoint being resumed, and the level it was training (None for checkpoints of
        hf_lottery 0.1.0, which did not record it)."""
        if state.global_step == 0:
            return None, None
        path = cls._checkpoint(args, state) / CALLBACK_MASK_NAME
        if not path.is_file():
            return None, None
        with safe_open(str(path), framework="pt") as f:
            recorded = (f.metadata() or {}).get(_LEVEL_KEY)
        level = None
        if recorded is not None:
            try:
                raw = json.loads(recorded)
                level = {"level": int(raw["level"]), "start": int(raw["start"]), "early_stop": bool(raw["early_stop"])}
            except (ValueError, TypeError, KeyError) as err:
                raise ValueError(f"{path}: the recorded level ({_LEVEL_KEY!r}) is unreadable ({err}).") from None
        return TicketMask(load_tensors(path)), level


def _batches(event_kwargs: dict[str, Any]):
    """The training batches of a Trainer event, built only if a scoring method asks for data."""
    return lambda: event_kwargs.get("train_dataloader") or []
