"""A killed LotteryTrainer run resumes to exactly the uninterrupted result; torn writes never load wrongly.

The SIGKILL test drives bench/fault_tolerance.py (5 deterministic kill points here, 20+ in the benchmark).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT
from transformers import Trainer, TrainingArguments

from hf_lottery import LotteryArguments, LotteryCallback, LotteryTrainer
from hf_lottery.testing_utils import tiny_model, toy_dataset
from hf_lottery.training.resume import last_complete_checkpoint
from hf_lottery.training.run_state import RunState
from hf_lottery.utils.io import load_tensors, save_tensors

BENCH = REPO_ROOT / "bench" / "fault_tolerance.py"


def test_sigkill_at_five_points_then_resume_matches_uninterrupted_run(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    report = tmp_path / "report.json"
    cmd = [sys.executable, str(BENCH), "--points", "5", "--time-points", "0", "--target-sparsity", "0.1"]
    cmd += ["--seed", "0", "--workdir", str(tmp_path / "runs"), "--json", str(report)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    results = json.loads(report.read_text())["results"] if report.is_file() else []
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert len(results) == 5
    assert all(r["first_run"] == "killed" for r in results)
    # The plan always includes a torn trainer_state.json and a kill between an atomic write and its rename.
    events = [r["event"] for r in results]
    assert any("torn" in e for e in events) and any(e.startswith("atomic_write") for e in events)
    for r in results:
        assert r["resume"] == "finished" and r["finished"], r
        assert r["ticket_equal"] and r["history_equal"], r


def test_last_complete_checkpoint_skips_torn_folders(tmp_path):
    def checkpoint(step, state_text):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state_text is not None:
            (folder / "trainer_state.json").write_text(state_text)

    assert last_complete_checkpoint(tmp_path / "missing") is None
    checkpoint(2, json.dumps({"global_step": 2}))
    checkpoint(4, json.dumps({"global_step": 4}))
    checkpoint(6, '{"global_step": 6, "log_hi')  # truncated by a kill
    checkpoint(8, None)  # killed before trainer_state.json
    (tmp_path / "checkpoint-10").write_text("not a folder")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")


def test_tensors_load_in_the_order_they_were_saved(tmp_path):
    # safetensors sorts names; tie-breaking and random scores depend on the order, so it must survive a resume.
    tensors = {"z.weight": torch.zeros(2), "a.weight": torch.ones(3), "m.weight": torch.ones(1)}
    save_tensors(tmp_path / "t.safetensors", tensors)
    assert list(load_tensors(tmp_path / "t.safetensors")) == ["z.weight", "a.weight", "m.weight"]


def _args(output_dir, **overrides) -> LotteryArguments:
    values = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=16,
        num_train_epochs=1,
        learning_rate=1e-3,
        target_sparsity=0.1,
        pruning_rate=0.1,
        rewind="lr",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    values.update(overrides)
    return LotteryArguments(**values)


def _trainer(output_dir, **overrides) -> LotteryTrainer:
    return LotteryTrainer(
        model=tiny_model(), args=_args(output_dir, **overrides), train_dataset=toy_dataset(32), eval_dataset=None
    )


class _Killed(Exception):
    pass


def test_kill_between_trained_weights_and_state_keeps_the_rewind_point(tmp_path, monkeypatch):
    # rewind="lr" rewinds round r to trained_round_{r-1}; a kill after trained_round_r is written but before
    # state.json says so must not have deleted it (no checkpoint of round r exists with save_strategy="no").
    reference = _trainer(tmp_path / "ref")
    reference.train()

    original_write = RunState.write

    def write(self, round_index, phase, schedule, history):
        if round_index == 1 and phase == "trained":
            raise _Killed
        return original_write(self, round_index, phase, schedule, history)

    monkeypatch.setattr(RunState, "write", write)
    with pytest.raises(_Killed):
        _trainer(tmp_path / "run").train()
    monkeypatch.setattr(RunState, "write", original_write)
    # Round 1 trained again from trained_round_0, as if the kill had come just before its last write.
    resumed = _trainer(tmp_path / "run")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.ticket == reference.ticket
    assert [r["train_loss"] for r in resumed.lottery_history] == [r["train_loss"] for r in reference.lottery_history]


def test_callback_refuses_to_resume_gradual_imp_without_its_mask(tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=16,
        max_steps=2,
        save_strategy="steps",
        save_steps=1,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )
    lottery = _args(tmp_path, rewind="pretrained", pruning_interval_steps=1)
    Trainer(model=tiny_model(), args=args, train_dataset=toy_dataset(32), callbacks=[LotteryCallback(lottery)]).train()
    (tmp_path / "checkpoint-2" / "lottery_callback_mask.safetensors").unlink()  # as if killed before on_save
    trainer = Trainer(
        model=tiny_model(), args=args, train_dataset=toy_dataset(32), callbacks=[LotteryCallback(lottery)]
    )
    with pytest.raises(ValueError, match="Delete that checkpoint folder"):
        trainer.train(resume_from_checkpoint=True)
