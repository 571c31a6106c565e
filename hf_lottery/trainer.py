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
from .hub import TicketConfig
from .masks import TicketMask
from .peft_utils import is_peft_model, named_parameters
from .pruning import prune_with_arguments
from .resume import TrainLossCarry, last_complete_checkpoint
from .run_state import RunState, load_weights_, snapshot_weights
from .scoring import scoring_spec
from .selection import prunable_parameters
from .structured.imp import compact_by_mask, prune_structured, removed_groups, structured_parameters

logger = logging.get_logger(__name__)

_TIMING_SUFFIXES = ("_runtime", "_per_second")


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
        ticket_metadata (`dict`, *optional*): recorded in the ticket's config over what the trainer derives, e.g.
            `{"task": "sst2", "dataset": "nyu-mll/glue", "base_model_name_or_path": hub_id}`.
        All other arguments are those of [`~transformers.Trainer`]; `args` must be [`LotteryArguments`].

    Attributes:
        ticket (`TicketMask`): the mask of the last finished round (the ticket once `train()` returns).
        lottery_history (`list[dict]`): one record per finished round (round, sparsity, metrics, steps, seconds,
            per-tensor sparsity).
    """

    def __init__(
        self, *args: Any, mask: TicketMask | None = None, ticket_metadata: dict[str, Any] | None = None, **kwargs: Any
    ):
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
        # A sparse folder saved by hf_lottery carries its ticket: keep it (trained as it is if above the target).
        self.initial_mask = _ticket_beside_weights(self.model) if mask is None else as_initial_mask(mask, self.args)
        self.ticket: TicketMask | None = None
        self.lottery_history: list[dict[str, Any]] = []
        self.lottery_round: int | None = None
        self._schedule: list[float] = []
        self._theta0: dict[str, torch.Tensor] | None = None
        self._rewind_weights: dict[str, torch.Tensor] | None = None
        self._run_state = RunState(self.args.output_dir, should_write=self.args.should_save)
        self._ticket_metadata: dict[str, Any] = {}
        self._extra_ticket_metadata = dict(ticket_metadata or {})

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
        elif self.args.granularity != "weight":
            mask = TicketMask.ones_like(structured_parameters(model))
        else:
            mask = TicketMask.ones_like(prunable_parameters(model, self.args.prune_modules))
        mask = sync_mask(mask)
        self._schedule = self.args.sparsity_schedule(start=round(mask.sparsity, 10))
        self.lottery_history = []
        self._describe_ticket(mask)
        if self._at_init() and len(self._schedule) > 1:
            # Data-free methods at initialization (SynFlow) choose the ticket once, from θ0: round 0 trains the
            # dense baseline, round 1 trains the ticket.
            self._schedule = [self._schedule[0], self._schedule[-1]]
            self._run_state.save_mask(1, sync_mask(self._score_and_prune(self._schedule[1], mask, round_index=1)))
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
        self._describe_ticket(mask)
        if phase == "trained":
            load_weights_(self.model, self._run_state.load_trained(round_index))
        self._set_mask(mask)
        self._write_history()  # a kill may have come between state.json and lottery_history.json
        logger.info("Resuming the lottery run at round %d (%s).", round_index, phase)
        return round_index, phase

    def _describe_ticket(self, mask: TicketMask) -> None:
        """Ticket metadata (base model, θ0 fingerprint, arguments), computed once per run."""
        model = self.model.get_base_model() if is_peft_model(self.model) else self.model
        # θ0 by the names the mask uses (the model's own, also under peft)
        by_identity = {id(p): name for name, p in self.model.named_parameters()}
        theta0 = {
            name: self._theta0[by_identity[id(p)]] for name, p in named_parameters(self.model).items() if name in mask
        }
        config = TicketConfig.from_model(
            model, mask, weights=theta0, lottery_args=self.args, metric=self.args.metric_for_best_model
        )
        self._ticket_metadata = {**mask.metadata, **config.to_dict(), **self._extra_ticket_metadata}

    def _set_mask(self, mask: TicketMask) -> None:
        self._enforcer.set_mask(self.model, mask)
        self.ticket = self._as_ticket(mask)

    def _as_ticket(self, mask: TicketMask) -> TicketMask:
        """`mask` carrying the run's metadata and history (what save_pretrained records)."""
        return mask.with_metadata(self._ticket_metadata, history=self.lottery_history)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model (zeros in place, vanilla keys) and, beside it, the ticket files of the current mask.

        `AutoModel*.from_pretrained(output_dir)` loads the folder without hf_lottery; handing it back to a
        `LotteryTrainer` (or `LotteryCallback`) keeps its mask.
        """
        if self.args.granularity != "weight" and not _internal_call and self.current_mask is not None:
            # Structured tickets: the final model is the compacted one (checkpoints keep full shapes to resume).
            output_dir = output_dir or self.args.output_dir
            if self.args.should_save:
                compact_by_mask(self.accelerator.unwrap_model(self.model), self.current_mask).save_pretrained(
                    output_dir
                )
                if self.processing_class is not None:
                    self.processing_class.save_pretrained(output_dir)
            return
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.current_mask is not None:
            self._as_ticket(self.current_mask).save_pretrained(
                output_dir or self.args.output_dir,
                is_main_process=self.args.should_save,
                create_card=not _internal_call,
            )

    def _at_init(self) -> bool:
        return self.args.granularity == "weight" and scoring_spec(self.args.pruning_method).at_init

    def _score_and_prune(self, sparsity: float, mask: TicketMask | None, round_index: int) -> TicketMask:
        args = self.args
        if args.granularity != "weight":
            extra = {"batches": self.get_train_dataloader()} if args.structured_scoring == "first_order" else {}
            if args.structured_scoring == "random":
                extra = {"generator": torch.Generator().manual_seed(args.seed + round_index)}
            return prune_structured(
                self.model,
                sparsity,
                args.granularity,
                mask=mask,
                scope=args.pruning_scope,
                method=args.structured_scoring,
                **extra,
            )
        return prune_with_arguments(self.model, args, sparsity, mask, round_index, self.get_train_dataloader)

    def _prune_for_round(self, round_index: int) -> None:
        """Prune the trained weights of the previous round to this round's sparsity and record the mask."""
        if self._at_init():
            mask = self._run_state.load_mask(round_index)  # chosen at θ0 when the run started
        else:
            mask = sync_mask(self._score_and_prune(self._schedule[round_index], self.current_mask, round_index))
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
        # Each round starts from its own seed, also when it resumes: accelerate seeds the data order from the
        # global seed when the dataloader is built (the Trainer then restores the checkpoint's RNG for dropout).
        seed = args.seed + round_index
        enable_full_determinism(seed) if args.full_determinism else set_seed(seed)
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
        if args.granularity != "weight":
            removed = removed_groups(self.accelerator.unwrap_model(self.model), mask)
            record["removed_groups"] = {kind: sum(len(v) for v in layers.values()) for kind, layers in removed.items()}
        self.lottery_history = [r for r in self.lottery_history if r["round"] != round_index] + [record]
        self._run_state.save_trained(round_index, snapshot_weights(self.model))
        self._run_state.write(round_index, "trained", self._schedule, self.lottery_history)
        self._write_history()
        self.accelerator.wait_for_everyone()
        self.ticket = self._as_ticket(mask)
        return output

    def _round_metrics(self, ignore_keys_for_eval) -> dict[str, float]:
        """The round's eval metrics, without timings (those go to `seconds`)."""
        if self.eval_dataset is None:
            return {}
        metrics = None
        # Reuse an evaluation the Trainer already ran at the last step (eval_strategy) rather than repeat it.
        for entry in reversed(self.state.log_history):
            if entry.get("step") == self.state.global_step and "eval_loss" in entry:
                metrics = entry
                break
        if metrics is None:
            metrics = self.evaluate(ignore_keys=ignore_keys_for_eval)
        return {k: v for k, v in metrics.items() if k.startswith("eval_") and not k.endswith(_TIMING_SUFFIXES)}

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


def _ticket_beside_weights(model) -> TicketMask | None:
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
