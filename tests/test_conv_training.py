"""granularity='channel' and 'stripe' end to end: penalties as specified, LotteryTrainer and LotteryCallback runs,
shapes shrink, outputs equal the masked model, `from_pretrained` round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForImageClassification, Trainer, TrainerCallback, TrainingArguments

from hf_lottery import LotteryArguments, LotteryCallback, LotteryTrainer
from hf_lottery.structured.conv_imp import channel_gates, channel_roles, conv_structure_counts
from hf_lottery.structured.conv_regularizers import add_channel_penalty_grad_, fold_skeleton_, skeleton_factors
from hf_lottery.structured.polarization import polarization_regularizer
from hf_lottery.structured.stripes import StripeConv2d
from hf_lottery.testing_utils import tiny_conv_model, toy_image_dataset
from hf_lottery.training.conv_regularization import ChannelPenaltyCallback


def test_polarization_gradient_is_that_of_the_regularizer_over_live_gates():
    torch.manual_seed(0)
    gates = {"a": nn.Parameter(torch.rand(5)), "b": nn.Parameter(torch.rand(3))}
    shifts = {"a": nn.Parameter(torch.randn(5)), "b": nn.Parameter(torch.randn(3))}
    with torch.no_grad():  # channel 1 of "a" is pruned: scale and shift both exactly 0
        gates["a"][1] = 0
        shifts["a"][1] = 0
    add_channel_penalty_grad_(gates, shifts, strength=0.3, kind="polarization", t=1.2)
    live = [gates["a"][[0, 2, 3, 4]], gates["b"]]
    expected = torch.autograd.grad(0.3 * polarization_regularizer(live, t=1.2), [gates["a"], gates["b"]])
    torch.testing.assert_close(gates["a"].grad, expected[0])
    torch.testing.assert_close(gates["b"].grad, expected[1])
    assert gates["a"].grad[1] == 0

    l1 = {"a": nn.Parameter(torch.tensor([0.5, -0.2, 0.0]))}
    add_channel_penalty_grad_(l1, {"a": nn.Parameter(torch.tensor([1.0, 1.0, 0.0]))}, 0.1, kind="l1")
    torch.testing.assert_close(l1["a"].grad, torch.tensor([0.1, -0.1, 0.0]))


def test_folded_skeleton_step_is_a_joint_sgd_step_then_merge():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    x, lr, alpha = torch.randn(2, 3, 6, 6), 0.05, 0.01
    # Reference: W' = W * I with a real skeleton I = 1, both trained by one SGD step, then merged.
    weight = conv.weight.detach().clone().requires_grad_(True)
    skeleton = torch.ones(4, 3, 3, requires_grad=True)
    loss = nn.functional.conv2d(x, weight * skeleton[:, None], padding=1).pow(2).mean()
    loss = loss + alpha * skeleton.abs().sum()
    grad_w, grad_i = torch.autograd.grad(loss, [weight, skeleton])
    expected = (weight - lr * grad_w) * (skeleton - lr * grad_i)[:, None]
    # Folded form: gradients of the plain model only.
    conv.weight.grad = None
    nn.functional.conv2d(x, conv.weight, padding=1).pow(2).mean().backward()
    factors = skeleton_factors([conv.weight], lr, alpha)
    with torch.no_grad():
        conv.weight -= lr * conv.weight.grad  # the optimizer step
    fold_skeleton_([conv.weight], factors)
    torch.testing.assert_close(conv.weight.detach(), expected.detach())


def _args(tmp_path, granularity, **extra):
    settings = dict(
        output_dir=str(tmp_path / "run"),
        num_train_epochs=2,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        target_sparsity=0.5,
        pruning_rate=0.25,
        granularity=granularity,
    )
    return LotteryArguments(**{**settings, **extra})


def _check_saved_equals_masked(trainer, folder):
    trainer.model.eval()
    x = toy_image_dataset(4, seed=9)[:]["pixel_values"]
    with torch.no_grad():
        reference = trainer.model(pixel_values=x).logits
    trainer.save_model(str(folder))
    small, info = AutoModelForImageClassification.from_pretrained(folder, output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(pixel_values=x).logits, reference, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in trainer.model.parameters())
    return small


@pytest.mark.parametrize("regularizer", ["polarization", "l1"])
def test_trainer_channel_imp_saves_a_narrower_resnet(tmp_path, regularizer):
    args = _args(tmp_path, "channel", channel_regularizer=regularizer, channel_penalty=1e-2)
    trainer = LotteryTrainer(
        model=tiny_conv_model(seed=1),
        args=args,
        train_dataset=toy_image_dataset(32),
        eval_dataset=toy_image_dataset(16, seed=1),
    )
    trainer.train()
    assert [r["removed_groups"]["channels"] for r in trainer.lottery_history] == [0, 6, 12]  # of 8 + 16 inner
    gates = torch.cat([g.detach() for g in channel_gates(trainer.model).values()])
    if regularizer == "polarization":
        assert gates.min() >= 0 and gates.max() <= 1  # projected into [0, 1]
    small = _check_saved_equals_masked(trainer, tmp_path / "small")
    assert conv_structure_counts(small)["channels_removed"] == 12
    inner = small.resnet.encoder.stages[1].layers[0].layer[0]
    assert inner.convolution.out_channels == inner.normalization.num_features < 16


def test_polarization_separates_the_gates():
    """With a strong penalty the gates split into a group at 0 and a group around a shared value, with a gap between
    (and stay in [0, 1])."""
    model = tiny_conv_model(seed=2)
    callback = ChannelPenaltyCallback("polarization", strength=0.05, t=1.2)
    callback.on_train_begin(None, None, None, model=model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    data = toy_image_dataset(16)[:]
    for _ in range(60):
        optimizer.zero_grad()
        model(pixel_values=data["pixel_values"], labels=data["labels"]).loss.backward()
        callback.on_pre_optimizer_step(None, None, None)
        optimizer.step()
        callback.on_optimizer_step(None, None, None)
    gates = torch.cat([g.detach() for g in channel_gates(model).values()])
    assert len(channel_roles(model)) == 2
    assert (gates < 0.05).sum() >= 3 and (gates > 0.3).sum() >= 3
    assert not ((gates > 0.05) & (gates < 0.3)).any()
    assert gates.min() >= 0 and gates.max() <= 1


def test_trainer_stripe_imp_saves_stripe_convs(tmp_path):
    args = _args(tmp_path, "stripe", stripe_penalty=1e-3)
    trainer = LotteryTrainer(
        model=tiny_conv_model(seed=3),
        args=args,
        train_dataset=toy_image_dataset(32),
        eval_dataset=toy_image_dataset(16, seed=1),
    )
    trainer.train()
    history = trainer.lottery_history
    assert [round(r["sparsity"], 2) for r in history] == [0.0, 0.25, 0.5]
    assert history[0]["removed_groups"]["stripes"] == 0 < history[1]["removed_groups"]["stripes"]
    for name, kept in trainer.ticket.items():  # whole stripes only
        assert torch.equal(kept.any(dim=1), kept.all(dim=1)), name
    small = _check_saved_equals_masked(trainer, tmp_path / "small")
    assert any(isinstance(m, StripeConv2d) for m in small.modules())


@pytest.mark.parametrize("granularity", ["channel", "stripe"])
def test_callback_runs_conv_granularities_inside_one_run(tmp_path, granularity):
    lottery = _args(tmp_path, granularity, channel_penalty=1e-2, stripe_penalty=1e-3)
    args = TrainingArguments(
        output_dir=str(tmp_path / "cb"),
        num_train_epochs=3,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    callback = LotteryCallback(lottery)
    model = tiny_conv_model(seed=4)
    Trainer(model=model, args=args, train_dataset=toy_image_dataset(32), callbacks=[callback]).train()
    removed = [r["removed_groups"] for r in callback.history]
    assert len(removed) == 3 and list(removed[0].values()) == [0]
    assert list(removed[-1].values())[0] > list(removed[1].values())[0] > 0
    params = dict(model.named_parameters())
    for name, kept in callback.ticket.items():
        assert torch.all(params[name].detach()[~kept] == 0), name


class _Interrupt(Exception):
    pass


class _KillAt(TrainerCallback):
    def __init__(self, ref, round_index, step):
        self.ref, self.round_index, self.step = ref, round_index, step

    def on_step_end(self, args, state, control, **kwargs):
        if self.ref[0].lottery_round == self.round_index and state.global_step == self.step:
            raise _Interrupt


@pytest.mark.parametrize("granularity", ["channel", "stripe"])
def test_killed_conv_run_resumes_to_the_same_ticket(tmp_path, granularity):
    """The penalties keep no state outside the model (the skeleton is folded in), so a resumed round is exact."""
    extra = dict(
        save_strategy="steps", save_steps=2, num_train_epochs=1, channel_penalty=1e-2, stripe_penalty=1e-3, seed=3
    )

    def trainer_for(folder, seed, callbacks=()):
        return LotteryTrainer(
            model=tiny_conv_model(seed=seed),
            args=_args(folder, granularity, **extra),
            train_dataset=toy_image_dataset(32),
            callbacks=list(callbacks),
        )

    reference = trainer_for(tmp_path / "ref", 5)
    reference.train()
    ref = [None]
    killed = trainer_for(tmp_path / "killed", 5, [_KillAt(ref, 1, 3)])
    ref[0] = killed
    with pytest.raises(_Interrupt):
        killed.train()
    resumed = trainer_for(tmp_path / "killed", 99)  # weights come from the saved state
    resumed.train(resume_from_checkpoint=True)
    assert resumed.ticket == reference.ticket
    for (name, a), b in zip(resumed.model.state_dict().items(), reference.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
