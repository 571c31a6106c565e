"""SynFlow on transformer encoders: no layer collapse, conservation, the schedule, a model left as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertModel

from hf_lottery import TicketMask, get_scoring, prunable_parameters, prune, select_mask
from hf_lottery.testing_utils import tiny_config, tiny_model


def _bert_with_small_pooler() -> nn.Module:
    model = tiny_model("bert")
    with torch.no_grad():
        model.bert.pooler.dense.weight.mul_(0.1)
    return model


def test_magnitude_collapses_the_small_pooler_at_random_init():
    mask = prune(_bert_with_small_pooler(), 0.99, method="magnitude", max_tensor_sparsity=None)
    assert mask.report()["bert.pooler.dense.weight"]["kept"] == 0


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_iterative_synflow_empties_no_tensor_at_99_percent(family):
    model = _bert_with_small_pooler() if family == "bert" else tiny_model(family)
    mask = prune(model, 0.99, method="synflow", iterations=100, max_tensor_sparsity=None)
    assert mask.num_pruned == round(0.99 * mask.num_params)
    kept = {name: row["kept"] for name, row in mask.report().items() if name != "__total__"}
    assert min(kept.values()) > 0, kept


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_every_tensor_carries_the_whole_flow(family):
    # The linearized encoder is a chain (residuals cut, Q and K fed a detached input), so by the paper's
    # conservation law the scores of every prunable tensor sum to R, also after pruning.
    model = tiny_model(family)
    parameters = prunable_parameters(model)
    for mask in (None, prune(model, 0.7, method="random", seed=1)):
        scores = get_scoring("synflow")(model, parameters, mask, sparsity=0.7, iterations=1)
        sums = torch.stack([s.double().clamp_min(0).sum() for s in scores.values()])
        torch.testing.assert_close(sums, sums[0].expand_as(sums), rtol=1e-4, atol=0)


def test_exponential_schedule_through_the_shared_selector():
    model = tiny_model()
    parameters = prunable_parameters(model)
    start = prune(model, 0.2, method="random", seed=0)
    levels = []

    def select(scores, sparsity, mask=None):
        levels.append(sparsity)
        return select_mask(scores, sparsity, mask=mask)

    get_scoring("synflow")(model, parameters, start, sparsity=0.9, iterations=4, select=select)
    d0, d = start.density, 0.1
    expected = [1 - d0 * (d / d0) ** (k / 4) for k in (1, 2, 3)]
    assert levels == pytest.approx(expected, abs=1e-9)


def test_weights_pruned_on_the_way_stay_pruned():
    model = tiny_model()
    parameters = prunable_parameters(model)
    scores = get_scoring("synflow")(model, parameters, None, sparsity=0.8, iterations=3)
    pruned = sum(int(torch.isinf(s).sum()) for s in scores.values())
    total = sum(s.numel() for s in scores.values())
    # after the second of three steps the density is 0.2^(2/3)
    assert pruned == round((1 - 0.2 ** (2 / 3)) * total)


def test_data_free_and_deterministic():
    model = tiny_model("roberta")
    a = prune(model, 0.8, method="synflow", iterations=10, seed=0)
    b = prune(model, 0.8, method="synflow", iterations=10, seed=123)
    assert a == b


def test_one_shot_is_iterations_1():
    model = tiny_model()
    mask = prune(model, 0.5, method="synflow", iterations=1)
    assert isinstance(mask, TicketMask) and mask.num_pruned == round(0.5 * mask.num_params)


class _Square(nn.Module):
    def forward(self, x):
        return x * x


def test_unknown_nonlinearity_is_refused_and_the_model_restored():
    model = tiny_model()
    model.bert.encoder.layer[0].intermediate.intermediate_act_fn = _Square()
    attn = model.config._attn_implementation
    with pytest.raises(ValueError, match="could not linearize"):
        prune(model, 0.5, method="synflow", iterations=2)
    assert model.config._attn_implementation == attn
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert model.training


def test_head_parameters_cannot_be_scored():
    model = tiny_model()
    with pytest.raises(ValueError, match="classifier.weight"):
        prune(model, 0.5, method="synflow", prune_modules=[r".*dense\.weight", r"classifier\.weight"], iterations=2)


def test_bad_iterations():
    with pytest.raises(ValueError, match="iterations"):
        prune(tiny_model(), 0.5, method="synflow", iterations=0)


def test_works_on_a_bare_encoder_in_eval_mode():
    torch.manual_seed(0)
    model = BertModel(tiny_config()).eval()
    mask = prune(model, 0.9, method="synflow", iterations=10, max_tensor_sparsity=None)
    assert min(row["kept"] for row in mask.report().values()) > 0
    assert not model.training
