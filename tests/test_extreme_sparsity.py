"""Extreme sparsity with default settings: the layer-collapse guard's "auto" cap follows the request."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import HfArgumentParser

from hf_lottery import LayerCollapseError, LotteryArguments, prune
from hf_lottery.pruning.prune import prune_with_arguments
from hf_lottery.selector import resolve_max_tensor_sparsity, select_mask
from hf_lottery.testing_utils import tiny_model, toy_dataset

POOLER = "bert.pooler.dense.weight"


def _small_pooler_model() -> torch.nn.Module:
    # Like all-MiniLM-L6-v2: a pooler whose weights are far below the encoder's (global magnitude empties it).
    model = tiny_model("bert")
    with torch.no_grad():
        model.bert.pooler.dense.weight.mul_(0.05)
    return model


def _method_kwargs(method: str) -> dict:
    if method == "hydra":
        return {"dataloader": DataLoader(toy_dataset(32).with_format("torch"), batch_size=8)}
    if method == "synflow":
        return {"iterations": 20}
    return {}


@pytest.mark.parametrize("sparsity", [0.95, 0.99])
@pytest.mark.parametrize("method", ["magnitude", "synflow", "hydra"])
def test_extreme_sparsity_with_default_settings(method, sparsity):
    model = _small_pooler_model()
    mask = prune(model, sparsity, method=method, **_method_kwargs(method))
    assert mask.num_pruned == round(sparsity * mask.num_params)
    cap = resolve_max_tensor_sparsity("auto", sparsity)
    for name, row in mask.report().items():
        if name != "__total__":
            assert row["kept"] > 0, name
            assert row["sparsity"] <= cap + 1e-9, (name, row)


def test_auto_cap_values():
    assert resolve_max_tensor_sparsity("auto", 0.0) == pytest.approx(0.9)
    assert resolve_max_tensor_sparsity("auto", 0.5) == pytest.approx(0.9)
    assert resolve_max_tensor_sparsity("auto", 0.7) == pytest.approx(0.9)
    assert resolve_max_tensor_sparsity("auto", 0.8) == pytest.approx(0.9)
    assert resolve_max_tensor_sparsity("auto", 0.9) == pytest.approx(0.95)
    assert resolve_max_tensor_sparsity("auto", 0.95) == pytest.approx(0.975)
    assert resolve_max_tensor_sparsity("auto", 0.99) == pytest.approx(0.995)
    assert resolve_max_tensor_sparsity(None, 0.99) is None
    assert resolve_max_tensor_sparsity(0.8, 0.99) == 0.8
    with pytest.raises(ValueError, match="'auto'"):
        resolve_max_tensor_sparsity("sometimes", 0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        resolve_max_tensor_sparsity(1.5, 0.5)


@pytest.mark.parametrize("sparsity", [0.5, 0.6, 0.7])
def test_small_pooler_stays_alive_at_moderate_sparsity(sparsity):
    model = _small_pooler_model()
    unguarded = prune(model, sparsity, max_tensor_sparsity=None)
    assert unguarded.report()[POOLER]["kept"] == 0  # the collapse the guard exists for
    mask = prune(model, sparsity)
    # Up to 80 % the default is today's fixed 0.9 cap, mask for mask.
    assert mask == prune(model, sparsity, max_tensor_sparsity=0.9)
    pooler = mask.report()[POOLER]
    assert pooler["kept"] == pooler["numel"] - int(0.9 * pooler["numel"])
    w = model.bert.pooler.dense.weight.detach().abs()
    assert w[mask[POOLER]].min() >= w[~mask[POOLER]].max()  # its largest weights


def test_auto_cap_binds_on_the_small_pooler_at_99_percent():
    model = _small_pooler_model()
    mask = prune(model, 0.99)
    pooler = mask.report()[POOLER]
    # The pooler is pruned to the cap, no further: a density of half the overall 1 %.
    assert pooler["numel"] - pooler["kept"] == int(0.995 * pooler["numel"])


def test_the_error_names_the_request_and_the_cap():
    with pytest.raises(LayerCollapseError, match=r"requested sparsity 99\.00%.*max_tensor_sparsity=0\.9"):
        prune(tiny_model(), 0.99, max_tensor_sparsity=0.9)
    with pytest.raises(LayerCollapseError, match=r"requested sparsity 95\.00%.*max_tensor_sparsity=0\.9"):
        prune(tiny_model(), 0.95, scope="layer", max_tensor_sparsity=0.9)


def test_an_iterative_method_names_the_users_request():
    # SynFlow selects intermediate masks; the error says which request they served.
    with pytest.raises(LayerCollapseError, match=r"prune\(sparsity=0\.99, method='synflow'\).*requested sparsity"):
        prune(tiny_model(), 0.99, method="synflow", iterations=20, max_tensor_sparsity=0.9)


def test_auto_is_impossible_only_when_rounding_leaves_no_room():
    # Two 2x2 tensors: at 99 % the cap rounds down to 3 of 4 weights each; the request needs all 8.
    scores = {"a": torch.rand(2, 2), "b": torch.rand(2, 2)}
    with pytest.raises(LayerCollapseError, match=r"requested sparsity 99\.00%.*'auto'.*at most 6 weights"):
        select_mask(scores, 0.99, max_tensor_sparsity="auto")


def test_lottery_arguments_follow_the_default(tmp_path):
    args = LotteryArguments(output_dir=str(tmp_path), target_sparsity=0.99)
    assert args.max_tensor_sparsity == "auto"
    mask = prune_with_arguments(_small_pooler_model(), args, 0.99, None, 0)
    assert mask.num_pruned == round(0.99 * mask.num_params)
    assert min(row["kept"] for row in mask.report().values()) > 0
    (parsed,) = HfArgumentParser(LotteryArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--max_tensor_sparsity", "0.95"]
    )
    assert parsed.max_tensor_sparsity == 0.95
    (parsed,) = HfArgumentParser(LotteryArguments).parse_args_into_dataclasses(["--output_dir", str(tmp_path)])
    assert parsed.max_tensor_sparsity == "auto"
    with pytest.raises(ValueError, match="'auto'"):
        LotteryArguments(output_dir=str(tmp_path), max_tensor_sparsity="most")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        LotteryArguments(output_dir=str(tmp_path), max_tensor_sparsity=0.0)
