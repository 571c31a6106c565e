"""Structured IMP in LotteryTrainer: heads and neurons removed as groups, compacted model saved."""

from __future__ import annotations

import pytest
import torch

from hf_lottery import LotteryArguments, LotteryTrainer, structure_counts
from hf_lottery.structured.imp import compact_by_mask, prune_structured, removed_groups, structured_mask
from hf_lottery.testing_utils import tiny_model, toy_dataset


def test_structured_mask_equals_compaction():
    model = tiny_model(seed=2).eval()
    removed = {"heads": {0: [1, 3], 1: [0]}, "neurons": {0: [2, 5, 7], 1: [0]}}
    mask = structured_mask(model, removed)
    assert removed_groups(model, mask) == removed
    compacted = compact_by_mask(model, mask)
    mask.apply_(model)
    ids = torch.randint(5, 60, (3, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, compacted(input_ids=ids).logits)
    counts = structure_counts(compacted)
    assert counts["heads"]["remaining"] == 8 - 3 and counts["neurons"]["remaining"] == 96 - 4


def test_prune_structured_is_nested_and_exact():
    model = tiny_model(seed=3)
    first = prune_structured(model, 0.25, "head+neuron")
    first.apply_(model)
    second = prune_structured(model, 0.5, "head+neuron", mask=first)
    assert second.is_subset_of(first)
    removed = removed_groups(model, second)
    assert sum(len(v) for v in removed["heads"].values()) == 4  # 50% of 2 layers x 4 heads
    assert sum(len(v) for v in removed["neurons"].values()) == 48  # 50% of 2 x 48


@pytest.mark.parametrize("granularity", ["head", "head+neuron"])
def test_trainer_structured_imp_saves_a_smaller_model(tmp_path, granularity):
    from transformers import AutoModelForSequenceClassification

    args = LotteryArguments(
        output_dir=str(tmp_path / "run"),
        num_train_epochs=1,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        target_sparsity=0.5,
        pruning_rate=0.25,
        granularity=granularity,
    )
    trainer = LotteryTrainer(
        model=tiny_model(seed=1), args=args, train_dataset=toy_dataset(64), eval_dataset=toy_dataset(32, seed=1)
    )
    trainer.train()
    history = trainer.lottery_history
    assert [r["removed_groups"]["heads"] for r in history] == [0, 2, 4]
    expected_neurons = [0, 24, 48] if granularity == "head+neuron" else [0, 0, 0]
    assert [r["removed_groups"]["neurons"] for r in history] == expected_neurons

    trainer.model.eval()
    ids = torch.randint(5, 60, (2, 12))
    with torch.no_grad():
        reference = trainer.model(input_ids=ids).logits
    trainer.save_model(str(tmp_path / "small"))
    small = AutoModelForSequenceClassification.from_pretrained(tmp_path / "small").eval()
    assert structure_counts(small)["heads"]["remaining"] == 4
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in trainer.model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(small(input_ids=ids).logits, reference)
