"""Early-bird rounds: a round stops once the mask it would produce stops changing; the cost is in every record."""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_lottery import LotteryArguments, LotteryCallback, LotteryTrainer
from hf_lottery.testing_utils import tiny_model, toy_dataset
from hf_lottery.training.early_bird import EarlyBird, mask_distance

COMMON = dict(
    target_sparsity=0.5,
    pruning_rate=0.25,
    per_device_train_batch_size=16,
    report_to=[],
    use_cpu=True,
    disable_tqdm=True,
    logging_steps=1,
)


def test_mask_distance_is_the_fraction_of_weights_that_differ():
    a = {"w": torch.tensor([True, True, False, False]), "v": torch.ones(4, dtype=torch.bool)}
    b = {"w": torch.tensor([True, False, True, False]), "v": torch.ones(4, dtype=torch.bool)}
    assert mask_distance(a, b) == 2 / 8 and mask_distance(a, a) == 0.0


def test_the_watcher_stops_after_patience_calm_checks_and_round_trips(tmp_path):
    watcher = EarlyBird(threshold=0.2, patience=2)
    still = {"w": torch.tensor([True, False, True, False, True])}
    moved = {"w": torch.tensor([False, True, True, False, True])}  # distance 0.4
    assert not watcher.check(still, 1)  # nothing to compare with yet
    assert not watcher.check(moved, 2)  # 0.4: not calm
    assert not watcher.check(moved, 3)  # calm 1
    saved = tmp_path / "state.safetensors"
    watcher.save(saved)
    restored = EarlyBird(threshold=0.2, patience=2)
    restored.load(saved)
    assert restored.check(moved, 4) and watcher.check(moved, 4)  # calm 2 in both
    assert restored.summary() == watcher.summary() == {"stopped_at_step": 4, "distances": [0.4, 0.0, 0.0]}


def test_a_state_of_other_tensors_is_refused(tmp_path):
    watcher = EarlyBird(threshold=0.2, patience=2)
    watcher.check({"w": torch.ones(3, dtype=torch.bool)}, 1)
    watcher.save(tmp_path / "state.safetensors")
    resumed = EarlyBird(threshold=0.2, patience=2)
    resumed.load(tmp_path / "state.safetensors")
    with pytest.raises(ValueError, match="state.safetensors masks other tensors than this run prunes"):
        resumed.check({"w": torch.ones(4, dtype=torch.bool)}, 2)


def test_a_damaged_watcher_state_names_its_file(tmp_path):
    path = tmp_path / "early_bird_state.safetensors"
    path.write_bytes(b"\x00" * 12)
    with pytest.raises(ValueError, match="early_bird_state.safetensors is not a readable early-bird state"):
        EarlyBird(0.1, 2).load(path)


def _trainer(out, *, lr, kill_at=None, **lottery):
    args = LotteryArguments(output_dir=str(out), max_steps=8, learning_rate=lr, **COMMON, **lottery)
    trainer = LotteryTrainer(model=tiny_model(), args=args, train_dataset=toy_dataset(64))
    if kill_at is not None:
        trainer.add_callback(_Kill(trainer, *kill_at))
    return trainer


class _Kill(TrainerCallback):
    """Interrupts the run at `step` of round `round_index` (after that step's checkpoint is written)."""

    def __init__(self, trainer, round_index, step):
        self.trainer, self.round_index, self.step = trainer, round_index, step

    def on_save(self, args, state, control, **kwargs):
        if self.trainer.lottery_round == self.round_index and state.global_step == self.step:
            raise KeyboardInterrupt


EARLY = dict(early_bird_interval_steps=1, early_bird_threshold=0.05, early_bird_patience=2)


def test_rounds_stop_when_the_mask_stops_changing(tmp_path):
    # At a tiny learning rate the next mask never changes: each middle round stops after 1 + patience checks.
    trainer = _trainer(tmp_path, lr=1e-7, **EARLY)
    trainer.train()
    history = trainer.lottery_history
    assert [r["steps"] for r in history] == [8, 3, 8]  # round 0 (dense) and the ticket train to the end
    assert [r["total_steps"] for r in history] == [8, 11, 19]
    assert "early_bird" not in history[0] and "early_bird" not in history[2]
    assert history[1]["early_bird"] == {"stopped_at_step": 3, "distances": [0.0, 0.0]}
    assert trainer.ticket.num_pruned == round(0.5 * trainer.ticket.num_params)


def test_a_threshold_of_zero_never_stops_and_round0_is_optional(tmp_path):
    trainer = _trainer(tmp_path / "never", lr=1e-7, **{**EARLY, "early_bird_threshold": 0.0})
    trainer.train()
    assert [r["steps"] for r in trainer.lottery_history] == [8, 8, 8]
    assert trainer.lottery_history[1]["early_bird"]["stopped_at_step"] is None
    trainer = _trainer(tmp_path / "round0", lr=1e-7, early_bird_round0=True, **EARLY)
    trainer.train()
    assert [r["steps"] for r in trainer.lottery_history] == [3, 3, 8]


def test_resuming_in_the_middle_of_an_early_bird_round_stops_where_the_run_would(tmp_path):
    settings = dict(lr=1e-3, save_strategy="steps", save_steps=1, **{**EARLY, "early_bird_threshold": 0.5})
    reference = _trainer(tmp_path / "ref", **settings)
    reference.train()
    killed = _trainer(tmp_path / "run", kill_at=(1, 2), **settings)
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    resumed = _trainer(tmp_path / "run", **settings)
    resumed.train(resume_from_checkpoint=True)
    steps = [(r["steps"], r.get("early_bird")) for r in resumed.lottery_history]
    assert steps == [(r["steps"], r.get("early_bird")) for r in reference.lottery_history]
    assert reference.lottery_history[1]["early_bird"]["stopped_at_step"] is not None
    assert resumed.ticket == reference.ticket


def test_the_callback_ends_levels_early(tmp_path):
    out = str(tmp_path)
    lottery = LotteryArguments(output_dir=out, pruning_interval_steps=6, early_bird_round0=True, **COMMON, **EARLY)
    callback = LotteryCallback(lottery)
    train = TrainingArguments(
        output_dir=out,
        max_steps=14,
        learning_rate=1e-7,
        **{k: v for k, v in COMMON.items() if k not in ("target_sparsity", "pruning_rate")},
    )
    Trainer(model=tiny_model(), args=train, train_dataset=toy_dataset(64), callbacks=[callback]).train()
    # levels 0 and 1 stop after 3 steps each; the last level trains the remaining 8 steps
    assert [r["steps"] for r in callback.history] == [3, 3, 8]
    assert [r["total_steps"] for r in callback.history] == [3, 6, 14]
    assert callback.ticket.num_pruned == round(0.5 * callback.ticket.num_params)


def test_early_bird_needs_a_method_that_prunes_trained_weights(tmp_path):
    args = LotteryArguments(output_dir=str(tmp_path), pruning_method="synflow", early_bird_interval_steps=5, **COMMON)
    with pytest.raises(ValueError, match="early_bird_interval_steps needs a method that prunes trained weights"):
        LotteryCallback(args)


def test_early_bird_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="early_bird_interval_steps"):
        LotteryArguments(output_dir=str(tmp_path), early_bird_interval_steps=0)
    with pytest.raises(ValueError, match="early_bird_threshold"):
        LotteryArguments(output_dir=str(tmp_path), early_bird_threshold=1.5)
