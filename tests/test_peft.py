"""peft (LoRA) over a ticket: original names, masked LoRA updates, sparse merging, training under hf_lottery."""

from __future__ import annotations

import hashlib
import json
import warnings

import pytest
import torch
from transformers import Trainer, TrainingArguments

from hf_lottery import (
    LotteryArguments,
    LotteryCallback,
    LotteryTrainer,
    TicketMask,
    apply_ticket_to_peft,
    merge_and_unload_sparse,
    prune,
    remove_ticket_from_peft,
)
from hf_lottery.testing_utils import tiny_model, toy_dataset
from hf_lottery.utils.io import load_tensors, save_tensors
from hf_lottery.utils.parameters import (
    default_prunable_names,
    is_peft_model,
    named_parameters,
    original_parameter_name,
)

peft = pytest.importorskip("peft")
TARGETS = ["query", "value", "dense"]  # "dense": attention output, FFN output and the pooler


def lora_model(seed: int = 0, nonzero_b: bool = True, **config):
    """A LoRA model over tiny BERT; `nonzero_b` gives B random values so that ΔW != 0 before training."""
    model = tiny_model(seed=seed, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed + 1)
    lora = peft.LoraConfig(
        task_type="SEQ_CLS", target_modules=TARGETS, r=4, lora_alpha=8, init_lora_weights=not nonzero_b, **config
    )
    return peft.get_peft_model(model, lora)


@pytest.fixture
def ticket():
    return prune(tiny_model(), 0.5)


@pytest.fixture
def inputs():
    return {"input_ids": torch.tensor(toy_dataset(4, seed=3)["input_ids"])}


def pruned_are_zero(params, ticket) -> bool:
    return all(bool(params[name][~keep].eq(0).all()) for name, keep in ticket.items())


def test_names_are_the_original_ones():
    plain, lora = tiny_model(), lora_model()
    assert is_peft_model(lora) and not is_peft_model(plain)
    assert list(named_parameters(lora)) == list(dict(plain.named_parameters()))
    assert default_prunable_names(lora) == default_prunable_names(plain)
    # modules_to_save: the trainable copy is the one the model uses.
    classifier = lora.base_model.model.classifier.modules_to_save["default"]
    assert named_parameters(lora)["classifier.weight"] is classifier.weight
    assert original_parameter_name("bert.encoder.layer.0.attention.self.query.base_layer.weight") == (
        "bert.encoder.layer.0.attention.self.query.weight"
    )
    assert original_parameter_name("bert.encoder.layer.0.attention.self.query.lora_A.default.weight") is None
    assert original_parameter_name("classifier.original_module.weight", {"original_module"}) is None


def test_prune_gives_the_same_mask_with_and_without_peft(ticket):
    assert prune(lora_model(), 0.5) == ticket


def test_ticket_loads_onto_a_peft_model(ticket, tmp_path):
    save_tensors(tmp_path / "ticket.safetensors", ticket.to_dict())
    loaded = TicketMask(load_tensors(tmp_path / "ticket.safetensors"))
    model = lora_model()
    loaded.validate(model)
    loaded.apply_(model)
    assert pruned_are_zero(named_parameters(model), ticket)
    wrong = TicketMask({"base_model.model.bert.pooler.dense.base_layer.weight": torch.ones(32, 32, dtype=torch.bool)})
    with pytest.raises(ValueError, match="does not have"):
        wrong.validate(model)


def test_masked_lora_update_merges_to_the_same_function_and_exact_sparsity(ticket, inputs):
    model = apply_ticket_to_peft(lora_model(), ticket).eval()
    before = model(**inputs).logits
    merged = merge_and_unload_sparse(model, ticket)
    assert not is_peft_model(merged)
    torch.testing.assert_close(merged(**inputs).logits, before, rtol=0, atol=1e-5)
    params = dict(merged.named_parameters())
    assert pruned_are_zero(params, ticket)
    assert TicketMask({n: params[n] != 0 for n in ticket}).sparsity == pytest.approx(ticket.sparsity)


def test_peft_merge_and_unload_is_sparse_too_once_the_ticket_is_applied(ticket):
    merged = apply_ticket_to_peft(lora_model(), ticket).merge_and_unload()
    assert pruned_are_zero(dict(merged.named_parameters()), ticket)


def test_unmasked_adapters_are_merged_then_masked(ticket, inputs):
    model = lora_model()
    ticket.apply_(model)  # base weights only: ΔW is dense
    dense_delta = model.eval()(**inputs).logits
    merged = merge_and_unload_sparse(model, ticket)
    assert pruned_are_zero(dict(merged.named_parameters()), ticket)
    assert not torch.allclose(merged(**inputs).logits, dense_delta, atol=1e-5)  # the trained function is lost


def test_remove_ticket_makes_updates_dense_again(ticket, inputs):
    model = apply_ticket_to_peft(lora_model(), ticket).eval()
    masked = model(**inputs).logits
    remove_ticket_from_peft(model)
    assert not torch.allclose(model(**inputs).logits, masked, atol=1e-5)


def test_lora_variants_are_refused(ticket):
    model = lora_model(use_dora=True)
    with pytest.raises(NotImplementedError, match="use_dora=False"):
        apply_ticket_to_peft(model, ticket)


def _args(tmp_path, **overrides) -> dict:
    values = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=16,
        num_train_epochs=1,
        learning_rate=5e-2,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        label_names=["labels"],
    )
    values.update(overrides)
    return values


def test_lottery_callback_trains_lora_adapters_and_keeps_the_base_sparse(ticket, inputs, tmp_path):
    model = lora_model(nonzero_b=False)  # standard LoRA init: B = 0
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    callback = LotteryCallback(LotteryArguments(**_args(tmp_path)), mask=ticket)
    trainer = Trainer(
        model=model, args=TrainingArguments(**_args(tmp_path)), train_dataset=toy_dataset(32), callbacks=[callback]
    )
    trainer.train()
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters() if "lora_" in n)
    assert pruned_are_zero(named_parameters(model), ticket)
    model.eval()
    trained = model(**inputs).logits
    merged = merge_and_unload_sparse(model, ticket)
    assert pruned_are_zero(dict(merged.named_parameters()), ticket)
    torch.testing.assert_close(merged(**inputs).logits, trained, rtol=0, atol=1e-5)


def test_lottery_trainer_accepts_a_peft_model_over_a_ticket(ticket, tmp_path):
    model = apply_ticket_to_peft(lora_model(nonzero_b=False), ticket)
    args = LotteryArguments(**_args(tmp_path), target_sparsity=0.6, pruning_rate=0.1)
    trainer = LotteryTrainer(model=model, args=args, train_dataset=toy_dataset(32), mask=ticket)
    trainer.train()
    assert [round(r["sparsity"], 6) for r in trainer.lottery_history] == [0.5, 0.6]
    assert list(trainer.ticket) == list(ticket)  # original names
    assert trainer.ticket.is_subset_of(ticket)
    assert pruned_are_zero(named_parameters(model), trainer.ticket)
    merged = merge_and_unload_sparse(model, trainer.ticket)
    assert pruned_are_zero(dict(merged.named_parameters()), trainer.ticket)


def test_an_adapter_saved_with_its_ticket_reloads_as_trained_and_merges_sparse(ticket, inputs, tmp_path):
    from hf_lottery import load_peft_ticket

    model = lora_model(nonzero_b=False)
    callback = LotteryCallback(LotteryArguments(**_args(tmp_path)), mask=ticket)
    trainer = Trainer(
        model=model, args=TrainingArguments(**_args(tmp_path)), train_dataset=toy_dataset(32), callbacks=[callback]
    )
    trainer.train()
    model.eval()
    trained = model(**inputs).logits
    folder = tmp_path / "adapter"
    trainer.save_model(str(folder))
    ticket.save_pretrained(folder)

    def base():
        return tiny_model(seed=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

    recorded = json.loads((folder / "adapter_config.json").read_text())["hf_lottery_ticket"]
    assert recorded["sparsity"] == pytest.approx(ticket.sparsity)
    assert recorded["mask_sha256"] == hashlib.sha256((folder / recorded["ticket_mask"]).read_bytes()).hexdigest()
    assert recorded["ticket_config"] == "ticket_config.json" and "load_peft_ticket" in recorded["load_with"]
    with pytest.warns(UserWarning, match="hf_lottery_ticket"):  # a plain load says it ignores the ticket
        plain = peft.PeftModel.from_pretrained(base(), folder).eval()
    assert not torch.allclose(plain(**inputs).logits, trained, atol=1e-5)  # vanilla LoRA over the dense base
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reloaded = load_peft_ticket(base(), folder).eval()
    assert not [w for w in caught if "hf_lottery_ticket" in str(w.message)]  # hf_lottery reads its own key
    torch.testing.assert_close(reloaded(**inputs).logits, trained, rtol=0, atol=1e-6)
    merged = reloaded.merge_and_unload()  # peft's own merge
    assert pruned_are_zero(dict(merged.named_parameters()), ticket)
    torch.testing.assert_close(merged(**inputs).logits, trained, rtol=0, atol=1e-5)
