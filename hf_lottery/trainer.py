"""`LotteryTrainer`: a `transformers.Trainer` that runs Iterative Magnitude Pruning with rewinding."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import TrainOutput, enable_full_determinism, set_seed
from transformers.utils import logging

from .arguments import LotteryArguments
from .checks import as_initial_mask, check_datasets, check_resumed_schedule
from .constants import LOTTERY_HISTORY_NAME, ROUND_DIR_TEMPLATE, SPARSITY_PLOT_NAME
from .distributed import broadcast_weights_, check_distributed_setup, sync_mask
from .enforcement import MaskEnforcerCallback
from .history import main_metric, plot_history, write_history
from .masks import TicketMask
from .pruning import prune
from .resume import TrainLossCarry, last_complete_checkpoint
from .run_state import RunState, load_weights_, snapshot_weights
from .selection import prunable_parameters

logger = logging.get_logger(__name__)


class _RewindPointCallback(TrainerCallback):
    """Saves the weights after `rewind_step` optimizer steps of round 0 (rewind="step")."""

    def __init__(self, trainer: LotteryTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, model=None, **kwargs):
        trainer = self.trainer
        if trainer.lottery_round == 0 and args.rewind == "step" and state.global_step == args.rewind_step:
            trainer._rewind_weights = snapshot_weights(trainer.model)
            trainer._run_state.save_rewind_weights(trainer._rewind_weights)


class LotteryTrainer(Trainer):
    """A [`~transformers.Trainer`] that finds a lottery ticket by Iterative Magnitude Pruning with rewinding.

    `train()` runs every round: round 0 trains the dense model from θ0 (every parameter as it is when `train()`
    is first called, the new task head included); each later round prunes to the next sparsity of
    `args.sparsity_schedule()`, rewinds the survivors (`args.rewind`), builds a fresh optimizer and scheduler and
    trains again. Callbacks see each round as a training run (`on_train_begin`/`on_train_end` once per round).
    Pruned weights stay exactly zero; checkpoints keep the model's own state-dict keys, and each round's
    checkpoints go to `output_dir/round_{r}/`. A killed run continues with `train(resume_from_checkpoint=True)`.

    Args:
        mask (`TicketMask`, *optional*): start from this mask (its pruned weights stay pruned); the schedule
            then starts at its sparsity.
        All other arguments are those of [`~transformers.Trainer`]; `args` must be [`LotteryArguments`].

    Attributes:
        ticket (`TicketMask`): the mask of the last finished round (the ticket once `train()` returns).
        lottery_history (`list[dict]`): one record per finished round (round, sparsity, metrics, steps, seconds,
            per-tensor sparsity).
    """

    def __init__(self, *args: Any, mask: TicketMask | None = None, **kwargs: Any):
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if not isinstance(training_args, LotteryArguments):
            raise TypeError(
                "LotteryTrainer needs `args=LotteryArguments(...)` (a TrainingArguments subclass with the lottery "
                f"settings), got {type(training_args).__name__}."
            )
        check_distributed_setup(training_args)
        optimizers = kwargs.get("optimizers", (None, None))
        if optimizers is not None and any(o is not None for o in optimizers):
            raise ValueError(
                "LotteryTrainer builds a fresh optimizer and scheduler every round, so it cannot take `optimizers=`. "
                "Pass `optimizer_cls_and_kwargs=(cls, kwargs)` or set `optim` in LotteryArguments instead."
            )
        super().__init__(*args, **kwargs)
        self.args: LotteryArguments
        self._enforcer = MaskEnforcerCallback()
        self.add_callback(self._enforcer)
        self.add_callback(_RewindPointCallback(self))
        self.add_callback(TrainLossCarry(self))  # a resumed round reports the train_loss of an uninterrupted one
        self.initial_mask = as_initial_mask(mask, self.args)
        self.ticket: TicketMask | None = None
        self.lottery_history: list[dict[str, Any]] = []
        self.lottery_round: int | None = None
        self._schedule: list[float] = []
        self._theta0: dict[str, torch.Tensor] | None = None
        self._rewind_weights: dict[str, torch.Tensor] | None = None
        self._run_state = RunState(self.args.output_dir, should_write=self.args.should_save)

    # -- Trainer hooks ----------------------------------------------------------------------------------------
    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        if self.lottery_round is None:
            return run_dir
        return os.path.join(run_dir, ROUND_DIR_TEMPLATE.format(round=self.lottery_round))

    @property
    def current_mask(self) -> TicketMask | None:
        """The mask being enforced now."""
        return self._enforcer.mask

    # -- The lottery loop -------------------------------------------------------------------------------------
    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial=None,
        ignore_keys_for_eval: list[str] | None = None,
        **kwargs: Any,
    ) -> TrainOutput:
        """Run every IMP round (see the class docstring); returns the last round's `TrainOutput`.

        Args:
            resume_from_checkpoint (`bool` or `str`, *optional*): `True` continues a killed run from the state in
                `output_dir` (the round, and the last checkpoint of that round); a path to a checkpoint of the
                current round works as well.
        """
        check_datasets(self)
        resume = resume_from_checkpoint not in (None, False)
        if resume and self._run_state.exists():
            round_index, phase = self._restore_run()
        else:
            if resume_from_checkpoint is True:
                raise ValueError(
                    f"No lottery run to resume in {self.args.output_dir} (no lottery_state/); call train() without "
                    "resume_from_checkpoint to start one."
                )
            round_index, phase = self._start_run()

        output = None
        checkpoint = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
        while True:
            if phase == "trained":
                if round_index + 1 >= len(self._schedule):
                    break
                round_index += 1
                self._prune_for_round(round_index)
                phase, checkpoint, resume = "prepared", None, False
            output = self._run_round(round_index, resume, checkpoint, trial, ignore_keys_for_eval, **kwargs)
            phase = "trained"
        self.lottery_round = None
        if output is None:  # resumed a run that had already finished
            output = TrainOutput(self.state.global_step, 0.0, {})
        return output

    def _start_run(self) -> tuple[int, str]:
        model = self.model
        broadcast_weights_(model)  # θ0 is the main process's: DDP only syncs the weights it wraps, in round 0.
        self._theta0 = snapshot_weights(model)
        self._run_state.save_theta0(self._theta0)
        if self.initial_mask is not None:
            mask = self.initial_mask
            mask.validate(model)
        else:
            mask = TicketMask.ones_like(prunable_parameters(model, self.args.prune_modules))
        mask = sync_mask(mask)
        self._schedule = self.args.sparsity_schedule(start=round(mask.sparsity, 10))
        self.lottery_history = []
        self._set_mask(mask)
        self._run_state.save_mask(0, mask)
        self._run_state.write(0, "prepared", self._schedule, self.lottery_history)
        self.accelerator.wait_for_everyone()
        logger.info("Lottery schedule (sparsity per round): %s", ", ".join(f"{s:.1%}" for s in self._schedule))
        return 0, "prepared"

    def _restore_run(self) -> tuple[int, str]:
        state = self._run_state.read()
        check_resumed_schedule(state["schedule"], self.args)
        self._schedule = state["schedule"]
        self.lottery_history = state["history"]
        round_index, phase = state["round"], state["phase"]
        self._theta0 = self._run_state.load_theta0()
        if self.args.rewind == "step" and self._run_state.has_rewind_weights():
            self._rewind_weights = self._run_state.load_rewind_weights()
        mask = self._run_state.load_mask(round_index)
        if phase == "trained":
            load_weights_(self.model, self._run_state.load_trained(round_index))
        self._set_mask(mask)
        self._write_history()  # a kill may have come between state.json and lottery_history.json
        logger.info("Resuming the lottery run at round %d (%s).", round_index, phase)
        return round_index, phase

    def _set_mask(self, mask: TicketMask) -> None:
        self._enforcer.set_mask(self.model, mask)
        self.ticket = mask

    def _prune_for_round(self, round_index: int) -> None:
        """Prune the trained weights of the previous round to this round's sparsity and record the mask."""
        args = self.args
        seed = (args.pruning_seed if args.pruning_seed is not None else args.seed) + round_index
        mask = prune(
            self.model,
            self._schedule[round_index],
            method=args.pruning_method,
            scope=args.pruning_scope,
            mask=self.current_mask,
            max_tensor_sparsity=args.max_tensor_sparsity,
            on_tensor_collapse=args.on_tensor_collapse,
            seed=seed,
        )
        mask = sync_mask(mask)
        self._run_state.save_mask(round_index, mask)
        self._run_state.write(round_index, "prepared", self._schedule, self.lottery_history)
        self.accelerator.wait_for_everyone()
        self._set_mask(mask)

    def _rewind(self, round_index: int) -> None:
        """Set the weights a round starts from, then zero the pruned ones."""
        rewind = self.args.rewind
        if round_index == 0 or rewind == "pretrained":
            load_weights_(self.model, self._theta0)
        elif rewind == "step":
            if self._rewind_weights is None:
                raise ValueError(
                    f"rewind_step={self.args.rewind_step} was never reached: round 0 ran {self._round0_steps()} "
                    "optimizer steps. Choose a smaller rewind_step."
                )
            load_weights_(self.model, self._rewind_weights)
        else:  # "lr" and "none" keep the trained weights of the previous round.
            load_weights_(self.model, self._run_state.load_trained(round_index - 1))
        self._enforcer.enforcer.zero_weights()

    def _round0_steps(self) -> int | str:
        return self.lottery_history[0]["steps"] if self.lottery_history else "?"

    def _run_round(self, round_index, resume, checkpoint, trial, ignore_keys_for_eval, **kwargs) -> TrainOutput:
        args = self.args
        self.lottery_round = round_index
        if resume and checkpoint is None:
            # Not get_last_checkpoint: it would pick a checkpoint folder left half-written by a kill.
            checkpoint = last_complete_checkpoint(self._get_output_dir(trial))
        if checkpoint is None:
            self._rewind(round_index)
        # Each round starts from its own seed, so a resumed run repeats exactly what an uninterrupted one does. Also
        # when resuming from a checkpoint: the data order of the round derives from this seed (accelerate's seedable
        # sampler takes torch.initial_seed()); the Trainer then restores the checkpoint's RNG states itself.
        enable_full_determinism(args.seed + round_index) if args.full_determinism else set_seed(
            args.seed + round_index
        )
        logger.info(
            "Lottery round %d/%d: sparsity %.1f%% (%s)%s",
            round_index,
            len(self._schedule) - 1,
            100 * self.current_mask.sparsity,
            "dense" if round_index == 0 else f"rewind={args.rewind}",
            f", resuming from {checkpoint}" if checkpoint else "",
        )
        self.optimizer, self.lr_scheduler = None, None
        started = time.time()
        with self._round_hyperparameters(round_index):
            output = super().train(
                resume_from_checkpoint=checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs
            )
        metrics = self._round_metrics(ignore_keys_for_eval)
        mask = self.current_mask
        record = {
            "round": round_index,
            "sparsity": mask.sparsity,
            "target_sparsity": self._schedule[round_index],
            "metrics": metrics,
            "train_loss": output.training_loss,
            "steps": self.state.global_step,
            "seconds": round(time.time() - started, 3),
            "tensor_sparsity": {name: row["sparsity"] for name, row in mask.report().items() if name != "__total__"},
        }
        self.lottery_history = [r for r in self.lottery_history if r["round"] != round_index] + [record]
        self._run_state.save_trained(round_index, snapshot_weights(self.model))
        self._run_state.write(round_index, "trained", self._schedule, self.lottery_history)
        self._write_history()
        self.accelerator.wait_for_everyone()
        self.ticket = mask
        return output

    def _round_metrics(self, ignore_keys_for_eval) -> dict[str, float]:
        if self.eval_dataset is None:
            return {}
        # Reuse an evaluation the Trainer already ran at the last step (eval_strategy) rather than repeat it.
        for entry in reversed(self.state.log_history):
            if entry.get("step") == self.state.global_step and "eval_loss" in entry:
                return {k: v for k, v in entry.items() if k.startswith("eval_")}
        return self.evaluate(ignore_keys=ignore_keys_for_eval)

    def _round_hyperparameters(self, round_index: int):
        """Fine-tuning baseline (rewind='none'): later rounds train at a constant, lower learning rate."""
        args = self.args
        overrides: dict[str, Any] = {}
        if args.rewind == "none" and round_index > 0:
            lr = args.finetune_learning_rate if args.finetune_learning_rate is not None else args.learning_rate / 10
            overrides = {"learning_rate": lr, "lr_scheduler_type": "constant", "warmup_steps": 0}
        return _temporarily(args, overrides)

    def _write_history(self) -> None:
        if not self.args.should_save:
            return
        out = Path(self.args.output_dir)
        write_history(out / LOTTERY_HISTORY_NAME, self.lottery_history)
        plot_history(out / SPARSITY_PLOT_NAME, self.lottery_history, self.args.metric_for_best_model)

    def lottery_metric(self) -> str | None:
        """Name of the eval metric tracked against sparsity."""
        return main_metric(self.lottery_history, self.args.metric_for_best_model)


class _temporarily:
    """Context manager setting attributes of an object and restoring them on exit."""

    def __init__(self, obj: Any, values: dict[str, Any]):
        self.obj, self.values, self.saved = obj, values, {}

    def __enter__(self):
        for key, value in self.values.items():
            self.saved[key] = getattr(self.obj, key)
            setattr(self.obj, key, value)
        return self.obj

    def __exit__(self, *exc):
        for key, value in self.saved.items():
            setattr(self.obj, key, value)
        return False
