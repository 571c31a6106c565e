"""Knowledge distillation in the lottery loop: the loss, the round-0 teacher (frozen, saved once, resumed), a
given teacher, every rewind mode, structured granularity, and LotteryCallback in a plain Trainer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_lottery import LotteryArguments, LotteryCallback, LotteryTrainer, prune
from hf_lottery.testing_utils import tiny_model, toy_dataset
from hf_lottery.training.distillation import (
    Distiller,
    distillation_loss_per_item,
    frozen_copy,
    hidden_state_loss,
    task_loss_per_item,
)
from hf_lottery.training.run_state import RunState, snapshot_weights


def _args(output_dir, **overrides) -> LotteryArguments:
    values = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=16,
        num_train_epochs=1,
        learning_rate=1e-3,
        target_sparsity=0.2,
        pruning_rate=0.1,
        distill_alpha=0.5,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=3,
    )
    values.update(overrides)
    return LotteryArguments(**values)


def _losses(trainer) -> list[float]:
    return [r["train_loss"] for r in trainer.lottery_history]


class _RoundEnds(TrainerCallback):
    """The weights at the end of each round."""

    def __init__(self):
        self.trainer = None
        self.end = {}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.end[self.trainer.lottery_round] = snapshot_weights(model)


def _run(output_dir, model=None, dataset=None, **overrides):
    recorder = _RoundEnds()
    trainer = LotteryTrainer(
        model=model if model is not None else tiny_model(),
        args=_args(output_dir, **overrides),
        train_dataset=dataset if dataset is not None else toy_dataset(32),
        callbacks=[recorder],
    )
    recorder.trainer = trainer
    trainer.train()
    return trainer, recorder


# -- the loss -------------------------------------------------------------------------------------------------
def test_kl_is_hintons_formula():
    student, teacher = torch.randn(5, 3), torch.randn(5, 3)
    t = 3.0
    expected = F.kl_div(F.log_softmax(student / t, -1), F.softmax(teacher / t, -1), reduction="none").sum(-1) * t * t
    got = distillation_loss_per_item(student, teacher, t, regression=False)
    torch.testing.assert_close(got, expected)
    assert torch.allclose(distillation_loss_per_item(teacher, teacher, t, regression=False), torch.zeros(5), atol=1e-6)


def test_regression_is_the_squared_error_of_the_outputs():
    student, teacher = torch.randn(4, 1), torch.randn(4, 1)
    got = distillation_loss_per_item(student, teacher, 2.0, regression=True)
    torch.testing.assert_close(got, (student - teacher).pow(2).squeeze(-1))


def test_shape_mismatch_names_the_teachers_head():
    with pytest.raises(ValueError, match="num_labels"):
        distillation_loss_per_item(torch.zeros(2, 3), torch.zeros(2, 2), 1.0, regression=False)


def test_mixed_loss_weights_the_two_terms():
    teacher = tiny_model(seed=1)
    distiller = Distiller(teacher, alpha=0.25, temperature=2.0, regression=False)
    student_logits, teacher_logits = torch.randn(4, 2), torch.randn(4, 2)
    task = torch.tensor(1.5)
    kd = distillation_loss_per_item(student_logits, teacher_logits, 2.0, regression=False).mean()
    torch.testing.assert_close(distiller.mixed_loss(task, student_logits, teacher_logits), 0.75 * task + 0.25 * kd)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("num_labels", [2, 1])
def test_compute_loss_func_reproduces_the_models_task_loss(num_labels):
    model = tiny_model(num_labels=num_labels).eval()
    distiller = Distiller(tiny_model(seed=1, num_labels=num_labels), alpha=0.5, temperature=2.0, regression=False)
    distiller.attach(model)
    ids = torch.randint(6, 64, (4, 8))
    labels = torch.tensor([0, 1, 1, 0]) if num_labels == 2 else torch.randn(4)
    outputs = model(input_ids=ids)  # eval: no teacher run, the task loss alone
    torch.testing.assert_close(distiller.compute_loss_func(outputs, labels), model(input_ids=ids, labels=labels).loss)
    distiller.detach()


def test_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="distill_alpha"):
        _args(tmp_path, distill_alpha=1.5)
    with pytest.raises(ValueError, match="distill_temperature"):
        _args(tmp_path, distill_temperature=0.0)
    with pytest.raises(ValueError, match="distill_alpha=0"):
        _args(tmp_path, distill_alpha=0.0, distill_teacher="some/model")
    with pytest.raises(ValueError, match="distill_hidden_weight"):
        _args(tmp_path, distill_hidden_weight=-1.0)
    with pytest.raises(ValueError, match="distill_alpha=0"):
        _args(tmp_path, distill_alpha=0.0, distill_hidden_weight=1.0)
    assert not _args(tmp_path, distill_alpha=0.0).distills


# -- LotteryTrainer: the round-0 teacher ----------------------------------------------------------------------
@pytest.mark.parametrize("rewind", ["pretrained", "step", "lr", "none"])
def test_round0_teacher_is_saved_once_frozen_and_changes_later_rounds_only(tmp_path, monkeypatch, rewind):
    extra = {"rewind_step": 1} if rewind == "step" else {}
    plain, _ = _run(tmp_path / "plain", rewind=rewind, distill_alpha=0.0, **extra)
    saves = []
    original = RunState.save_teacher
    monkeypatch.setattr(RunState, "save_teacher", lambda self, w: (saves.append(1), original(self, w)))
    trainer, recorder = _run(tmp_path / "kd", rewind=rewind, **extra)
    assert len(saves) == 1
    teacher_file = RunState(tmp_path / "kd").load_teacher()
    # The teacher is the dense model as round 0 finished, and it never moved.
    for name, value in recorder.end[0].items():
        assert torch.equal(teacher_file[name], value), name
    teacher = trainer._distiller.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for name, value in snapshot_weights(teacher).items():
        assert torch.equal(value, teacher_file[name]), name
    assert float(teacher.bert.encoder.layer[0].attention.self.query.weight.eq(0).float().mean()) < 0.05  # dense
    # Round 0 trains the teacher as a run without distillation would; the sparse rounds learn from it.
    assert _losses(trainer)[0] == _losses(plain)[0]
    assert all(a != b for a, b in zip(_losses(trainer)[1:], _losses(plain)[1:], strict=True))
    # Round 1's mask is pruned from the same round-0 weights; later masks follow the distilled training.
    assert RunState(tmp_path / "kd").load_mask(1) == RunState(tmp_path / "plain").load_mask(1)
    assert trainer.ticket.sparsity == pytest.approx(0.2, abs=1e-3)


@pytest.mark.parametrize("hidden_weight", [0.0, 1.0])
def test_resumed_run_equals_an_uninterrupted_one(tmp_path, hidden_weight):
    class _Kill(TrainerCallback):
        def __init__(self):
            self.trainer = None

        def on_step_end(self, args, state, control, **kwargs):
            if self.trainer.lottery_round == 1 and state.global_step == 3:
                raise KeyboardInterrupt  # mid round 1, after the checkpoint of step 2

    overrides = dict(
        save_strategy="steps",
        save_steps=2,
        num_train_epochs=2,
        target_sparsity=0.2,
        distill_hidden_weight=hidden_weight,
    )
    reference, _ = _run(tmp_path / "ref", **overrides)
    killer = _Kill()
    first = LotteryTrainer(
        model=tiny_model(),
        args=_args(tmp_path / "run", **overrides),
        train_dataset=toy_dataset(32),
        callbacks=[killer],
    )
    killer.trainer = first
    with pytest.raises(KeyboardInterrupt):
        first.train()
    resumed = LotteryTrainer(
        model=tiny_model(), args=_args(tmp_path / "run", **overrides), train_dataset=toy_dataset(32)
    )
    resumed.train(resume_from_checkpoint=True)
    assert resumed.ticket == reference.ticket
    assert _losses(resumed) == _losses(reference)
    ref_weights, weights = snapshot_weights(reference.model), snapshot_weights(resumed.model)
    assert all(torch.equal(ref_weights[n], weights[n]) for n in ref_weights)


def test_given_teacher_distills_from_round0_on(tmp_path):
    teacher_dir = tmp_path / "teacher"
    tiny_model(seed=11).save_pretrained(teacher_dir)
    plain, _ = _run(tmp_path / "plain", distill_alpha=0.0)
    trainer, _ = _run(tmp_path / "kd", distill_teacher=str(teacher_dir))
    assert all(a != b for a, b in zip(_losses(trainer), _losses(plain), strict=True))
    assert not RunState(tmp_path / "kd").has_teacher()  # only the round-0 teacher is kept in the run state
    with pytest.raises(ValueError, match="num_labels"):
        _run(tmp_path / "bad", model=tiny_model(num_labels=3), distill_teacher=str(teacher_dir))


def test_regression_head_distills_with_mse(tmp_path):
    data = toy_dataset(32).map(lambda row: {"labels": float(row["labels"])})
    trainer, _ = _run(tmp_path / "kd", model=tiny_model(num_labels=1), dataset=data)
    assert trainer._distiller.regression
    assert all(loss == loss for loss in _losses(trainer))  # finite, not NaN


def test_structured_granularity_distills(tmp_path):
    trainer, recorder = _run(tmp_path / "kd", granularity="head", target_sparsity=0.5, pruning_rate=0.25)
    teacher = trainer._distiller.teacher
    # The teacher keeps every head while the student's are removed.
    assert not any(bool(p.eq(0).all()) for p in teacher.parameters() if p.dim() == 2)
    assert trainer.current_mask.sparsity > 0


# -- LotteryCallback in a plain Trainer -------------------------------------------------------------------------
def _plain_trainer(tmp_path, callback, compute_loss_func=None):
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=1, learning_rate=1e-3,
        report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True, seed=3,
    )  # fmt: skip
    return Trainer(
        model=tiny_model(),
        args=args,
        train_dataset=toy_dataset(32),
        callbacks=[callback],
        compute_loss_func=compute_loss_func,
    )


def test_callback_distills_through_compute_loss_func(tmp_path):
    ticket = prune(tiny_model(), 0.5)
    lottery = _args(tmp_path / "kd")
    callback = LotteryCallback(lottery, mask=ticket, teacher=tiny_model(seed=11))
    trainer = _plain_trainer(tmp_path / "kd", callback, compute_loss_func=callback.compute_loss_func)
    distilled = trainer.train().training_loss
    assert callback._distiller.calls == trainer.state.global_step == 2
    plain_callback = LotteryCallback(_args(tmp_path / "plain", distill_alpha=0.0), mask=ticket)
    plain = _plain_trainer(tmp_path / "plain", plain_callback).train().training_loss
    assert distilled != plain
    # The mask is still enforced.
    assert ticket.sparsity == pytest.approx(0.5, abs=1e-3)
    for name, keep in ticket.items():
        assert bool(dict(trainer.model.named_parameters())[name][~keep].eq(0).all()), name


def test_callback_distills_during_gradual_imp(tmp_path):
    lottery = _args(tmp_path / "kd", target_sparsity=0.1, pruning_interval_steps=1)
    callback = LotteryCallback(lottery, teacher=tiny_model(seed=11))
    trainer = _plain_trainer(tmp_path / "kd", callback, compute_loss_func=callback.compute_loss_func)
    trainer.train()
    assert callback._distiller.calls == trainer.state.global_step
    assert callback.ticket.sparsity == pytest.approx(0.1, abs=1e-3)  # pruned after step 1, step 2 distilled too
    teacher = callback._distiller.teacher
    untouched = tiny_model(seed=11).state_dict()  # the teacher is neither pruned nor trained
    assert all(torch.equal(value, untouched[name]) for name, value in teacher.state_dict().items())


def test_callback_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(ValueError, match="teacher you give"):
        LotteryCallback(_args(tmp_path))
    callback = LotteryCallback(_args(tmp_path), teacher=tiny_model(seed=11), mask=prune(tiny_model(), 0.5))
    with pytest.raises(RuntimeError, match="compute_loss_func=callback.compute_loss_func"):
        _plain_trainer(tmp_path, callback).train()


def test_frozen_copy_leaves_the_student_alone():
    student = tiny_model()
    teacher = frozen_copy(student)
    assert student.training and all(p.requires_grad for p in student.parameters())
    assert not teacher.training
    assert isinstance(toy_dataset(4), Dataset)


# -- hidden-state distillation --------------------------------------------------------------------------------
def test_hidden_state_loss_is_the_mean_over_layers_of_the_unpadded_tokens_squared_error():
    g = torch.Generator().manual_seed(0)
    student = tuple(torch.randn(2, 3, 4, generator=g) for _ in range(3))  # embeddings, layer 1, layer 2
    teacher = tuple(torch.randn(2, 3, 4, generator=g) for _ in range(3))
    attention = torch.tensor([[1, 1, 0], [1, 1, 1]])
    expected = 0.0
    for layer in (1, 2):  # the embedding output is not compared
        errors = [(student[layer][b, t] - teacher[layer][b, t]).pow(2).mean() for b in range(2) for t in range(3)]
        kept = [e for e, a in zip(errors, attention.flatten().tolist(), strict=True) if a]
        expected += sum(kept) / len(kept) / 2
    torch.testing.assert_close(hidden_state_loss(student, teacher, attention), torch.tensor(float(expected)))
    assert float(hidden_state_loss(student, student, attention)) == 0.0
    with pytest.raises(ValueError, match="same depth"):
        hidden_state_loss(student, teacher[:2])
    with pytest.raises(ValueError, match="hidden size"):
        hidden_state_loss(student, tuple(t[..., :2] for t in teacher))


def test_hidden_state_term_is_the_same_through_compute_loss_and_compute_loss_func():
    student, teacher = tiny_model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), tiny_model(seed=1)
    distiller = Distiller(teacher, alpha=0.5, temperature=2.0, regression=False, hidden_weight=2.0)
    batch = toy_dataset(4)[:]
    inputs = {k: torch.tensor(v) for k, v in batch.items()}
    student.train()
    # By hand: (1 - alpha) task + alpha KD + beta hidden, from two plain forward passes.
    out = student(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], output_hidden_states=True)
    t_out = teacher(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], output_hidden_states=True)
    task = task_loss_per_item(out.logits, inputs["labels"], student.config)[0].mean()
    kd = distillation_loss_per_item(out.logits, t_out.logits, 2.0, regression=False).mean()
    hidden = hidden_state_loss(out.hidden_states, t_out.hidden_states, inputs["attention_mask"])
    expected = 0.5 * task + 0.5 * kd + 2.0 * hidden
    assert float(hidden.detach()) > 0
    # The LotteryTrainer path: the teacher's outputs, then the mixed loss.
    teacher_logits, teacher_hidden = distiller.teacher_outputs(inputs)
    mixed = distiller.mixed_loss(
        task, out.logits, teacher_logits, inputs, student_hidden=out.hidden_states, teacher_hidden=teacher_hidden
    )
    torch.testing.assert_close(mixed, expected)
    # The plain-Trainer path: the pre-hook asks the student for its hidden states and runs the teacher.
    distiller.attach(student)
    outputs = student(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert outputs.hidden_states is not None
    torch.testing.assert_close(distiller.compute_loss_func(outputs, inputs["labels"]), expected)
    distiller.detach()


def test_trainer_distills_hidden_states_from_the_round0_teacher(tmp_path):
    logits_only, _ = _run(tmp_path / "logits")
    trainer, _ = _run(tmp_path / "hidden", distill_hidden_weight=1.0)
    assert trainer._distiller.uses_hidden_states
    assert _losses(trainer)[0] == _losses(logits_only)[0]  # round 0 trains the teacher, without distillation
    assert all(a != b for a, b in zip(_losses(trainer)[1:], _losses(logits_only)[1:], strict=True))
    assert RunState(tmp_path / "hidden").load_mask(1) == RunState(tmp_path / "logits").load_mask(1)


def test_callback_distills_hidden_states(tmp_path):
    ticket = prune(tiny_model(), 0.5)
    losses = {}
    for weight in (0.0, 1.0):
        callback = LotteryCallback(
            _args(tmp_path / str(weight), distill_hidden_weight=weight), mask=ticket, teacher=tiny_model(seed=11)
        )
        trainer = _plain_trainer(tmp_path / str(weight), callback, compute_loss_func=callback.compute_loss_func)
        losses[weight] = trainer.train().training_loss
        assert callback._distiller.calls == trainer.state.global_step == 2
    assert losses[1.0] > losses[0.0]  # the same steps plus a positive term
