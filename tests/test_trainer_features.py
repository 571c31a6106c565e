"""The Trainer features people use, inside `LotteryTrainer` and with `LotteryCallback`.

Each row of the table in docs/trainer_features.md names the test of this module that backs it (checked below).
Adding a row to the table: add its test here first.
"""

from __future__ import annotations

import json
import logging as pylogging
import re
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from huggingface_hub import ModelCard
from huggingface_hub.utils import filter_repo_objects
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.utils import logging

import hf_lottery.training.trainer as trainer_module
from hf_lottery import LotteryArguments, LotteryCallback, LotteryTrainer, TicketMask
from hf_lottery.testing_utils import tiny_model, toy_dataset
from hf_lottery.training.run_state import snapshot_weights

DOCS = REPO_ROOT / "docs" / "trainer_features.md"


def accuracy(p):
    return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}


def make_args(tmp_path: Path, cls=LotteryArguments, **overrides):
    values = dict(
        output_dir=str(tmp_path / "run"),
        num_train_epochs=1,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=7,
    )
    if cls is LotteryArguments:
        values.update(target_sparsity=0.5, pruning_rate=0.25)
    values.update(overrides)
    return cls(**values)


def make_trainer(tmp_path, *, model=None, callbacks=(), train_size=64, **overrides) -> LotteryTrainer:
    kwargs = {} if "model_init" in overrides else {"model": model if model is not None else tiny_model(seed=1)}
    if "model_init" in overrides:
        kwargs["model_init"] = overrides.pop("model_init")
    return LotteryTrainer(
        args=make_args(tmp_path, **overrides),
        train_dataset=toy_dataset(train_size),
        eval_dataset=toy_dataset(32, seed=1),
        compute_metrics=accuracy,
        callbacks=list(callbacks),
        **kwargs,
    )


def assert_pruned_zero(model, mask):
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        assert torch.count_nonzero(params[name].detach()[~keep]) == 0, name


class Snapshots(TrainerCallback):
    """Weights at the start and end of every round, and every log with the step it was logged at."""

    def __init__(self, trainer_ref):
        self.trainer_ref = trainer_ref
        self.begin, self.end, self.logs = {}, {}, []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.begin[self.trainer_ref[0].lottery_round] = snapshot_weights(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.end[self.trainer_ref[0].lottery_round] = snapshot_weights(model)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs)))


def with_snapshots(tmp_path, **overrides):
    ref = [None]
    snapshots = Snapshots(ref)
    trainer = make_trainer(tmp_path, callbacks=[snapshots], **overrides)
    ref[0] = trainer
    return trainer, snapshots


# -- model_init and hyperparameter_search ---------------------------------------------------------------------
def test_model_init_builds_the_model_once_per_run(tmp_path):
    calls = []

    def model_init():
        calls.append(1)
        return tiny_model(seed=1)

    trainer, snapshots = with_snapshots(tmp_path, model_init=model_init, rewind="lr", warmup_steps=0)
    calls.clear()  # the Trainer builds one model in __init__
    trainer.train()
    assert len(calls) == 1  # once for the run, not once per round
    # rewind="lr": every round starts from the previous round's trained weights (masked), not from model_init
    for r in (1, 2):
        mask = trainer._run_state.load_mask(r)
        for name, weight in snapshots.end[r - 1].items():
            expected = weight * mask[name] if name in mask else weight
            assert torch.equal(snapshots.begin[r][name], expected), (r, name)
    assert_pruned_zero(trainer.model, trainer.ticket)


def test_hyperparameter_search_runs_one_lottery_run_per_trial(tmp_path):
    pytest.importorskip("optuna")
    trainer = make_trainer(tmp_path, model_init=lambda: tiny_model(seed=1), eval_strategy="epoch")

    def hp_space(trial):
        return {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)}

    best = trainer.hyperparameter_search(hp_space=hp_space, n_trials=2, direction="minimize", backend="optuna")
    assert best.run_id in {"0", "1"} and "learning_rate" in best.hyperparameters
    for trial in (0, 1):
        history = json.loads((tmp_path / "run" / f"run-{trial}" / "lottery_history.json").read_text())["rounds"]
        assert [r["round"] for r in history] == [0, 1, 2]
        assert [r["sparsity"] for r in history] == pytest.approx([0.0, 0.25, 0.5], abs=1e-3)
    # the objective is transformers' default over the best run's last round (the ticket at the target sparsity):
    # with compute_metrics, the sum of its metrics (here the accuracy), not the loss
    from transformers.trainer_utils import default_compute_objective

    best_history = json.loads((tmp_path / "run" / f"run-{best.run_id}" / "lottery_history.json").read_text())
    assert best.objective == pytest.approx(default_compute_objective(best_history["rounds"][-1]["metrics"]))


# -- load_best_model_at_end, eval/save strategies, early stopping ---------------------------------------------
def test_load_best_model_at_end_records_the_best_evaluation(tmp_path):
    trainer, snapshots = with_snapshots(
        tmp_path,
        learning_rate=3e-2,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        greater_is_better=False,
    )
    trainer.train()
    evals = [(step, logs["eval_loss"]) for step, logs in snapshots.logs if "eval_loss" in logs]
    offset = 0
    for record in trainer.lottery_history:
        steps = record["steps"]
        losses = [loss for step, loss in evals if offset < step <= offset + steps]
        assert len(losses) == steps
        assert record["metrics"]["eval_loss"] == min(losses)  # the kept (and next pruned) model's evaluation
        offset += steps
    history = json.loads((tmp_path / "run" / "lottery_history.json").read_text())["rounds"]
    assert [r["metrics"]["eval_loss"] for r in history] == [r["metrics"]["eval_loss"] for r in trainer.lottery_history]


def test_eval_and_save_strategies_run_inside_every_round(tmp_path):
    trainer, snapshots = with_snapshots(
        tmp_path, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2
    )
    trainer.train()
    out = tmp_path / "run"
    for r in range(3):
        assert sorted(p.name for p in (out / f"round_{r}").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
        assert "eval_accuracy" in trainer.lottery_history[r]["metrics"]
    assert sum("eval_loss" in logs for _, logs in snapshots.logs) == 6  # two per round, none repeated


def test_early_stopping_stops_each_round_on_its_own(tmp_path):
    trainer = make_trainer(
        tmp_path,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=10.0)],
        train_size=160,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        greater_is_better=False,
    )
    trainer.train()
    # a threshold no improvement passes: every round stops at its second evaluation (of 10 steps)
    assert [r["steps"] for r in trainer.lottery_history] == [2, 2, 2]
    assert trainer.ticket.sparsity == pytest.approx(0.5, abs=1e-3)
    assert_pruned_zero(trainer.model, trainer.ticket)


# -- the training step: gradient accumulation, bf16, torch_compile, label smoothing, group_by_length -----------
def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    trainer = make_trainer(tmp_path, gradient_accumulation_steps=2)
    trainer.train()
    assert [r["steps"] for r in trainer.lottery_history] == [2, 2, 2]  # 4 batches, 2 per optimizer step
    assert_pruned_zero(trainer.model, trainer.ticket)
    callback_run = _callback_run(tmp_path, gradient_accumulation_steps=2)
    assert callback_run.state.global_step == 2
    assert_pruned_zero(callback_run.model, callback_run.lottery.ticket)


def test_bf16_mixed_precision_keeps_pruned_weights_zero(tmp_path):
    trainer = make_trainer(tmp_path, bf16=True)
    trainer.train()
    assert trainer.ticket.sparsity == pytest.approx(0.5, abs=1e-3)
    assert_pruned_zero(trainer.model, trainer.ticket)
    callback_run = _callback_run(tmp_path, bf16=True)
    assert_pruned_zero(callback_run.model, callback_run.lottery.ticket)


def test_torch_compile_keeps_pruned_weights_zero(tmp_path):
    # The eager backend runs TorchDynamo's capture without a C++ compiler (inductor would need one).
    trainer = make_trainer(tmp_path, torch_compile=True, torch_compile_backend="eager")
    trainer.train()
    assert trainer.ticket.sparsity == pytest.approx(0.5, abs=1e-3)
    assert_pruned_zero(trainer.accelerator.unwrap_model(trainer.model), trainer.ticket)


def test_label_smoothing_changes_the_loss_and_keeps_the_mask(tmp_path):
    plain = make_trainer(tmp_path / "plain")
    plain.train()
    smoothed = make_trainer(tmp_path / "smooth", label_smoothing_factor=0.2)
    smoothed.train()
    assert smoothed.lottery_history[0]["train_loss"] != pytest.approx(plain.lottery_history[0]["train_loss"])
    assert_pruned_zero(smoothed.model, smoothed.ticket)


def test_group_by_length_sampling(tmp_path):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    trainer = make_trainer(tmp_path, train_sampling_strategy="group_by_length")
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)
    trainer.train()
    assert [r["steps"] for r in trainer.lottery_history] == [4, 4, 4]
    assert_pruned_zero(trainer.model, trainer.ticket)


# -- report_to, logging, push_to_hub, the card -----------------------------------------------------------------
def test_logs_keep_one_increasing_step_axis_with_a_record_per_round(tmp_path):
    trainer, snapshots = with_snapshots(tmp_path, logging_steps=1, eval_strategy="epoch")
    trainer.train()
    loss_steps = [step for step, logs in snapshots.logs if "loss" in logs]
    assert loss_steps == list(range(1, 13))  # 3 rounds x 4 steps, never restarting at 1
    steps = [step for step, _ in snapshots.logs]
    assert steps == sorted(steps)
    records = [(step, logs) for step, logs in snapshots.logs if "lottery/round" in logs]
    assert [step for step, _ in records] == [4, 8, 12]
    for (_, logs), record in zip(records, trainer.lottery_history):
        assert logs["lottery/round"] == record["round"]
        assert logs["lottery/sparsity"] == record["sparsity"]
        assert logs["lottery/train_loss"] == record["train_loss"]
        assert logs["lottery/eval_accuracy"] == record["metrics"]["eval_accuracy"]
    assert trainer.state.log_history[-1]["lottery/round"] == 2  # in log_history too (trainer_state.json)


def test_round_messages_follow_transformers_verbosity(tmp_path):
    messages = []

    class Collect(pylogging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect()
    library_logger = logging.get_logger("transformers")
    library_logger.addHandler(handler)
    try:
        trainer = make_trainer(tmp_path, log_level="info", target_sparsity=0.25)
        trainer.train()
    finally:
        library_logger.removeHandler(handler)
        logging.set_verbosity_warning()
    assert any(m.startswith("Lottery round 1/1: sparsity 25.0%") for m in messages), messages[:5]
    assert any(m.startswith("Lottery schedule") for m in messages)


class FakeHubApi:
    def __init__(self):
        self.uploads = []

    def upload_folder(self, **kwargs):
        self.uploads.append(kwargs)


def _uploaded_files(upload) -> list[str]:
    folder = Path(upload["folder_path"])
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    return sorted(filter_repo_objects(files, ignore_patterns=upload["ignore_patterns"]))


def test_push_to_hub_uploads_the_ticket_not_the_run(tmp_path, monkeypatch):
    api = FakeHubApi()
    monkeypatch.setattr(trainer_module, "hf_api", lambda: api)
    trainer = make_trainer(tmp_path, save_strategy="steps", save_steps=2, eval_strategy="epoch")
    trainer.hub_model_id = "someone/tiny-ticket"  # as init_hf_repo would set it
    trainer.train()
    assert (tmp_path / "run" / "lottery_state").is_dir() and (tmp_path / "run" / "round_1" / "checkpoint-4").is_dir()
    trainer.push_to_hub()
    assert len(api.uploads) == 1
    files = _uploaded_files(api.uploads[0])
    assert not [f for f in files if f.startswith(("lottery_state/", "round_", "checkpoint-"))], files
    assert {"model.safetensors", "config.json", "ticket_config.json", "ticket_mask.safetensors", "README.md"} <= set(
        files
    )
    card = ModelCard.load(tmp_path / "run" / "README.md")
    assert card.data.library_name == "hf_lottery" and card.data.pipeline_tag == "text-classification"
    assert "also holds the sparse model" in card.text
    assert TicketMask.from_pretrained(tmp_path / "run") == trainer.ticket


def test_save_model_card_says_the_folder_holds_the_weights(tmp_path):
    trainer = make_trainer(tmp_path, target_sparsity=0.25)
    trainer.train()
    folder = tmp_path / "sparse"
    trainer.save_model(str(folder))
    card = ModelCard.load(folder / "README.md")
    assert "also holds the sparse model" in card.text and "holds the mask, not weights" not in card.text
    assert card.data.pipeline_tag == "text-classification"
    # a ticket folder without weights keeps saying so
    trainer.ticket.save_pretrained(tmp_path / "mask_only")
    mask_card = ModelCard.load(tmp_path / "mask_only" / "README.md")
    assert "holds the mask, not weights" in mask_card.text and mask_card.data.pipeline_tag is None


# -- LotteryCallback in a plain Trainer ------------------------------------------------------------------------
def _callback_run(tmp_path, **overrides):
    lottery = LotteryCallback(make_args(tmp_path / "lottery_args", target_sparsity=0.5, pruning_rate=0.25))
    trainer = Trainer(
        model=tiny_model(seed=1),
        args=make_args(tmp_path / "callback", cls=TrainingArguments, **overrides),
        train_dataset=toy_dataset(64),
        callbacks=[lottery],
    )
    trainer.train()
    trainer.lottery = lottery
    return trainer


# -- The table in docs/trainer_features.md ----------------------------------------------------------------------
def _table_rows() -> list[list[str]]:
    rows = []
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 4 and not set(cells[0]) <= set("-: ") and cells[0] != "Feature":
            rows.append(cells)
    return rows


def test_every_row_of_the_features_table_names_a_test_of_this_module():
    rows = _table_rows()
    features = {row[0] for row in rows}
    for wanted in (
        "model_init",
        "hyperparameter_search",
        "load_best_model_at_end",
        "eval_strategy / save_strategy",
        "gradient_accumulation_steps",
        "bf16 / fp16",
        "torch_compile",
        "report_to",
        "push_to_hub",
        "EarlyStoppingCallback",
        "label_smoothing_factor",
        'train_sampling_strategy="group_by_length"',
    ):
        assert any(wanted in f for f in features), wanted
    tests = {name for name, obj in globals().items() if name.startswith("test_") and callable(obj)}
    for row in rows:
        named = re.findall(r"`(test_\w+)`", row[3])
        assert named and set(named) <= tests, row


def test_seeded_runs_are_reproducible_across_processes(tmp_path):
    import os
    import subprocess
    import sys

    script = REPO_ROOT / "tests" / "scripts" / "seeded_lottery_run.py"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    results = []
    for i in range(2):
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path / f"run{i}")],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert results[0] == results[1]  # history, ticket and final weights, bit for bit
    assert [r["round"] for r in results[0]["history"]] == [0, 1, 2]
