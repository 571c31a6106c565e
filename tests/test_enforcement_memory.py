"""The mask enforcer holds one bool per prunable weight and still keeps pruned weights, gradients and moments zero."""

from __future__ import annotations

import pytest
import torch

from hf_lottery import prune
from hf_lottery.testing_utils import tiny_causal_lm, tiny_model
from hf_lottery.training import enforcement
from hf_lottery.training.enforcement import MaskEnforcer, multiply_by_mask_


def _held_bytes(enforcer: MaskEnforcer) -> int:
    held = [t for _, t in enforcer._keep]
    assert all(t.dtype == torch.bool for t in held)
    return sum(t.numel() * t.element_size() for t in held)


@pytest.mark.parametrize("family", ["bert", "llama", "qwen2", "gpt2"])
def test_enforcer_holds_at_most_one_byte_per_prunable_weight(family):
    model = (tiny_model() if family == "bert" else tiny_causal_lm(family)).to(torch.bfloat16)
    mask = prune(model, 0.5)
    enforcer = MaskEnforcer(model, mask)
    assert 0 < _held_bytes(enforcer) <= mask.num_params


def test_enforcer_zeros_weights_gradients_and_moments_in_low_precision():
    model = tiny_model().to(torch.bfloat16)
    mask = prune(model, 0.5)
    enforcer = MaskEnforcer(model, mask)
    enforcer.attach()
    params = dict(model.named_parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = {"input_ids": torch.randint(6, 64, (4, 8)), "labels": torch.tensor([0, 1, 0, 1])}
    for _ in range(2):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        for name, keep in mask.items():
            assert torch.all(params[name].grad[~keep] == 0), name
        optimizer.step()
        enforcer.zero_weights()
    for name, keep in mask.items():
        assert torch.all(params[name][~keep] == 0) and params[name][keep].ne(0).any(), name
    with torch.no_grad():
        for name in mask:
            optimizer.state[params[name]]["exp_avg"].fill_(1.0)
    enforcer.reset_optimizer_state(optimizer)
    for name, keep in mask.items():
        assert torch.all(optimizer.state[params[name]]["exp_avg"][~keep] == 0)
    enforcer.detach()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_chunked_multiply_equals_a_plain_multiply_bit_for_bit(monkeypatch, dtype):
    monkeypatch.setattr(enforcement, "_MASK_CHUNK", 7)  # chunks that end inside the tensor and leave a ragged last one
    values = torch.randn(5, 9).to(dtype)
    values[0, :3] = torch.tensor([float("inf"), float("-inf"), -0.0])
    keep = torch.rand(5, 9) > 0.4
    expected = values.clone().mul_(keep.to(dtype))
    multiply_by_mask_(values, keep)
    bits = torch.int32 if dtype == torch.float32 else torch.int16  # compares signed zeros and infinities exactly
    assert torch.equal(values.view(bits), expected.view(bits))
    assert keep.dtype == torch.bool  # the caller's mask is read, not changed
