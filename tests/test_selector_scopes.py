"""The selector's scopes beyond global/layer: per output row, N:M, and the chunked global threshold."""

from __future__ import annotations

import pytest
import torch
from test_scoring_common import CASE_IDS, SCORING_CASES
from transformers import GPT2Config, GPT2LMHeadModel

from hf_lottery import LotteryArguments, TicketMask, prune, select_mask, selector
from hf_lottery.selector import _global_keep, _prune_lowest
from hf_lottery.testing_utils import tiny_model


def _tied_scores(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Few distinct values (many ties), signed zeros and infinities: the hard cases of a threshold.
    values = torch.tensor([-1.5, -0.0, 0.0, 0.25, 0.25, 3.0, float("inf"), float("-inf")])
    shapes = [(3, 5), (7,), (2, 2, 3)]
    return {f"t{i}": values[torch.randint(0, len(values), s, generator=g)] for i, s in enumerate(shapes)}


@pytest.mark.parametrize("bracket", [True, False], ids=["bracket", "radix"])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("chunk", [1, 4, 7, 1 << 20])
def test_chunked_global_selection_equals_the_concatenated_one(seed, chunk, bracket):
    scores = _tied_scores(seed)
    g = torch.Generator().manual_seed(100 + seed)
    mask = {n: torch.rand(s.shape, generator=g) > 0.3 for n, s in scores.items()}
    names = list(scores)
    total = sum(s.numel() for s in scores.values())
    for m in (None, mask):
        flats = [
            s.flatten().masked_fill(~m[n].flatten(), float("-inf")) if m else s.flatten() for n, s in scores.items()
        ]
        for k in (0, 1, 5, total // 2, total - 1, total):
            expected = _prune_lowest(torch.cat(flats), k)
            got = _global_keep(names, scores, m, k, chunk=chunk, bracket=bracket)
            assert torch.equal(torch.cat([got[n] for n in names]), expected), (k, m is None)


@pytest.mark.parametrize("bracket", [True, False], ids=["bracket", "radix"])
def test_chunked_global_selection_on_real_magnitudes_is_exact(bracket):
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.randn(64, 33, generator=g).abs(), "b": torch.randn(1000, generator=g).abs().half().float()}
    for k in (1, 517, 1999, 3111):
        expected = _prune_lowest(torch.cat([s.flatten() for s in scores.values()]), k)
        got = _global_keep(list(scores), scores, None, k, chunk=100, bracket=bracket)
        assert torch.equal(torch.cat([got["a"], got["b"]]), expected)


@pytest.fixture
def small_sample(monkeypatch):
    """A sample of a few hundred scores: the bracket is narrow and often misses or collects too much."""
    monkeypatch.setattr(selector, "GLOBAL_SELECTION_SAMPLE_MIN", 300)
    monkeypatch.setattr(selector, "BRACKET_WIDTH_STDS", 0.5)
    monkeypatch.setattr(selector, "BRACKET_MAX_FRACTION", 0.01)


def test_sampled_bracket_that_misses_falls_back_to_the_same_mask(small_sample, monkeypatch):
    # The strided sample sees only the first of every 40 scores, which are all large here: its bracket lies far
    # above the true threshold, and the radix select must decide.
    values = torch.rand(40, 300, generator=torch.Generator().manual_seed(1))
    values[0] += 10.0
    scores = {"w": values.T.contiguous(), "v": torch.rand(500, generator=torch.Generator().manual_seed(2))}
    calls = []
    radix = selector._kth_key
    monkeypatch.setattr(selector, "_kth_key", lambda *a: calls.append(1) or radix(*a))
    flat = torch.cat([scores["w"].flatten(), scores["v"]])
    for k in (3, 4000, 9000, 12000):
        got = _global_keep(list(scores), scores, None, k, chunk=64)
        assert torch.equal(torch.cat([got["w"], got["v"]]), _prune_lowest(flat, k)), k
    assert calls  # the fallback ran, and gave the exact mask


@pytest.mark.parametrize("seed", range(4))
def test_bracketed_and_radix_selection_agree_on_ties_and_masks(seed, monkeypatch):
    g = torch.Generator().manual_seed(seed)
    scores = {
        "a": torch.randint(0, 2000, (300, 70), generator=g).float() / 7,  # about 10 ties per value
        "b": torch.randn(4096, generator=g).abs(),
        "c": torch.zeros(33),
    }
    mask = {n: torch.rand(s.shape, generator=g) > 0.4 for n, s in scores.items()}
    names = list(scores)
    total = sum(s.numel() for s in scores.values())
    fallbacks = []
    radix = selector._kth_key
    monkeypatch.setattr(selector, "_kth_key", lambda *a: fallbacks.append(1) or radix(*a))
    selections = 0
    for m in (None, mask):
        for k in (1, total // 3, int(0.75 * total), total - 2):
            fast = _global_keep(names, scores, m, k, chunk=4000)
            exact = _prune_lowest(
                torch.cat(
                    [
                        s.flatten().masked_fill(~m[n].flatten(), float("-inf")) if m else s.flatten()
                        for n, s in scores.items()
                    ]
                ),
                k,
            )
            assert torch.equal(torch.cat([fast[n] for n in names]), exact), k
            selections += 1
    assert len(fallbacks) < selections // 2  # most selections took the one-pass bracket


def _groups(mask: torch.Tensor, m: int, output_dim: int = 0) -> torch.Tensor:
    rows = mask if output_dim == 0 else mask.T
    return rows.reshape(-1, m)


def test_row_scope_prunes_each_output_alike_and_keeps_its_best():
    model = tiny_model()
    mask = prune(model, 0.3, scope="row", max_tensor_sparsity=None)
    for name, keep in mask.items():
        weight = dict(model.named_parameters())[name].detach().abs()
        pruned_per_row = (~keep).sum(1)
        assert torch.all(pruned_per_row == round(0.3 * keep.shape[1])), name
        for row in range(keep.shape[0]):
            assert weight[row][keep[row]].min() >= weight[row][~keep[row]].max()


def test_row_scope_ties_go_to_the_lower_index():
    mask = select_mask({"w": torch.zeros(2, 4)}, 0.5, scope="row", max_tensor_sparsity=None)
    assert mask["w"].tolist() == [[False, False, True, True]] * 2


def test_row_scope_nests_under_a_mask_that_pruned_more_in_some_rows():
    scores = {"w": torch.arange(12.0).view(2, 6)}
    first = TicketMask({"w": torch.tensor([[False] * 4 + [True] * 2, [True] * 6])})
    mask = select_mask(scores, 0.5, scope="row", mask=first, max_tensor_sparsity=None)
    assert mask.is_subset_of(first)
    assert (~mask["w"]).sum(1).tolist() == [4, 3]


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8"])
@pytest.mark.parametrize("method", ["magnitude", "random"])
def test_n_m_keeps_exactly_n_of_every_m_consecutive_inputs(pattern, method):
    n, m = map(int, pattern.split(":"))
    model = tiny_model()
    mask = prune(model, 1 - n / m, method=method, scope=pattern, max_tensor_sparsity=None)
    for name, keep in mask.items():
        groups = _groups(keep, m)
        assert torch.all(groups.sum(1) == n), name
        if method == "magnitude":
            weight = _groups(dict(model.named_parameters())[name].detach().abs(), m)
            kept = weight.masked_fill(~groups, float("inf")).min(1).values
            dropped = weight.masked_fill(groups, float("-inf")).max(1).values
            assert torch.all(kept >= dropped)


def test_n_m_runs_along_the_input_dimension_of_gpt2_conv1d():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=4, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    mask = prune(model, 0.5, scope="2:4", max_tensor_sparsity=None)
    keep = mask["transformer.h.0.attn.c_attn.weight"]  # Conv1D: [in, out]
    assert keep.shape == (32, 96)
    assert torch.all(_groups(keep, 4, output_dim=1).sum(1) == 2)
    row = prune(model, 0.25, scope="row", max_tensor_sparsity=None)["transformer.h.0.mlp.c_proj.weight"]
    assert torch.all((~row).sum(0) == round(0.25 * row.shape[0]))


def test_n_m_imp_rounds_nest_and_end_on_an_exact_pattern():
    model = tiny_model()
    mask = None
    for sparsity in (0.2, 0.35, 0.45, 0.5):
        new = prune(model, sparsity, scope="2:4", mask=mask, max_tensor_sparsity=None)
        for name, keep in new.items():
            assert int((~keep).sum()) == round(sparsity * keep.numel()), name
            assert torch.all(_groups(keep, 4).sum(1) >= 2)
        assert mask is None or new.is_subset_of(mask)
        new.apply_(model)
        mask = new
    assert all(torch.all(_groups(keep, 4).sum(1) == 2) for keep in mask.values())


def test_n_m_mask_survives_the_artifact_round_trip(tmp_path):
    mask = prune(tiny_model(), 0.5, scope="2:4", max_tensor_sparsity=None)
    mask.save_pretrained(tmp_path / "ticket")
    loaded = TicketMask.from_pretrained(tmp_path / "ticket")
    assert loaded == mask
    assert all(torch.all(_groups(keep, 4).sum(1) == 2) for keep in loaded.values())


def test_n_m_refusals():
    model = tiny_model()
    with pytest.raises(ValueError, match="at most 0.5"):
        prune(model, 0.6, scope="2:4")
    with pytest.raises(ValueError, match="not a multiple of 5"):
        prune(model, 0.2, scope="4:5")
    unstructured = prune(model, 0.5, max_tensor_sparsity=None)
    with pytest.raises(ValueError, match="no 2:4 mask can keep its pruned weights pruned"):
        prune(model, 0.5, scope="2:4", mask=unstructured)
    for bad in ("4:2", "0:4", "2:", "rows"):
        with pytest.raises(ValueError, match="scope must be one of"):
            prune(model, 0.5, scope=bad)


def test_lottery_arguments_accept_row_and_n_m_scopes(tmp_path):
    assert LotteryArguments(output_dir=str(tmp_path), pruning_scope="2:4", target_sparsity=0.5).pruning_scope == "2:4"
    assert LotteryArguments(output_dir=str(tmp_path), pruning_scope="row").pruning_scope == "row"
    with pytest.raises(ValueError, match="at most 0.5"):
        LotteryArguments(output_dir=str(tmp_path), pruning_scope="2:4", target_sparsity=0.6)
    with pytest.raises(ValueError, match="granularity='weight'"):
        LotteryArguments(output_dir=str(tmp_path), pruning_scope="2:4", target_sparsity=0.5, granularity="head")
    with pytest.raises(ValueError, match="pruning_scope"):
        LotteryArguments(output_dir=str(tmp_path), pruning_scope="row", granularity="head")


@pytest.mark.parametrize("case", SCORING_CASES, ids=CASE_IDS)
def test_every_registered_method_gives_exact_row_and_2_4_masks(case):
    model = tiny_model()
    mask = prune(model, 0.5, method=case.method, scope="2:4", max_tensor_sparsity=None, **case.kwargs())
    assert all(torch.all(_groups(keep, 4).sum(1) == 2) for keep in mask.values())
    mask = prune(model, 0.25, method=case.method, scope="row", max_tensor_sparsity=None, **case.kwargs())
    assert all(torch.all((~keep).sum(1) == round(0.25 * keep.shape[1])) for keep in mask.values())


def test_nan_scores_are_refused_and_opposite_infinities_are_not():
    # The NaN check sums each tensor first; +inf and -inf together sum to NaN without any NaN present.
    scores = {"a": torch.tensor([float("inf"), float("-inf"), 1.0, 2.0]), "b": torch.tensor([3.0, 0.5])}
    for scope, pruned in (("global", {"a": 2, "b": 1}), ("layer", {"a": 2, "b": 1})):
        keep = select_mask(scores, 0.5, scope=scope)
        assert {n: int((~k).sum()) for n, k in keep.items()} == pruned
        assert not keep["a"][1] and keep["a"][0]  # -inf goes first, +inf stays
    bad = {**scores, "b": torch.tensor([3.0, float("nan")])}
    with pytest.raises(ValueError, match="'b' contain NaN"):
        select_mask(bad, 0.5)
