"""Unstructured tickets on Hugging Face conv nets: the default prunable set, `prune`, `LotteryTrainer`, the artifact."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForImageClassification

from hf_lottery import LotteryArguments, LotteryTrainer, TicketMask, prune
from hf_lottery.testing_utils import tiny_conv_model, toy_image_dataset
from hf_lottery.utils.parameters import default_prunable_names

FAMILIES = ["resnet", "mobilenet_v2"]


@pytest.mark.parametrize("family", FAMILIES)
def test_default_set_is_every_conv_kernel_and_nothing_else(family):
    model = tiny_conv_model(family)
    convs = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    names = set(default_prunable_names(model))
    assert names == convs
    assert not any("normalization" in n or n.startswith("classifier") for n in names)


@pytest.mark.parametrize("family", FAMILIES)
def test_prune_masks_conv_kernels_and_the_masked_model_runs(family):
    model = tiny_conv_model(family).eval()
    mask = prune(model, 0.6)
    assert mask.sparsity == pytest.approx(0.6, abs=1e-3)
    mask.apply_(model)
    params = dict(model.named_parameters())
    for name, kept in mask.items():
        assert torch.all(params[name][~kept] == 0)
    pixels = toy_image_dataset(4)[:]["pixel_values"]
    assert torch.isfinite(model(pixel_values=pixels).logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_trainer_finds_a_conv_ticket_and_it_round_trips(tmp_path, family):
    args = LotteryArguments(
        output_dir=str(tmp_path / "run"),
        num_train_epochs=1,
        per_device_train_batch_size=16,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        target_sparsity=0.5,
        pruning_rate=0.25,
    )
    model = tiny_conv_model(family, seed=1)
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = LotteryTrainer(
        model=model, args=args, train_dataset=toy_image_dataset(48), eval_dataset=toy_image_dataset(24, seed=1)
    )
    trainer.train()
    ticket = trainer.ticket
    assert [round(r["sparsity"], 3) for r in trainer.lottery_history] == [0.0, 0.25, 0.5]
    assert "eval_loss" in trainer.lottery_history[-1]["metrics"]
    assert set(ticket) == set(default_prunable_names(model))

    ticket.save_pretrained(tmp_path / "ticket")
    loaded = TicketMask.from_pretrained(tmp_path / "ticket")
    assert set(loaded) == set(ticket) and all(torch.equal(loaded[k], ticket[k]) for k in ticket)

    # θ0 ⊙ m from the saved θ0 folder: exactly the rewound weights.
    base = tiny_conv_model(family, seed=1)
    base.load_state_dict(theta0)
    base.save_pretrained(tmp_path / "theta0")
    rebuilt = loaded.load_model(AutoModelForImageClassification, base=str(tmp_path / "theta0"))
    weights = dict(rebuilt.named_parameters())
    for name, kept in ticket.items():
        torch.testing.assert_close(weights[name], theta0[name] * kept, rtol=0, atol=0)

    trainer.model.eval()
    pixels = toy_image_dataset(4, seed=3)[:]["pixel_values"]
    with torch.no_grad():
        reference = trainer.model(pixel_values=pixels).logits
    trainer.save_model(str(tmp_path / "sparse"))
    sparse = AutoModelForImageClassification.from_pretrained(tmp_path / "sparse").eval()
    with torch.no_grad():
        torch.testing.assert_close(sparse(pixel_values=pixels).logits, reference)
    assert TicketMask.from_model_folder(tmp_path / "sparse") is not None
