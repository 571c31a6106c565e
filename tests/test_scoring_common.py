"""Every registered scoring method through the same checks. A new method starts with a row in SCORING_CASES."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from hf_lottery import (
    LotteryCallback,
    LotteryTrainer,
    TicketMask,
    get_scoring,
    prunable_parameters,
    prune,
    registered_methods,
)
from hf_lottery.scoring import scoring_kwargs_from_args, scoring_spec
from hf_lottery.testing_utils import tiny_model, toy_dataset
from hf_lottery.training.arguments import LotteryArguments


def _toy_loader() -> DataLoader:
    return DataLoader(toy_dataset(16, seq_len=8).with_format("torch"), batch_size=8)


@dataclass
class ScoringCase:
    """One method under test: its name, the kwargs it needs on a tiny model, whether the seed changes its result."""

    method: str
    kwargs: Callable[[], dict[str, Any]] = dict
    stochastic: bool = False


SCORING_CASES = [
    ScoringCase("magnitude"),
    ScoringCase("random", stochastic=True),
    ScoringCase("synflow", lambda: {"iterations": 5}),
    ScoringCase("hydra", lambda: {"dataloader": _toy_loader(), "epochs": 1}),
    ScoringCase("wanda", lambda: {"dataloader": _toy_loader()}),
    ScoringCase("sparsegpt", lambda: {"dataloader": _toy_loader()}),
]
CASE_IDS = [case.method for case in SCORING_CASES]
FAMILIES = ["bert", "roberta"]


def _snapshot(model: torch.nn.Module) -> dict[str, Any]:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "ids": [(n, id(p), p.requires_grad) for n, p in model.named_parameters()],
        "modes": [m.training for m in model.modules()],
        "attn": model.config._attn_implementation,
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
    }


def _assert_unchanged(model: torch.nn.Module, before: dict[str, Any]) -> None:
    after = _snapshot(model)
    assert list(after["state"]) == list(before["state"]), "state-dict keys or their order changed"
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), f"{key} changed"
    for name in ("ids", "modes", "attn", "hooks"):
        assert after[name] == before[name], f"{name} changed"


def test_every_registered_method_has_a_test_case():
    assert sorted(CASE_IDS) == registered_methods()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", SCORING_CASES, ids=CASE_IDS)
def test_exact_global_sparsity_and_model_untouched(case, family):
    model = tiny_model(family)
    before = _snapshot(model)
    mask = prune(model, 0.6, method=case.method, max_tensor_sparsity=None, **case.kwargs())
    assert isinstance(mask, TicketMask)
    assert mask.num_pruned == round(0.6 * mask.num_params)
    _assert_unchanged(model, before)


@pytest.mark.parametrize("case", SCORING_CASES, ids=CASE_IDS)
def test_exact_layer_sparsity(case):
    model = tiny_model("bert")
    mask = prune(model, 0.4, method=case.method, scope="layer", **case.kwargs())
    for name, row in mask.report().items():
        if name != "__total__":
            assert row["numel"] - row["kept"] == round(0.4 * row["numel"]), name


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", SCORING_CASES, ids=CASE_IDS)
def test_respects_an_existing_mask(case, family):
    model = tiny_model(family)
    first = prune(model, 0.3, method="random", seed=7)
    first.apply_(model)
    mask = prune(model, 0.6, method=case.method, mask=first, **case.kwargs())
    assert mask.is_subset_of(first)
    assert mask.num_pruned == round(0.6 * mask.num_params)


@pytest.mark.parametrize("case", SCORING_CASES, ids=CASE_IDS)
def test_deterministic_under_a_seed(case):
    model = tiny_model("bert")
    a = prune(model, 0.5, method=case.method, seed=3, **case.kwargs())
    b = prune(model, 0.5, method=case.method, seed=3, **case.kwargs())
    assert a == b
    if case.stochastic:
        assert prune(model, 0.5, method=case.method, seed=4, **case.kwargs()) != a


@pytest.mark.parametrize("case", SCORING_CASES, ids=CASE_IDS)
def test_scores_contract(case):
    model = tiny_model("bert")
    parameters = prunable_parameters(model)
    scores = get_scoring(case.method)(model, parameters, None, seed=0, sparsity=0.5, **case.kwargs())
    assert list(scores) == list(parameters)
    for name, s in scores.items():
        assert s.shape == parameters[name].shape and s.is_floating_point()
        assert not torch.isnan(s).any()


@pytest.mark.parametrize("case", SCORING_CASES, ids=CASE_IDS)
def test_lottery_arguments_accept_the_method_and_its_settings(case, tmp_path):
    args = LotteryArguments(output_dir=str(tmp_path), pruning_method=case.method)
    kwargs = scoring_kwargs_from_args(args)
    accepted = inspect.signature(scoring_spec(case.method).method).parameters
    assert set(kwargs) <= set(accepted), f"fields without a matching keyword: {set(kwargs) - set(accepted)}"


@pytest.mark.parametrize(
    "call",
    [
        lambda: prune(tiny_model(), 0.5, method="snip"),
        lambda: get_scoring("snip"),
        lambda: scoring_spec("snip"),
    ],
)
def test_unknown_method_lists_the_registered_ones(call):
    with pytest.raises(ValueError, match="Unknown pruning method 'snip'") as err:
        call()
    for name in registered_methods():
        assert name in str(err.value)


def test_a_run_refuses_an_unknown_method(tmp_path):
    # The arguments know fixed choices only; the scoring registry is checked when a run is set up.
    args = LotteryArguments(output_dir=str(tmp_path), pruning_method="snip", use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="pruning_method='snip'.*'synflow'"):
        LotteryTrainer(model=tiny_model(), args=args, train_dataset=toy_dataset(8))
    with pytest.raises(ValueError, match="pruning_method='snip'.*'synflow'"):
        LotteryCallback(args)


@pytest.mark.parametrize(
    "bad",
    [
        {"synflow_iterations": 0},
        {"hydra_epochs": 0},
        {"hydra_learning_rate": 0.0},
        {"hydra_optimizer": "lion"},
        {"hydra_adversarial_epsilon": -1.0},
        {"hydra_adversarial_steps": 0},
        {"wanda_calibration_batches": 0},
        {"sparsegpt_calibration_batches": 0},
        {"sparsegpt_damping": 0.0},
    ],
)
def test_method_settings_are_validated(bad, tmp_path):
    with pytest.raises(ValueError, match=next(iter(bad))):
        LotteryArguments(output_dir=str(tmp_path), **bad)


def test_method_specs():
    assert scoring_spec("hydra").needs_data and not scoring_spec("hydra").at_init
    assert scoring_spec("synflow").at_init and not scoring_spec("synflow").needs_data
    assert not scoring_spec("magnitude").at_init and not scoring_spec("random").needs_data
    for name in ("wanda", "sparsegpt"):
        assert scoring_spec(name).needs_data and not scoring_spec(name).at_init
