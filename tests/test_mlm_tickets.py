"""Tickets found on the masked-language-modelling objective, carried over to a downstream task (Chen et al.)."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

from hf_lottery import LotteryArguments, LotteryTrainer, transfer_ticket
from hf_lottery.testing_utils import tiny_config, toy_dataset

MASK_ID = 4


def masked_lm_dataset(n: int, seed: int, seq_len: int = 12, vocab: int = 64) -> Dataset:
    """Static masking: 15 % of the tokens replaced by the mask token, labels set only there."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, vocab, (n, seq_len), generator=g)
    ids[:, 0] = 3
    chosen = torch.rand(n, seq_len, generator=g) < 0.15
    chosen[:, 0] = False
    chosen[torch.arange(n), torch.randint(1, seq_len, (n,), generator=g)] = True  # at least one per example
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    inputs = torch.where(chosen, torch.full_like(ids, MASK_ID), ids)
    return Dataset.from_dict(
        {"input_ids": inputs.tolist(), "attention_mask": [[1] * seq_len] * n, "labels": labels.tolist()}
    )


def test_an_mlm_ticket_is_found_and_carries_over_to_a_classifier(tmp_path):
    torch.manual_seed(0)
    mlm = AutoModelForMaskedLM.from_config(tiny_config())
    args = LotteryArguments(
        output_dir=str(tmp_path),
        target_sparsity=0.4,
        pruning_rate=0.2,
        max_steps=4,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        eval_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = LotteryTrainer(
        model=mlm, args=args, train_dataset=masked_lm_dataset(64, 0), eval_dataset=masked_lm_dataset(32, 1)
    )
    trainer.train()
    ticket = trainer.ticket
    assert [r["sparsity"] for r in trainer.lottery_history] == pytest.approx([0.0, 0.2, 0.4], abs=1e-3)
    assert all("eval_loss" in r["metrics"] for r in trainer.lottery_history)  # the round metric of an MLM
    assert all(name.startswith("bert.encoder.") for name in ticket)  # never the MLM head or the embeddings
    assert ticket.config.architecture == "BertForMaskedLM"

    torch.manual_seed(1)
    classifier = AutoModelForSequenceClassification.from_config(tiny_config())
    mask = transfer_ticket(ticket, classifier)
    params = dict(classifier.named_parameters())
    for name, keep in mask.items():
        assert torch.equal(keep, ticket[name]) and torch.count_nonzero(params[name][~keep]) == 0
    downstream = LotteryTrainer(
        model=classifier,
        args=LotteryArguments(**{**args.to_dict(), "output_dir": str(tmp_path / "sst"), "target_sparsity": 0.4}),
        train_dataset=toy_dataset(64),
        mask=mask,
    )
    downstream.train()  # the carried-over ticket is already at the target: it is trained as it is, kept sparse
    assert downstream.ticket == mask
    params = dict(classifier.named_parameters())
    assert all(torch.count_nonzero(params[name][~keep]) == 0 for name, keep in mask.items())
