"""Exact resumption of what the Trainer does not checkpoint itself: the running training loss of a round.

`Trainer.train(resume_from_checkpoint=...)` restores weights, optimizer, scheduler, RNG and `TrainerState`, but
restarts its running loss at zero, so the `train_loss` of a resumed round would average only the steps run after
the resume. [`TrainLossCarry`] stores the running loss in the checkpoint's `trainer_state.json` (at save steps only,
so there is no per-step cost) and puts it back when the round resumes; a resumed round then records the
`train_loss` of an uninterrupted one (so does the `TrainOutput` of that `train()` call; its throughput figures
then count the steps before the resume too). It reads private `Trainer` attributes and does nothing where they are
missing (another `transformers` version): the loss then covers the resumed steps only, as in plain `Trainer`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Key in `TrainerState.stateful_callbacks` (saved in every checkpoint's trainer_state.json).
TRAIN_LOSS_STATE_KEY = "LotteryTrainLoss"
_CHECKPOINT_RE = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")
_ATTRIBUTES = ("_total_loss_scalar", "_tr_loss", "_globalstep_last_logged", "_initial_global_step")


class TrainLossCarry(TrainerCallback):
    """Carries a [`~transformers.Trainer`]'s running training loss across `resume_from_checkpoint`.

    Args:
        trainer (`Trainer`): the trainer whose loss is carried.
    """

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def _supported(self) -> bool:
        return all(hasattr(self.trainer, name) for name in _ATTRIBUTES)

    def _record(self, state) -> None:
        if not self._supported():
            return
        trainer = self.trainer
        state.stateful_callbacks[TRAIN_LOSS_STATE_KEY] = {
            # LotteryTrainer logs on one step axis across rounds (its on_log callbacks see the earlier rounds'
            # steps added); the checkpoint counts the round's own steps.
            "step": state.global_step - getattr(trainer, "logging_step_shift", 0),
            "total": trainer._total_loss_scalar,
            "pending": float(trainer._tr_loss.item()),
            "last_logged": trainer._globalstep_last_logged,
        }

    def on_step_end(self, args, state, control, **kwargs):
        # DefaultFlowCallback has decided whether this step saves; record only then (`.item()` syncs a device).
        if control.should_save:
            self._record(state)

    def on_epoch_end(self, args, state, control, **kwargs):
        # save_strategy="epoch" decides to save here, after on_step_end.
        if control.should_save:
            self._record(state)

    def on_log(self, args, state, control, **kwargs):
        # A log drains the pending loss into the total; it runs before the save of the same step.
        if control.should_save:
            self._record(state)

    def on_train_begin(self, args, state, control, **kwargs):
        saved: dict[str, Any] | None = (state.stateful_callbacks or {}).get(TRAIN_LOSS_STATE_KEY)
        if not saved or state.global_step == 0 or saved.get("step") != state.global_step or not self._supported():
            return
        trainer = self.trainer
        trainer._total_loss_scalar = float(saved["total"])
        with torch.no_grad():
            trainer._tr_loss.fill_(float(saved["pending"]))
        trainer._globalstep_last_logged = int(saved["last_logged"])
        # The Trainer divides the running loss by the steps since `_initial_global_step`; the loss now covers them
        # all. (Its throughput figures for this call then count the steps before the resume as well.)
        trainer._initial_global_step = 0


def last_complete_checkpoint(folder: str | os.PathLike) -> str | None:
    """The checkpoint of `folder` with the highest step that was written completely, or None.

    The Trainer writes a checkpoint's files one after the other, `trainer_state.json` last, and not atomically: a
    run killed while saving leaves a `checkpoint-N/` without it (or with a truncated one), which
    [`~transformers.trainer_utils.get_last_checkpoint`] would still pick. Such folders are skipped.
    """
    if not os.path.isdir(folder):
        return None
    steps = []
    for name in os.listdir(folder):
        match = _CHECKPOINT_RE.fullmatch(name)
        if match and os.path.isdir(os.path.join(folder, name)):
            steps.append((int(match.group(1)), name))
    for step, name in sorted(steps, reverse=True):
        path = Path(folder) / name / TRAINER_STATE_NAME
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning(
                "Skipping %s: it was not written completely (the run was killed while saving).", path.parent
            )
            continue
        if state.get("global_step") == step:
            return str(path.parent)
    return None
