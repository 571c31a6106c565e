"""Wanda and SparseGPT: what the scores are, that they beat magnitude where activations matter, the OBS update."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_lottery import load_reconstruction_, prune, sparsegpt_update
from hf_lottery.scoring import get_scoring
from hf_lottery.testing_utils import tiny_model


class TwoLinears(nn.Module):
    """Inputs with a few loud features: where activation-aware scoring and magnitude disagree."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.first = nn.Linear(16, 24, bias=False)
        self.second = nn.Linear(24, 8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)))


def _loud_batches(n: int = 4, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    scale = torch.ones(16)
    scale[::4] = 20.0  # one loud feature in every group of 4 (N:M groups)
    return [{"x": torch.randn(32, 16, generator=g) * scale} for _ in range(n)]


def _correlated_batches(n: int = 4, seed: int = 2) -> list[dict[str, torch.Tensor]]:
    """Inputs on a 6-dimensional subspace plus noise: the kept weights can absorb the pruned ones' share."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(6, 16, generator=g)
    return [{"x": torch.randn(32, 6, generator=g) @ basis + 0.05 * torch.randn(32, 16, generator=g)} for _ in range(n)]


def _output_error(layer_weight: torch.Tensor, pruned_weight: torch.Tensor, inputs: torch.Tensor) -> float:
    return float((inputs @ (layer_weight - pruned_weight).T).square().sum())


def test_wanda_scores_are_magnitude_times_input_rms():
    model, batches = TwoLinears(), _loud_batches()
    params = dict(model.named_parameters())
    scores = get_scoring("wanda")(model, params, None, dataloader=batches)
    x = torch.cat([b["x"] for b in batches])
    expected = model.first.weight.detach().abs() * x.square().mean(0).sqrt()
    torch.testing.assert_close(scores["first.weight"], expected)


def test_wanda_ignores_padding_tokens():
    model = tiny_model()
    ids = torch.randint(6, 64, (2, 6))
    padded = {"input_ids": torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1)}
    padded["attention_mask"] = torch.cat([torch.ones(2, 6), torch.zeros(2, 3)], 1).long()
    plain = {"input_ids": ids, "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    name = "bert.encoder.layer.0.attention.self.query.weight"
    params = {name: dict(model.named_parameters())[name]}
    a = get_scoring("wanda")(model, params, None, dataloader=[padded])[name]
    b = get_scoring("wanda")(model, params, None, dataloader=[plain])[name]
    # Layer 0's inputs at the real tokens do not depend on the padding after them (bidirectional attention aside,
    # the embeddings + LayerNorm are per token): equal scores.
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("scope", ["row", "2:4"])
def test_activation_aware_masks_lose_less_output_than_magnitude(method, scope):
    model, batches = TwoLinears(), _loud_batches()
    x = torch.cat([b["x"] for b in batches])
    w = model.first.weight.detach()
    errors = {}
    for name in (method, "magnitude"):
        kwargs = {"dataloader": batches} if name != "magnitude" else {}
        mask = prune(model, 0.5, method=name, scope=scope, prune_modules=["first.weight"], **kwargs)
        errors[name] = _output_error(w, w * mask["first.weight"], x)
    assert errors[method] < 0.5 * errors["magnitude"]


def test_sparsegpt_update_reconstructs_better_than_masking_and_leaves_the_model_alone():
    model, batches = TwoLinears(), _correlated_batches()
    x = torch.cat([b["x"] for b in batches])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask = prune(model, 0.5, method="sparsegpt", scope="row", dataloader=batches, prune_modules=["first.weight"])
    w = model.first.weight.detach()
    for block_size in (128, 5):
        updated = sparsegpt_update(model, mask, batches, block_size=block_size)
        new = updated["first.weight"]
        assert torch.all(new[~mask["first.weight"]] == 0)
        assert _output_error(w, new, x) < 0.3 * _output_error(w, w * mask["first.weight"], x)
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value)
    torch.testing.assert_close(sparsegpt_update(model, mask, batches, block_size=5)["first.weight"], new)
    load_reconstruction_(model, updated)
    assert torch.equal(model.first.weight, updated["first.weight"])


def test_sparsegpt_update_on_a_transformer_keeps_exact_zeros():
    model = tiny_model()
    batches = [{"input_ids": torch.randint(6, 64, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long)}]
    mask = prune(model, 0.5, method="sparsegpt", scope="2:4", dataloader=batches)
    updated = sparsegpt_update(model, mask, batches)
    assert set(updated) == set(mask)
    for name, weight in updated.items():
        assert torch.all(weight[~mask[name]] == 0) and not torch.isnan(weight).any()


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_calibration_needs_data_and_linear_layers(method):
    model = tiny_model()
    with pytest.raises(ValueError, match="pass dataloader="):
        prune(model, 0.5, method=method)
    with pytest.raises(ValueError, match="no calibration batches"):
        prune(model, 0.5, method=method, dataloader=[])
    with pytest.raises(ValueError, match="not one"):
        prune(model, 0.5, method=method, dataloader=[{}], prune_modules=[r".*LayerNorm\.weight"])
