"""Causal-LM tickets: tiny Llama, Qwen2 (grouped-query attention) and GPT-2 (tied embeddings) in LotteryTrainer."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Trainer, TrainingArguments

from hf_lottery import LotteryArguments, LotteryCallback, LotteryTrainer, default_prunable_names, prune
from hf_lottery.testing_utils import tiny_causal_lm, toy_text_dataset
from hf_lottery.training.causal_lm import is_causal_lm, load_text, text_blocks, with_perplexity

FAMILIES = ["llama", "qwen2", "gpt2"]


def _args(tmp_path, **overrides) -> LotteryArguments:
    values = dict(
        output_dir=str(tmp_path / "run"),
        num_train_epochs=1,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        target_sparsity=0.5,
        pruning_rate=0.3,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=3,
    )
    values.update(overrides)
    return LotteryArguments(**values)


@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_defaults_never_prune_lm_head_or_embeddings(family):
    model = tiny_causal_lm(family)
    names = default_prunable_names(model)
    assert names and not any("lm_head" in n or "embed" in n or "wte" in n or "wpe" in n for n in names)
    expected = 2 * (4 if family == "gpt2" else 7)  # per layer: c_attn, c_proj, c_fc, mlp.c_proj | q k v o gate up down
    assert len(names) == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_lottery_trainer_finds_a_causal_lm_ticket_with_perplexity(family, tmp_path):
    model = tiny_causal_lm(family)
    tied = family == "gpt2"
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == tied
    trainer = LotteryTrainer(
        model=model, args=_args(tmp_path), train_dataset=toy_text_dataset(32), eval_dataset=toy_text_dataset(8, seed=1)
    )
    trainer.train()
    ticket = trainer.ticket
    assert ticket.num_pruned == round(0.5 * ticket.num_params)
    weights = dict(model.named_parameters())
    for name, keep in ticket.items():
        assert torch.all(weights[name][~keep] == 0), name
    assert not any("lm_head" in n or "embed" in n or "wte" in n for n in ticket)
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == tied
    for record in trainer.lottery_history:
        assert math.isclose(record["metrics"]["eval_perplexity"], math.exp(record["metrics"]["eval_loss"]))
    assert trainer.lottery_metric() == "perplexity" or "perplexity" in trainer.lottery_metric()
    written = json.loads((tmp_path / "run" / "lottery_history.json").read_text())
    assert "eval_perplexity" in json.dumps(written)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("family", FAMILIES)
def test_causal_lm_ticket_with_activation_aware_scoring_and_2_4(family, method, tmp_path):
    model = tiny_causal_lm(family)
    calibration = {f"{method}_calibration_batches": 2}
    args = _args(tmp_path, pruning_method=method, pruning_scope="2:4", **calibration)
    trainer = LotteryTrainer(model=model, args=args, train_dataset=toy_text_dataset(32))
    trainer.train()
    weights = dict(model.named_parameters())
    for name, keep in trainer.ticket.items():
        # Groups of 4 along the input dimension: a Linear's columns, a GPT-2 Conv1D's rows ([in, out] weights).
        along_inputs = keep.T if family == "gpt2" else keep
        assert torch.all(along_inputs.reshape(-1, 4).sum(1) == 2), name
        assert torch.all(weights[name][~keep] == 0), name


def test_saved_causal_lm_loads_without_the_library_and_keeps_tied_weights(tmp_path):
    model = tiny_causal_lm("gpt2").eval()
    mask = prune(model, 0.5)
    mask.apply_(model)
    model.save_pretrained(tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    ids = torch.randint(3, 64, (2, 10))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_perplexity_helpers():
    assert with_perplexity({"eval_loss": 0.0})["eval_perplexity"] == 1.0
    assert "eval_perplexity" not in with_perplexity({"eval_accuracy": 0.5})
    assert is_causal_lm(tiny_causal_lm("llama")) and not is_causal_lm(torch.nn.Linear(2, 2))


def _char_tokenizer() -> PreTrainedTokenizerFast:
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz .,"))
    vocab = {"<eos>": 0, "<unk>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")


def test_local_text_becomes_blocks(tmp_path):
    (tmp_path / "a.txt").write_text("the cat sat.\n\nthe dog ran, far.\n")
    texts = load_text(tmp_path / "a.txt")
    assert texts["text"] == ["the cat sat.", "", "the dog ran, far."]
    blocks = text_blocks(texts, _char_tokenizer(), block_size=8)
    # 12 + 1 and 17 + 1 tokens (eos after each text): 31 tokens, 3 whole blocks
    assert len(blocks) == 3 and all(len(ids) == 8 for ids in blocks["input_ids"])
    assert blocks["labels"] == blocks["input_ids"] and blocks["input_ids"][1][4] == 0
    texts.save_to_disk(str(tmp_path / "saved"))
    assert load_text(tmp_path / "saved")["text"] == texts["text"]
    with pytest.raises(FileNotFoundError):
        load_text(tmp_path / "missing")
    with pytest.raises(ValueError, match="fewer than one block"):
        text_blocks(["ab"], _char_tokenizer(), block_size=8)


def test_lottery_callback_records_perplexity_for_a_causal_lm(tmp_path):
    callback = LotteryCallback(LotteryArguments(output_dir=str(tmp_path), target_sparsity=0.5, pruning_rate=0.25))
    train_args = TrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=3,
        per_device_train_batch_size=8,
        eval_strategy="epoch",
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )
    Trainer(
        model=tiny_causal_lm("llama"),
        args=train_args,
        train_dataset=toy_text_dataset(32),
        eval_dataset=toy_text_dataset(8, seed=1),
        callbacks=[callback],
    ).train()
    evaluated = [r["metrics"] for r in callback.history if r["metrics"]]
    assert evaluated
    for metrics in evaluated:
        assert math.isclose(metrics["eval_perplexity"], math.exp(metrics["eval_loss"]))


def test_pruning_a_tied_embedding_prunes_the_lm_head_with_it(tmp_path):
    model = tiny_causal_lm("gpt2").eval()
    mask = prune(model, 0.3, prune_modules=[r"transformer\.wte\.weight"])
    assert list(mask) == ["transformer.wte.weight"]  # one tensor: lm_head.weight is the same parameter
    mask.apply_(model)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert torch.all(model.lm_head.weight[~mask["transformer.wte.weight"]] == 0)
    model.save_pretrained(tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    ids = torch.randint(3, 64, (2, 10))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
