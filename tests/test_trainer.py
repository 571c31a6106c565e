"""LotteryTrainer: rounds, rewinding to exact weights, exact zeros, history, callbacks, resume."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerCallback

from hf_lottery import LotteryArguments, LotteryTrainer
from hf_lottery.testing_utils import tiny_model, toy_dataset
from hf_lottery.training.run_state import snapshot_weights


def accuracy(p):
    return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}


def make_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "run"),
        num_train_epochs=1,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        weight_decay=0.1,
        target_sparsity=0.5,
        pruning_rate=0.25,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=7,
    )
    values.update(overrides)
    return LotteryArguments(**values)


class Recorder(TrainerCallback):
    """Records weights and learning rates at round boundaries."""

    def __init__(self, trainer_ref):
        self.trainer_ref = trainer_ref
        self.begin, self.end, self.first_lr, self.step_weights = {}, {}, {}, {}
        self.train_begin_calls = 0
        self.train_end_calls = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.train_begin_calls += 1
        self.begin[self.trainer_ref[0].lottery_round] = snapshot_weights(model)

    def on_step_end(self, args, state, control, model=None, lr_scheduler=None, **kwargs):
        r = self.trainer_ref[0].lottery_round
        if state.global_step == 1:
            self.first_lr[r] = kwargs["optimizer"].param_groups[0]["lr"]
        self.step_weights[(r, state.global_step)] = snapshot_weights(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.train_end_calls += 1
        self.end[self.trainer_ref[0].lottery_round] = snapshot_weights(model)


def build(tmp_path, callbacks=(), **overrides):
    """The trainer of `run`, not yet trained, with a `Recorder` (and `callbacks`); returns it, the recorder, θ0."""
    model = tiny_model(seed=1)
    theta0 = snapshot_weights(model)
    ref = [None]
    recorder = Recorder(ref)
    trainer = LotteryTrainer(
        model=model,
        args=make_args(tmp_path, **overrides),
        train_dataset=toy_dataset(64),
        eval_dataset=toy_dataset(32, seed=1),
        compute_metrics=accuracy,
        callbacks=[recorder, *callbacks],
    )
    ref[0] = trainer
    return trainer, recorder, theta0


def run(tmp_path, **overrides):
    trainer, recorder, theta0 = build(tmp_path, **overrides)
    trainer.train()
    return trainer, recorder, theta0


def kill_at(tmp_path, round_index, step, **overrides):
    """Train a run in `tmp_path` until `step` of round `round_index`, where it is killed."""
    ref = [None]
    trainer, _, _ = build(tmp_path, callbacks=[KillAt(ref, round_index, step)], **overrides)
    ref[0] = trainer
    with pytest.raises(Interrupt):
        trainer.train()


def _masked(weights, mask):
    return {n: (w * mask[n] if n in mask else w) for n, w in weights.items()}


def _assert_equal_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_rounds_schedule_history_and_files(tmp_path):
    trainer, recorder, _ = run(tmp_path)
    history = trainer.lottery_history
    assert [r["round"] for r in history] == [0, 1, 2]
    assert [r["sparsity"] for r in history] == pytest.approx([0.0, 0.25, 0.5])
    assert trainer.ticket.sparsity == pytest.approx(0.5, abs=1e-4)
    assert all("eval_accuracy" in r["metrics"] and r["steps"] == 4 for r in history)
    assert "bert.pooler.dense.weight" in history[-1]["tensor_sparsity"]
    # each round is a training run for callbacks
    assert recorder.train_begin_calls == recorder.train_end_calls == 3
    out = tmp_path / "run"
    saved = json.loads((out / "lottery_history.json").read_text())
    assert [r["round"] for r in saved["rounds"]] == [0, 1, 2]
    assert (out / "sparsity_plot.png").read_bytes()[:4] == b"\x89PNG"


def test_rewind_pretrained_restores_theta0_masked_including_head(tmp_path):
    trainer, recorder, theta0 = run(tmp_path)
    state = trainer._run_state
    for r in (1, 2):
        mask = state.load_mask(r)
        _assert_equal_weights(recorder.begin[r], _masked(theta0, mask))
    # the head was trained in round 0 and rewound afterwards
    assert not torch.equal(recorder.end[0]["classifier.weight"], theta0["classifier.weight"])


def test_rewind_step_restores_weights_after_step_k(tmp_path):
    trainer, recorder, _ = run(tmp_path, rewind="step", rewind_step=2)
    after_step_2 = recorder.step_weights[(0, 2)]
    for r in (1, 2):
        _assert_equal_weights(recorder.begin[r], _masked(after_step_2, trainer._run_state.load_mask(r)))


def test_rewind_step_beyond_round0_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="rewind_step=99 was never reached"):
        run(tmp_path, rewind="step", rewind_step=99)


def test_lr_rewinding_keeps_trained_weights_and_restarts_schedule(tmp_path):
    trainer, recorder, _ = run(tmp_path, rewind="lr", warmup_steps=0)
    for r in (1, 2):
        _assert_equal_weights(recorder.begin[r], _masked(recorder.end[r - 1], trainer._run_state.load_mask(r)))
        assert recorder.first_lr[r] == pytest.approx(recorder.first_lr[0])


def test_finetune_baseline_uses_low_constant_lr(tmp_path):
    trainer, recorder, _ = run(tmp_path, rewind="none")
    for r in (1, 2):
        _assert_equal_weights(recorder.begin[r], _masked(recorder.end[r - 1], trainer._run_state.load_mask(r)))
        assert recorder.first_lr[r] == pytest.approx(1e-4)
    assert trainer.args.learning_rate == 1e-3  # restored after the round


def test_pruned_weights_stay_exactly_zero_through_adamw(tmp_path):
    trainer, recorder, _ = run(tmp_path, weight_decay=0.5)
    for (r, _step), weights in recorder.step_weights.items():
        if r == 0:
            continue
        mask = trainer._run_state.load_mask(r)
        for name, m in mask.items():
            assert torch.count_nonzero(weights[name][~m]) == 0, (r, name)
    # kept weights did train
    mask = trainer.ticket
    name = next(iter(mask))
    assert not torch.equal(recorder.begin[2][name][mask[name]], recorder.end[2][name][mask[name]])


def test_checkpoints_keep_vanilla_keys(tmp_path):
    run(tmp_path, save_strategy="epoch")
    from safetensors.torch import load_file

    ckpt = tmp_path / "run" / "round_1" / "checkpoint-4" / "model.safetensors"
    keys = set(load_file(str(ckpt)))
    assert keys == set(tiny_model().state_dict()) - {"bert.embeddings.position_ids"} or keys <= set(
        tiny_model().state_dict()
    )
    assert not any("orig" in k or "mask" in k or "parametriz" in k for k in keys)


def test_rejects_plain_training_arguments_and_optimizers(tmp_path):
    from transformers import TrainingArguments

    with pytest.raises(TypeError, match="LotteryArguments"):
        LotteryTrainer(model=tiny_model(), args=TrainingArguments(output_dir=str(tmp_path)))
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer_cls_and_kwargs"):
        LotteryTrainer(model=model, args=make_args(tmp_path), optimizers=(opt, None))


class Interrupt(Exception):
    pass


class KillAt(TrainerCallback):
    def __init__(self, ref, round_index, step):
        self.ref, self.round_index, self.step = ref, round_index, step

    def on_step_end(self, args, state, control, **kwargs):
        if self.ref[0].lottery_round == self.round_index and state.global_step == self.step:
            raise Interrupt


@pytest.mark.parametrize("kill_round,kill_step", [(0, 3), (1, 1), (2, 3)])
def test_kill_and_resume_gives_the_same_ticket(tmp_path, kill_round, kill_step):
    overrides = dict(save_strategy="steps", save_steps=2, num_train_epochs=2)
    reference, _, _ = run(tmp_path / "ref", **overrides)

    kill_at(tmp_path / "killed", kill_round, kill_step, **overrides)

    resumed = LotteryTrainer(
        model=tiny_model(seed=99),  # weights come from the saved state, not from this model
        args=make_args(tmp_path / "killed", **overrides),
        train_dataset=toy_dataset(64),
        eval_dataset=toy_dataset(32, seed=1),
        compute_metrics=accuracy,
    )
    resumed.train(resume_from_checkpoint=True)
    assert resumed.ticket == reference.ticket

    assert _strip_timing(resumed.lottery_history) == _strip_timing(reference.lottery_history)
    final_ref = snapshot_weights(reference.model)
    _assert_equal_weights(snapshot_weights(resumed.model), final_ref)


def test_resume_without_state_fails_clearly(tmp_path):
    trainer = LotteryTrainer(model=tiny_model(), args=make_args(tmp_path), train_dataset=toy_dataset(16))
    with pytest.raises(ValueError, match="No lottery run to resume"):
        trainer.train(resume_from_checkpoint=True)


def _resume(folder, **overrides):
    trainer = LotteryTrainer(
        model=tiny_model(seed=99),  # weights come from the saved state, not from this model
        args=make_args(folder, **overrides),
        train_dataset=toy_dataset(64),
        eval_dataset=toy_dataset(32, seed=1),
        compute_metrics=accuracy,
    )
    trainer.train(resume_from_checkpoint=True)
    return trainer


def _strip_timing(history):
    """Records without what describes the train() call that finished a round (seconds, train_loss): they differ
    after a kill; the cost of the next mask keeps its scorer batches, not its seconds."""
    stripped = []
    for record in history:
        record = {k: v for k, v in record.items() if k not in ("seconds", "train_loss")}
        if "next_mask" in record:
            record["next_mask"] = {k: v for k, v in record["next_mask"].items() if k != "seconds"}
        stripped.append(record)
    return stripped


def test_raising_target_sparsity_extends_a_finished_run_to_the_fresh_runs_ticket(tmp_path):
    """A finished 50 % run resumed with target 75 % trains round 3 only, and ends where a 75 % run would."""
    per_round = dict(pruning_rate=0.25, pruning_rate_of="original")
    reference, _, _ = run(tmp_path / "ref", target_sparsity=0.75, **per_round)
    finished, _, _ = run(tmp_path / "ext", target_sparsity=0.5, **per_round)
    assert [r["round"] for r in finished.lottery_history] == [0, 1, 2]

    extended = _resume(tmp_path / "ext", target_sparsity=0.75, **per_round)
    assert [r["round"] for r in extended.lottery_history] == [0, 1, 2, 3]
    assert extended.ticket == reference.ticket
    assert extended.ticket.sparsity == pytest.approx(0.75, abs=1e-3)
    # rounds 0-2 are the finished run's records, kept as they were (seconds included); round 2's gains the cost of
    # the mask chosen from its weights
    kept = [dict(record) for record in extended.lottery_history[:3]]
    assert "next_mask" not in finished.lottery_history[2] and kept[2].pop("next_mask")["scoring_batches"] == 0
    assert kept == finished.lottery_history
    assert _strip_timing(extended.lottery_history) == _strip_timing(reference.lottery_history)
    _assert_equal_weights(snapshot_weights(extended.model), snapshot_weights(reference.model))
    state = json.loads((tmp_path / "ext" / "run" / "lottery_state" / "state.json").read_text())
    assert state["schedule"] == pytest.approx([0.0, 0.25, 0.5, 0.75])


@pytest.mark.parametrize(
    "change",
    [
        dict(target_sparsity=0.25, pruning_rate_of="original"),  # lower: the rounds trained went past it
        dict(target_sparsity=0.75, pruning_rate=0.3, pruning_rate_of="original"),  # another path to the target
        dict(target_sparsity=0.5, pruning_rate_of="remaining"),
    ],
)
def test_resume_refuses_a_schedule_that_does_not_extend_the_saved_one(tmp_path, change):
    run(tmp_path, target_sparsity=0.5, pruning_rate_of="original")
    state_file = tmp_path / "run" / "lottery_state" / "state.json"
    before = state_file.read_bytes()
    with pytest.raises(ValueError, match="raise only target_sparsity to extend it"):
        _resume(tmp_path, **change)
    assert state_file.read_bytes() == before


def test_method_that_prunes_at_theta0_resumes_with_a_rate_below_the_target_but_never_extends(tmp_path):
    """SynFlow's schedule is (dense, target) whatever the rate: a killed run resumes to the uninterrupted ticket
    (it used to be refused, its saved schedule compared with the rate's levels); a higher target is refused, the
    ticket was chosen once at θ0."""
    overrides = dict(pruning_method="synflow", target_sparsity=0.6, pruning_rate=0.2)
    overrides.update(save_strategy="steps", save_steps=2)
    reference, _, _ = run(tmp_path / "ref", **overrides)
    assert [r["sparsity"] for r in reference.lottery_history] == pytest.approx([0.0, 0.6], abs=1e-3)

    kill_at(tmp_path / "killed", 1, 1, **overrides)
    resumed = _resume(tmp_path / "killed", **overrides)
    assert resumed.ticket == reference.ticket
    assert _strip_timing(resumed.lottery_history) == _strip_timing(reference.lottery_history)

    with pytest.raises(ValueError, match="give \\[0.0, 0.8\\]"):
        _resume(tmp_path / "killed", **{**overrides, "target_sparsity": 0.8})


def test_save_model_folder_loads_vanilla_and_keeps_its_mask_when_handed_back(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from hf_lottery import LotteryCallback, TicketMask

    trainer, _, _ = run(tmp_path)
    folder = tmp_path / "sparse"
    trainer.save_model(str(folder))
    ticket = TicketMask.from_model_folder(folder)
    assert ticket == trainer.ticket
    assert ticket.metadata["history"][-1]["round"] == 2

    reloaded = AutoModelForSequenceClassification.from_pretrained(folder)
    params = dict(reloaded.named_parameters())
    assert all(torch.count_nonzero(params[n][~m]) == 0 for n, m in ticket.items())

    # continue fine-tuning the sparse folder: its mask is found and kept
    again = LotteryTrainer(
        model=reloaded,
        args=make_args(tmp_path / "again", target_sparsity=0.5),
        train_dataset=toy_dataset(64),
    )
    assert again.initial_mask == ticket
    again.train()
    assert again.lottery_history[0]["sparsity"] == pytest.approx(ticket.sparsity)
    assert len(again.lottery_history) == 1
    params = dict(reloaded.named_parameters())
    assert all(torch.count_nonzero(params[n][~m]) == 0 for n, m in ticket.items())

    # and with a plain Trainer + LotteryCallback
    from transformers import Trainer, TrainingArguments

    model = AutoModelForSequenceClassification.from_pretrained(folder)
    callback = LotteryCallback(make_args(tmp_path / "cb", target_sparsity=0.5))
    Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(tmp_path / "cb"),
            num_train_epochs=1,
            learning_rate=1e-3,
            per_device_train_batch_size=16,
            report_to=[],
            save_strategy="no",
        ),
        train_dataset=toy_dataset(64),
        callbacks=[callback],
    ).train()
    assert callback.ticket == ticket
    params = dict(model.named_parameters())
    assert all(torch.count_nonzero(params[n][~m]) == 0 for n, m in ticket.items())


def test_synflow_chooses_the_ticket_once_at_theta0(tmp_path):
    from hf_lottery import prune

    trainer, recorder, theta0 = run(tmp_path, pruning_method="synflow", synflow_iterations=5, target_sparsity=0.6)
    assert [r["round"] for r in trainer.lottery_history] == [0, 1]
    at_init = tiny_model(seed=1)
    expected = prune(at_init, 0.6, method="synflow", iterations=5, seed=8)
    assert trainer.ticket == expected
    _assert_equal_weights(recorder.begin[1], _masked(theta0, expected))


def test_hydra_runs_inside_the_trainer_with_the_train_dataloader(tmp_path):
    trainer, _, _ = run(tmp_path, pruning_method="hydra", hydra_epochs=1, target_sparsity=0.5, pruning_rate=0.5)
    assert [round(r["sparsity"], 4) for r in trainer.lottery_history] == [0.0, 0.5]


@pytest.mark.parametrize("weights_off", [-1.0, -0.5, 0.5, 1.0])
def test_a_mask_within_one_weight_of_the_target_trains_as_the_ticket(tmp_path, weights_off):
    """A ticket found elsewhere (its sparsity is round(target * n) / n, rarely the target itself) trains in one
    round; it is not pruned by one more weight in an extra round."""
    from hf_lottery import prune

    model = tiny_model()
    ticket = prune(model, 0.5)
    target = ticket.sparsity + weights_off / ticket.num_params
    trainer = LotteryTrainer(
        model=model, args=make_args(tmp_path, target_sparsity=target), train_dataset=toy_dataset(32), mask=ticket
    )
    trainer.train()
    assert len(trainer.lottery_history) == 1
    assert trainer.lottery_history[0]["sparsity"] == ticket.sparsity
    assert trainer.ticket == ticket


def test_a_mask_more_than_one_weight_short_of_the_target_is_pruned_on(tmp_path):
    from hf_lottery import prune

    model = tiny_model()
    ticket = prune(model, 0.4)
    trainer = LotteryTrainer(
        model=model,
        args=make_args(tmp_path, target_sparsity=ticket.sparsity + 2 / ticket.num_params),
        train_dataset=toy_dataset(32),
        mask=ticket,
    )
    trainer.train()
    assert len(trainer.lottery_history) == 2
    assert trainer.ticket.num_pruned == ticket.num_pruned + 2
