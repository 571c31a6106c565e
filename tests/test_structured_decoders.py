"""Structured pruning of Llama and Qwen2: whole KV groups (grouped-query attention) and gated-MLP neurons."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from test_structured_loading import REMOTE_SCRIPT
from transformers import AutoModelForCausalLM

from hf_lottery import LotteryArguments, LotteryTrainer, prune_heads, prune_neurons, structure_counts
from hf_lottery.structured.imp import compact_by_mask, removed_groups, structured_mask
from hf_lottery.structured.scores import magnitude_scores
from hf_lottery.testing_utils import tiny_causal_lm, toy_text_dataset

FAMILIES = ["llama", "qwen2"]
HEAD_DIM = 8  # hidden 32 / 4 query heads; 2 KV heads, so 2 query heads per KV group


def _model(family: str) -> torch.nn.Module:
    return tiny_causal_lm(family, seed=1).eval()


def _ids() -> torch.Tensor:
    return torch.randint(1, 64, (2, 11), generator=torch.Generator().manual_seed(3))


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(_ids()).logits


def _zeroed(family: str, groups: dict[int, list[int]], neurons: dict[int, list[int]]) -> torch.nn.Module:
    """The same model with the removed units' contributions zeroed: o_proj columns of the group's query heads and
    down_proj columns of the neurons."""
    model = _model(family)
    with torch.no_grad():
        for layer, ids in groups.items():
            o_proj = model.model.layers[layer].self_attn.o_proj.weight
            for g in ids:
                o_proj[:, g * 2 * HEAD_DIM : (g + 1) * 2 * HEAD_DIM] = 0
        for layer, ids in neurons.items():
            model.model.layers[layer].mlp.down_proj.weight[:, ids] = 0
    return model


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_kv_groups_and_neurons_equals_zeroing_them(family):
    groups, neurons = {0: [1], 1: [0, 1]}, {0: [1, 5, 40], 1: [0]}
    model = _model(family)
    prune_heads(model, groups)
    prune_neurons(model, neurons)
    attention = model.model.layers[0].self_attn
    assert attention.q_proj.out_features == 2 * HEAD_DIM and attention.k_proj.out_features == HEAD_DIM
    assert attention.v_proj.out_features == HEAD_DIM and attention.o_proj.in_features == 2 * HEAD_DIM
    mlp = model.model.layers[0].mlp
    assert mlp.gate_proj.out_features == mlp.up_proj.out_features == mlp.down_proj.in_features == 45
    assert structure_counts(model)["heads"] == {"remaining": 1, "total": 4}
    torch.testing.assert_close(_logits(model), _logits(_zeroed(family, groups, neurons)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_shrunk_decoder_round_trips_through_from_pretrained(family, tmp_path):
    model = _model(family)
    prune_heads(model, {1: [0]})
    prune_neurons(model, {0: list(range(0, 48, 3))})
    model.save_pretrained(tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert loaded.model.layers[1].self_attn.k_proj.out_features == HEAD_DIM
    assert loaded.model.layers[0].mlp.up_proj.out_features == 32
    torch.testing.assert_close(_logits(loaded), _logits(model))
    # ... and without hf_lottery, through the modeling file written beside the weights
    torch.save({"inputs": {"input_ids": _ids()}, "output": _logits(model)}, tmp_path / "m" / "reference.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    proc = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, json.dumps([[str(tmp_path / "m"), "AutoModelForCausalLM"]])],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ((module, diff),) = json.loads(proc.stdout.strip().splitlines()[-1]).values()
    assert module.startswith("transformers_modules.") and diff < 1e-5


def test_a_layer_without_any_kv_group_still_runs():
    model = _model("llama")
    prune_heads(model, {0: [0, 1]})
    torch.testing.assert_close(_logits(model), _logits(_zeroed("llama", {0: [0, 1]}, {})), rtol=1e-5, atol=1e-5)


def test_group_magnitude_scores_cover_the_whole_kv_group():
    model = _model("qwen2")
    scores = magnitude_scores(model)
    layer = model.model.layers[0]
    g = 1
    parts = [
        layer.self_attn.q_proj.weight[g * 2 * HEAD_DIM : (g + 1) * 2 * HEAD_DIM],
        layer.self_attn.k_proj.weight[g * HEAD_DIM : (g + 1) * HEAD_DIM],
        layer.self_attn.v_proj.weight[g * HEAD_DIM : (g + 1) * HEAD_DIM],
        layer.self_attn.o_proj.weight[:, g * 2 * HEAD_DIM : (g + 1) * 2 * HEAD_DIM].T,
    ]
    expected = torch.cat([p.detach().flatten() for p in parts]).norm()
    torch.testing.assert_close(scores["heads"][0][g], expected)
    n = 7
    neuron = [layer.mlp.gate_proj.weight[n], layer.mlp.up_proj.weight[n], layer.mlp.down_proj.weight[:, n]]
    torch.testing.assert_close(scores["neurons"][0][n], torch.cat([p.detach() for p in neuron]).norm())


@pytest.mark.parametrize("family", FAMILIES)
def test_structured_mask_of_kv_groups_equals_compaction(family):
    model = _model(family)
    removed = {"heads": {0: [1], 1: [0]}, "neurons": {0: [2, 5, 7], 1: [0]}}
    mask = structured_mask(model, removed)
    assert removed_groups(model, mask) == removed
    q = mask["model.layers.0.self_attn.q_proj.weight"]
    assert (~q.any(1)).nonzero().flatten().tolist() == list(range(16, 32))  # both query heads of KV group 1
    assert not mask["model.layers.0.mlp.up_proj.weight"][5].any()
    compacted = compact_by_mask(model, mask)
    mask.apply_(model)
    torch.testing.assert_close(_logits(model), _logits(compacted.eval()), rtol=1e-5, atol=1e-5)


def test_lottery_trainer_structured_imp_on_llama(tmp_path):
    args = LotteryArguments(
        output_dir=str(tmp_path / "run"),
        num_train_epochs=1,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        target_sparsity=0.5,
        pruning_rate=0.5,
        granularity="head+neuron",
    )
    trainer = LotteryTrainer(model=_model("llama"), args=args, train_dataset=toy_text_dataset(16))
    trainer.train()
    assert [r["removed_groups"] for r in trainer.lottery_history][-1] == {"heads": 2, "neurons": 48}
    trainer.model.eval()
    reference = _logits(trainer.model)
    trainer.save_model(str(tmp_path / "small"))
    small = AutoModelForCausalLM.from_pretrained(tmp_path / "small").eval()
    assert structure_counts(small)["heads"]["remaining"] == 2
    torch.testing.assert_close(_logits(small), reference, rtol=1e-5, atol=1e-5)
