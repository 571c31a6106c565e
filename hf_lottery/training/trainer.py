"""`LotteryTrainer`: a `transformers.Trainer` that runs Iterative Magnitude Pruning with rewinding."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, cast

from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, enable_full_determinism, set_seed
from transformers.utils import hf_api, logging

from ..constants import EARLY_BIRD_STATE_NAME, LOTTERY_STATE_DIR, ROUND_DIR_TEMPLATE
from ..ticket.card import write_ticket_card
from ..ticket.config import TicketConfig
from ..ticket.history import main_metric, plot_title
from ..ticket.mask import TicketMask
from ..utils.parameters import is_peft_model, named_parameters
from .arguments import LotteryArguments
from .causal_lm import is_causal_lm, with_perplexity
from .checks import as_initial_mask, check_datasets, resumed_schedule
from .distillation import Distiller, frozen_copy, hidden_states_of, load_teacher, logits_of
from .distributed import broadcast_weights_, check_distributed_setup
from .enforcement import MaskEnforcerCallback
from .resume import TrainLossCarry, last_complete_checkpoint
from .rounds import LotteryRounds, ticket_beside_weights
from .run_state import RunState, load_weights_, snapshot_weights

logger = logging.get_logger(__name__)

_TIMING_SUFFIXES = ("_runtime", "_per_second")
# What push_to_hub leaves out of output_dir: the Trainer's own patterns, then the lottery run's files.
RUN_ONLY_PATTERNS = (
    "_*",
    f"{PREFIX_CHECKPOINT_DIR}-*",
    f"{LOTTERY_STATE_DIR}/*",
    ROUND_DIR_TEMPLATE.format(round="*") + "/*",
    "run-*/*",
)


class _RewindPointCallback(TrainerCallback):
    """Saves the weights after `rewind_step` optimizer steps of round 0 (rewind="step")."""

    def __init__(self, trainer: LotteryTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.trainer.lottery_round == 0:
            self.trainer._rounds.capture_rewind_point(self.trainer.model, state.global_step)


class _EarlyBirdCallback(TrainerCallback):
    """Ends a round once the mask it would produce stops changing (early-bird rounds); its state travels in the
    round's checkpoints."""

    def __init__(self, trainer: LotteryTrainer):
        self.trainer = trainer

    def _state_file(self, step: int) -> Path:
        folder = Path(self.trainer._get_output_dir(None)) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
        return folder / EARLY_BIRD_STATE_NAME

    def on_train_begin(self, args, state, control, **kwargs):
        watcher = self.trainer._rounds.early_bird
        watcher.reset()
        if state.global_step > 0 and self._state_file(state.global_step).is_file():
            watcher.load(self._state_file(state.global_step))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        trainer = self.trainer
        index = trainer.lottery_round
        if index is not None and trainer._rounds.early_bird_check(
            trainer.model, index, trainer.current_mask, state.global_step, trainer.get_train_dataloader
        ):
            logger.info(
                "Lottery round %d: the mask stopped changing; early-bird stop at step %d.", index, state.global_step
            )
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer.lottery_round is not None and trainer._rounds.early_bird_active(trainer.lottery_round):
            path = self._state_file(state.global_step)
            if args.should_save and path.parent.is_dir():
                trainer._rounds.early_bird.save(path)


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
        teacher (`nn.Module`, *optional*): the teacher of knowledge distillation (`args.distill_alpha > 0`), used
            from round 0 on, instead of `args.distill_teacher` or the default: the dense model trained in round 0,
            frozen and kept once in the run state (`lottery_state/teacher.safetensors`), used from round 1 on.
        All other arguments are those of [`~transformers.Trainer`]; `args` must be [`LotteryArguments`].

    Trainer features: `model_init` builds the model once per run (not per round), so every rewinding mode
    continues from the right weights; `hyperparameter_search` runs one lottery run per trial (each in its own
    `run-{trial}/` folder) and optimises the last round's evaluation; with `load_best_model_at_end` each round keeps,
    records and prunes its best checkpoint. Everything logged (losses, evaluations, and one `lottery/*` record per
    round: round, sparsity, train loss, eval metrics) goes through `Trainer.log` on one step axis that keeps
    increasing across rounds, so TensorBoard, W&B or trackio show the run as one.

    Attributes:
        ticket (`TicketMask`): the mask of the last finished round (the ticket once `train()` returns).
        lottery_history (`list[dict]`): one record per finished round (round, sparsity, metrics, steps, seconds,
            per-tensor sparsity).
        logging_step_offset (`int`): optimizer steps of the rounds before the current one, added to the step of
            everything logged.
    """

    def __init__(
        self,
        *args: Any,
        mask: TicketMask | None = None,
        ticket_metadata: dict[str, Any] | None = None,
        teacher: nn.Module | None = None,
        **kwargs: Any,
    ):
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if not isinstance(training_args, LotteryArguments):
            raise TypeError(
                "LotteryTrainer needs `args=LotteryArguments(...)` (a TrainingArguments subclass with the lottery "
                f"settings), got {type(training_args).__name__}."
            )
        check_distributed_setup(training_args, fsdp2=True)
        optimizers = kwargs.get("optimizers", (None, None))
        if optimizers is not None and any(o is not None for o in optimizers):
            raise ValueError(
                "LotteryTrainer builds a fresh optimizer and scheduler every round, so it cannot take `optimizers=`. "
                "Pass `optimizer_cls_and_kwargs=(cls, kwargs)` or set `optim` in LotteryArguments instead."
            )
        super().__init__(*args, **kwargs)
        self.args: LotteryArguments
        self.model: nn.Module  # built by now (`model=` or `model_init`)
        self._enforcer = MaskEnforcerCallback()
        self.add_callback(self._enforcer)
        self.add_callback(_RewindPointCallback(self))
        self.add_callback(_EarlyBirdCallback(self))
        self.add_callback(TrainLossCarry(self))  # a resumed round reports the train_loss of an uninterrupted one
        # A sparse folder saved by hf_lottery carries its ticket: keep it (trained as it is if above the target).
        self.initial_mask = ticket_beside_weights(self.model) if mask is None else as_initial_mask(mask, self.args)
        self.ticket: TicketMask | None = None
        self.lottery_round: int | None = None
        self._run_state = RunState(self.args.output_dir, should_write=self.args.should_save)
        self._rounds = LotteryRounds(self.args, self._run_state)
        for callback in self._rounds.granularity.training_callbacks(self.args):  # penalties of channel/stripe runs
            self.add_callback(callback)
        self._ticket_metadata: dict[str, Any] = {}
        self._extra_ticket_metadata = dict(ticket_metadata or {})
        if teacher is not None and not self.args.distills:
            raise ValueError("A teacher was given but distill_alpha=0 turns distillation off; set distill_alpha > 0.")
        self._given_teacher: nn.Module | str | None = teacher if teacher is not None else self.args.distill_teacher
        self._distiller: Distiller | None = None
        self._teacher_weights: dict[str, Any] | None = None  # the round-0 teacher, until its Distiller is built
        self._run_dir = self.args.output_dir
        self.logging_step_offset = 0
        self.logging_step_shift = 0

    # -- Trainer hooks ----------------------------------------------------------------------------------------
    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        if self.lottery_round is None:
            return run_dir
        return os.path.join(run_dir, ROUND_DIR_TEMPLATE.format(round=self.lottery_round))

    @property
    def lottery_history(self) -> list[dict[str, Any]]:
        """One record per finished round (schema: `hf_lottery.ticket.history.ROUND_RECORD_FIELDS`)."""
        return self._rounds.history

    @property
    def current_mask(self) -> TicketMask | None:
        """The mask being enforced now."""
        return self._enforcer.mask

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ):
        """The Trainer's loss, mixed with the distillation loss in training rounds that distill (see
        `hf_lottery.training.distillation`); evaluation keeps the task loss."""
        distiller = self._distiller
        if distiller is None or not model.training:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch, **kwargs
            )
        teacher_logits, teacher_hidden = distiller.teacher_outputs(inputs)  # before the Trainer pops the labels
        student_inputs = {**inputs, "output_hidden_states": True} if distiller.uses_hidden_states else inputs
        loss, outputs = super().compute_loss(
            model, student_inputs, return_outputs=True, num_items_in_batch=num_items_in_batch, **kwargs
        )
        loss = distiller.mixed_loss(
            loss,
            logits_of(outputs),
            teacher_logits,
            inputs,
            scale=self._task_loss_scale(num_items_in_batch),
            student_hidden=hidden_states_of(outputs) if distiller.uses_hidden_states else None,
            teacher_hidden=teacher_hidden,
        )
        return (loss, outputs) if return_outputs else loss

    def _task_loss_scale(self, num_items_in_batch: Any) -> float:
        """The factor `Trainer.compute_loss` multiplies the model's loss by (token averaging across processes),
        applied to the distillation term too so that `distill_alpha` weighs the two alike."""
        args = self.args
        if (
            args.average_tokens_across_devices
            and (self.model_accepts_loss_kwargs or self.compute_loss_func)
            and num_items_in_batch is not None
        ):
            return self.accelerator.num_processes // self.get_tp_size() if args.n_gpu <= 1 else args.n_gpu
        return 1.0

    def _prepare_distillation(self, round_index: int) -> None:
        """Build the teacher a round distills from: the given one from round 0, the round-0 model after it."""
        if not self.args.distills or self._distiller is not None:
            return
        student = self.accelerator.unwrap_model(self.model)
        if self._given_teacher is not None:
            teacher = load_teacher(self._given_teacher, student)
        elif round_index == 0:
            return  # the teacher is being trained
        else:
            weights = self._teacher_weights if self._teacher_weights is not None else self._run_state.load_teacher()
            teacher = frozen_copy(student, weights)
            self._teacher_weights = None
        self._distiller = Distiller.from_arguments(self.args, teacher, student)
        logger.info("Distilling from %s (distill_alpha=%s).", type(teacher).__name__, self.args.distill_alpha)

    def _enforced_mask(self) -> TicketMask:
        mask = self._enforcer.mask
        if mask is None:
            raise RuntimeError("No mask is enforced: train() sets one before the first round.")
        return mask

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
        self._begin_run(trial)
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
                if round_index + 1 >= len(self._rounds.schedule):
                    break
                round_index += 1
                self._prune_for_round(round_index)
                phase, checkpoint, resume = "prepared", None, False
            output = self._run_round(round_index, resume, checkpoint, trial, ignore_keys_for_eval, **kwargs)
            phase = "trained"
        self.lottery_round = None
        self.logging_step_offset = 0
        if output is None:  # resumed a run that had already finished
            output = TrainOutput(self.state.global_step, 0.0, {})
        return output

    def _begin_run(self, trial) -> None:
        """What the Trainer does once per `train()` call and this trainer once per run, not once per round: apply
        a hyperparameter-search trial (before the schedule is computed from the arguments) and build the model with
        `model_init`."""
        if trial is not None and self.hp_search_backend is not None:
            self._hp_search_setup(trial)
            self._run_dir = Trainer._get_output_dir(self, trial)
            self._run_state = RunState(self._run_dir, should_write=self.args.should_save)
            self._rounds = LotteryRounds(self.args, self._run_state)
        if self.model_init is not None:
            args = self.args
            enable_full_determinism(args.seed) if args.full_determinism else set_seed(args.seed)
            self.model = self.call_model_init(trial)
            if self.place_model_on_device:
                self._move_model_to_device(self.model, args.device)
            self.model_wrapped = self.model

    def _start_run(self) -> tuple[int, str]:
        model = self.model
        broadcast_weights_(model)  # θ0 is the main process's: DDP only syncs the weights it wraps, in round 0.
        rounds = self._rounds
        # Methods at initialization (SynFlow) choose the ticket once, from θ0: round 0 trains the dense
        # baseline, round 1 trains the ticket.
        mask = rounds.start(model, self.initial_mask, self.get_train_dataloader)
        self._describe_ticket(mask)
        self._set_mask(mask)
        self._run_state.save_mask(0, mask)
        self._run_state.write(0, "prepared", rounds.schedule, rounds.history)
        self.accelerator.wait_for_everyone()
        logger.info("Lottery schedule (sparsity per round): %s", ", ".join(f"{s:.1%}" for s in rounds.schedule))
        return 0, "prepared"

    def _restore_run(self) -> tuple[int, str]:
        state = self._run_state.read()
        rounds = self._rounds
        saved = state["schedule"]
        planned = rounds.planned_schedule(saved[0])
        rounds.schedule = resumed_schedule(
            saved, planned, self.args.output_dir, extendable=not rounds.prunes_at_init()
        )
        rounds.history = state["history"]
        round_index, phase = state["round"], state["phase"]
        rounds.restore()
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
        model = cast(Any, self.model).get_base_model() if is_peft_model(self.model) else self.model
        # θ0 by the names the mask uses (the model's own, also under peft)
        by_identity = {id(p): name for name, p in self.model.named_parameters()}
        saved = self._rounds.theta0
        assert saved is not None
        theta0 = {name: saved[by_identity[id(p)]] for name, p in named_parameters(self.model).items() if name in mask}
        config = TicketConfig.from_model(
            model, mask, weights=theta0, lottery_args=self.args, metric=self.args.metric_for_best_model
        )
        self._ticket_metadata = {**mask.metadata, **config.to_dict(), **self._extra_ticket_metadata}
        base = self._ticket_metadata.get("base_model_name_or_path")
        if base and os.path.isdir(base) and "base_model_name_or_path" not in self._extra_ticket_metadata:
            logger.warning(
                "The ticket records its base model as the local folder %s; a ticket shared from here would point at "
                "this disk. Pass LotteryTrainer(ticket_metadata={'base_model_name_or_path': '<hub id>'}) (CLI: "
                "--base_model_id).",
                base,
            )

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
        if not _internal_call and self.current_mask is not None and self.args.should_save:
            # Structured tickets: the final model is the compacted one (checkpoints keep full shapes to resume).
            final = self._rounds.final_model(self.accelerator.unwrap_model(self.model), self.current_mask)
            if final is not None:
                output_dir = str(output_dir or self.args.output_dir)
                cast(Any, final).save_pretrained(output_dir)
                if self.processing_class is not None:
                    self.processing_class.save_pretrained(output_dir)
                return
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.current_mask is not None:
            folder = str(output_dir or self.args.output_dir)
            ticket = self._as_ticket(self.current_mask)
            ticket.save_pretrained(folder, is_main_process=self.args.should_save, create_card=False)
            if not _internal_call and self.args.should_save:
                write_ticket_card(folder, ticket, ticket.metadata, repo_id=self.hub_model_id, has_weights=True)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Write the ticket's card (the sparse weights, the rounds, the mask) rather than the Trainer's generic one;
        `push_to_hub` calls it before uploading."""
        if self.current_mask is None:
            return super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            ticket = self._as_ticket(self.current_mask)
            write_ticket_card(
                str(self.args.output_dir), ticket, ticket.metadata, repo_id=self.hub_model_id, has_weights=True
            )

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ):
        """Upload the sparse model, its ticket files and card (what `save_model` writes in `output_dir`) to
        `args.hub_model_id`; never the run's own files: `lottery_state/` (θ0 and the trained weights of every
        round), the per-round checkpoints (`round_*/`, with optimizer and RNG states) or the trials of a
        hyperparameter search (`run-*/`). Arguments as [`~transformers.Trainer.push_to_hub`]."""
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        self.create_model_card(**kwargs)
        self._finish_current_push()
        api: Any = hf_api()  # its overloads key on a literal run_as_future
        return api.upload_folder(
            repo_id=str(self.hub_model_id),
            folder_path=str(self.args.output_dir),
            commit_message=commit_message,
            token=token,
            run_as_future=not blocking,
            ignore_patterns=list(RUN_ONLY_PATTERNS),
            revision=revision if revision is not None else self.args.hub_revision,
        )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # The Trainer would push every round's checkpoints (and the run state beside them) as they are saved;
        # a lottery run pushes its ticket once, from save_model / push_to_hub.
        if self.lottery_round is None:
            super()._push_from_checkpoint(checkpoint_folder)

    def _prune_for_round(self, round_index: int) -> None:
        """Prune the trained weights of the previous round to this round's sparsity and record the mask."""
        rounds = self._rounds
        mask = rounds.next_mask(self.model, round_index, self._enforced_mask(), self.get_train_dataloader)
        self._run_state.save_mask(round_index, mask)
        self._run_state.write(round_index, "prepared", rounds.schedule, rounds.history)
        self.accelerator.wait_for_everyone()
        self._set_mask(mask)

    def _rewind(self, round_index: int) -> None:
        """Set the weights a round starts from, then zero the pruned ones."""
        weights = self._rounds.rewind_weights(
            round_index,
            lambda: self._run_state.load_trained(round_index - 1),  # "lr" and "none" keep the trained weights
            steps_run=f"round 0 ran {self._round0_steps()}",
        )
        if weights is not None:
            load_weights_(self.model, weights)
        enforcer = self._enforcer.enforcer
        assert enforcer is not None  # _set_mask ran before any round
        enforcer.zero_weights()

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
            len(self._rounds.schedule) - 1,
            100 * self._enforced_mask().sparsity,
            "dense" if round_index == 0 else f"rewind={args.rewind}",
            f", resuming from {checkpoint}" if checkpoint else "",
        )
        self.optimizer, self.lr_scheduler = None, None
        self._prepare_distillation(round_index)
        rounds = self._rounds
        earlier = sum(r["steps"] for r in rounds.history if r["round"] < round_index)
        self.logging_step_offset = earlier
        started = time.time()
        # model_init built the model once, in _begin_run: the Trainer must not rebuild it for every round.
        with self._round_hyperparameters(round_index), _temporarily(self, {"model_init": None}):
            output = super().train(
                resume_from_checkpoint=checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs
            )
        metrics = self._round_metrics(ignore_keys_for_eval)
        mask = self._enforced_mask()
        record = rounds.record(
            round_index,
            self.accelerator.unwrap_model(self.model),
            mask,
            metrics=metrics,
            train_loss=output.training_loss,
            steps=self.state.global_step,
            total_steps=earlier + self.state.global_step,
            seconds=time.time() - started,
        )
        trained = snapshot_weights(self.model)
        self._run_state.save_trained(round_index, trained)
        if round_index == 0 and self.args.distills and self._given_teacher is None:
            # Written before state.json says round 0 is trained, so a resumed run always finds its teacher.
            self._teacher_weights = trained
            self._run_state.save_teacher(trained)
        self._run_state.write(round_index, "trained", rounds.schedule, rounds.history)
        self._write_history()
        self._log_round(record)
        self.accelerator.wait_for_everyone()
        self.ticket = self._as_ticket(mask)
        return output

    def _log_round(self, record: dict[str, Any]) -> None:
        """Pass the round's record through `Trainer.log` (integrations, `log_history`) at its last step."""
        logs: dict[str, float] = {
            "lottery/round": record["round"],
            "lottery/sparsity": record["sparsity"],
            "lottery/target_sparsity": record["target_sparsity"],
        }
        if record["train_loss"] is not None:
            logs["lottery/train_loss"] = record["train_loss"]
        for name, value in record["metrics"].items():
            if isinstance(value, (int, float)):
                logs[f"lottery/{name}"] = value
        self.log(logs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """`Trainer.log` on the run's step axis: the steps of the earlier rounds come first."""
        offset = self.logging_step_offset
        self.state.global_step += offset
        self.logging_step_shift = offset  # what on_log callbacks see added to the round's own step
        try:
            super().log(logs, start_time)
        finally:
            self.state.global_step -= offset
            self.logging_step_shift = 0

    def _report_to_hp_search(self, trial, step: int, metrics: dict[str, float]) -> None:
        # Optuna's pruners need one increasing step axis over the whole run.
        super()._report_to_hp_search(trial, step + self.logging_step_offset, metrics)

    def _round_metrics(self, ignore_keys_for_eval) -> dict[str, float]:
        """The round's eval metrics, without timings (those go to `seconds`)."""
        if self.eval_dataset is None:
            return {}
        metrics = None
        # Reuse an evaluation the Trainer already ran (eval_strategy) rather than repeat it: that of the last step,
        # or with load_best_model_at_end that of the best checkpoint, the model the round keeps.
        step = self.state.global_step
        if self.args.load_best_model_at_end and self.state.best_global_step:
            step = self.state.best_global_step
        for entry in reversed(self.state.log_history):
            if entry.get("step") == self.logging_step_offset + step and "eval_loss" in entry:
                metrics = entry
                break
        if metrics is None:
            metrics = self.evaluate(ignore_keys=ignore_keys_for_eval)
        metrics = {k: v for k, v in metrics.items() if k.startswith("eval_") and not k.endswith(_TIMING_SUFFIXES)}
        return with_perplexity(metrics) if is_causal_lm(self.accelerator.unwrap_model(self.model)) else metrics

    def _round_hyperparameters(self, round_index: int):
        """Fine-tuning baseline (rewind='none'): later rounds train at a constant, lower learning rate. Search
        rounds (`search_round_steps`, every round but the last) stop after that many optimizer steps."""
        args = self.args
        overrides: dict[str, Any] = {}
        if args.rewind == "none" and round_index > 0:
            lr = args.finetune_learning_rate if args.finetune_learning_rate is not None else args.learning_rate / 10
            overrides = {"learning_rate": lr, "lr_scheduler_type": "constant", "warmup_steps": 0}
        if args.search_round_steps is not None and round_index + 1 < len(self._rounds.schedule):
            overrides["max_steps"] = args.search_round_steps
        return _temporarily(args, overrides)

    def _write_history(self) -> None:
        meta = self._ticket_metadata
        title = plot_title(meta.get("task"), meta.get("base_model_name_or_path"))
        self._rounds.write_history(self._run_dir, self.args.should_save, self.args.metric_for_best_model, title)

    def lottery_metric(self) -> str | None:
        """Name of the eval metric tracked against sparsity."""
        return main_metric(self.lottery_history, self.args.metric_for_best_model)


class _temporarily:
    """Context manager setting attributes of an object and restoring them on exit."""

    def __init__(self, obj: Any, values: dict[str, Any]):
        self.obj, self.values = obj, values
        self.saved: dict[str, Any] = {}

    def __enter__(self):
        for key, value in self.values.items():
            self.saved[key] = getattr(self.obj, key)
            setattr(self.obj, key, value)
        return self.obj

    def __exit__(self, *exc):
        for key, value in self.saved.items():
            setattr(self.obj, key, value)
        return False
