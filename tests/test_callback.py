"""LotteryCallback: enforcing a ticket in a plain Trainer, and gradual IMP inside one run."""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_lottery import LotteryArguments, LotteryCallback, LotteryTrainer, prune
from hf_lottery.testing_utils import tiny_model, toy_dataset


def train_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path),
        num_train_epochs=3,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        weight_decay=0.1,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    values.update(overrides)
    return TrainingArguments(**values)


TRAIN = dict(
    num_train_epochs=1, per_device_train_batch_size=16, learning_rate=1e-3, save_strategy="no", disable_tqdm=True
)


def lottery_args(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), target_sparsity=0.5, pruning_rate=0.25, report_to=[])
    values.update(overrides)
    return LotteryArguments(**values)


def test_fixed_mask_is_enforced_through_training(tmp_path):
    model = tiny_model()
    mask = prune(model, 0.6)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    callback = LotteryCallback(lottery_args(tmp_path), mask=mask)
    Trainer(model=model, args=train_args(tmp_path), train_dataset=toy_dataset(64), callbacks=[callback]).train()
    params = dict(model.named_parameters())
    for name, m in mask.items():
        assert torch.count_nonzero(params[name][~m]) == 0
        assert not torch.equal(params[name][m], before[name][m])


def test_gradual_imp_reaches_target_with_nested_masks(tmp_path):
    model = tiny_model()
    callback = LotteryCallback(lottery_args(tmp_path))
    Trainer(model=model, args=train_args(tmp_path), train_dataset=toy_dataset(64), callbacks=[callback]).train()
    # one record per level (the trainer's schema): 12 steps, 3 levels of 12 // 3 steps each
    assert [h["round"] for h in callback.history] == [0, 1, 2]
    assert [h["sparsity"] for h in callback.history] == pytest.approx([0.0, 0.25, 0.5])
    assert [h["total_steps"] for h in callback.history] == [4, 8, 12]
    assert [h["steps"] for h in callback.history] == [4, 4, 4]
    assert callback.ticket.num_pruned == round(0.5 * callback.ticket.num_params)
    params = dict(model.named_parameters())
    assert all(torch.count_nonzero(params[n][~m]) == 0 for n, m in callback.ticket.items())
    assert (tmp_path / "lottery_history.json").is_file()


def test_gradual_imp_rewinds_to_pretrained(tmp_path):
    model = tiny_model()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = {}

    class Peek(LotteryCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            super().on_step_begin(args, state, control, model=model, **kwargs)
            if state.global_step == 4:  # level 1 begins: pruned and rewound before step 5
                seen.update({n: p.detach().clone() for n, p in model.named_parameters()})

    callback = Peek(lottery_args(tmp_path, rewind="pretrained"))
    Trainer(model=model, args=train_args(tmp_path), train_dataset=toy_dataset(64), callbacks=[callback]).train()
    assert callback.history[0]["total_steps"] == 4
    for name, value in seen.items():
        expected = theta0[name]
        if name in callback.ticket:
            # weights pruned at level 1 are zero, survivors are back at θ0
            level1 = value != 0
            assert torch.equal(value[level1], expected[level1])
        else:
            assert torch.equal(value, expected)


def test_hydra_search_after_a_short_round_then_ticket_from_theta0(tmp_path):
    """The cheap recipe on a small task: train round 0 briefly, learn HYDRA scores on those weights (frozen), prune
    once, then train the ticket from θ0 under that mask with `LotteryTrainer(mask=...)`."""
    torch.manual_seed(0)
    warm_model = tiny_model()
    theta0 = {n: p.detach().clone() for n, p in warm_model.named_parameters()}
    warm = Trainer(model=warm_model, args=train_args(tmp_path / "warm", max_steps=4), train_dataset=toy_dataset(64))
    warm.train()
    warmed = {n: p.detach().clone() for n, p in warm_model.named_parameters()}
    ticket = prune(warm_model, 0.5, method="hydra", dataloader=warm.get_train_dataloader(), epochs=2, seed=0)
    assert ticket.num_pruned == round(0.5 * ticket.num_params)
    assert ticket != prune(warm_model, 0.5)  # the scores moved off the magnitude order they start from
    for name, value in warm_model.named_parameters():  # scoring never touches the weights
        assert torch.equal(value, warmed[name]), name

    model = tiny_model()  # θ0 again
    started = {}

    class AtStart(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            started.update({n: p.detach().clone() for n, p in model.named_parameters()})

    trainer = LotteryTrainer(
        model=model,
        args=lottery_args(tmp_path / "ticket", target_sparsity=0.5, **TRAIN),
        train_dataset=toy_dataset(64),
        mask=ticket,
        callbacks=[AtStart()],
    )
    trainer.train()
    assert [(h["round"], h["sparsity"]) for h in trainer.lottery_history] == [(0, pytest.approx(0.5))]
    for name, m in ticket.items():  # θ0 under the HYDRA mask, not the warm weights
        assert torch.equal(started[name], theta0[name] * m), name
        assert torch.count_nonzero(dict(model.named_parameters())[name][~m]) == 0


def test_lr_rewinding_needs_the_trainer(tmp_path):
    with pytest.raises(ValueError, match="LotteryTrainer"):
        LotteryCallback(lottery_args(tmp_path, rewind="lr"))


def test_gradual_search_then_ticket_from_theta0(tmp_path):
    """The cheap recipe at high sparsity: find the mask by gradual pruning inside one run without rewinding, then
    train the ticket from θ0 under it with `LotteryTrainer(mask=...)`."""
    search = LotteryCallback(lottery_args(tmp_path / "search", rewind="none", pruning_interval_steps=3))
    searched = tiny_model()
    theta0 = {n: p.detach().clone() for n, p in searched.named_parameters()}
    args = train_args(tmp_path / "search", max_steps=2 * 3 + 1)  # the last level is pruned as step 7 begins
    Trainer(model=searched, args=args, train_dataset=toy_dataset(64), callbacks=[search]).train()
    ticket = search.ticket
    assert [h["total_steps"] for h in search.history] == [3, 6, 7]
    assert ticket.num_pruned == round(0.5 * ticket.num_params)
    params = dict(searched.named_parameters())
    # no rewinding: the survivors kept training through the levels
    assert any(not torch.equal(params[n][m], theta0[n][m]) for n, m in ticket.items())

    started = {}

    class AtStart(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            started.update({n: p.detach().clone() for n, p in model.named_parameters()})

    model = tiny_model()  # θ0 again
    trainer = LotteryTrainer(
        model=model,
        args=lottery_args(tmp_path / "ticket", target_sparsity=0.5, **TRAIN),  # the mask is within a weight of it
        train_dataset=toy_dataset(64),
        mask=ticket,
        callbacks=[AtStart()],
    )
    trainer.train()
    assert [(h["round"], h["sparsity"]) for h in trainer.lottery_history] == [(0, pytest.approx(0.5))]
    for name, value in started.items():  # the ticket starts from θ0, pruned by the searched mask
        expected = theta0[name] * ticket[name] if name in ticket else theta0[name]
        assert torch.equal(value, expected), name
    final = dict(model.named_parameters())
    for name, m in ticket.items():
        assert torch.count_nonzero(final[name][~m]) == 0
        assert torch.equal(trainer.ticket[name], m)
