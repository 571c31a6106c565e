"""HYDRA: learned scores beat random pruning on a learnable task and move away from magnitude order."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader

from hf_lottery import prune
from hf_lottery.testing_utils import tiny_model, toy_dataset


def _loader(dataset, shuffle: bool = False, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset.with_format("torch"), batch_size=16, shuffle=shuffle, generator=generator)


@pytest.fixture(scope="module")
def trained():
    """A tiny BERT fitted on the toy task (label = token 5 appears): the 'pre-trained' network HYDRA prunes."""
    torch.manual_seed(0)
    train, dev = toy_dataset(96, seq_len=10, seed=0), toy_dataset(96, seq_len=10, seed=1)
    model = tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for epoch in range(12):
        for batch in _loader(train, shuffle=True, seed=epoch):
            optimizer.zero_grad()
            model(**batch).loss.backward()
            optimizer.step()
    return model, train, dev


@torch.no_grad()
def _evaluate(model, dataset, mask) -> tuple[float, float]:
    model = mask.apply_(copy.deepcopy(model)).eval()
    batch = dataset.with_format("torch")[:]
    out = model(**batch)
    return out.loss.item(), (out.logits.argmax(-1) == batch["labels"]).float().mean().item()


def test_hydra_improves_on_its_magnitude_start_and_beats_random_pruning(trained):
    model, train, dev = trained
    dense_loss, dense_acc = _evaluate(model, dev, prune(model, 0.0))
    assert dense_acc >= 0.9, "the toy model did not learn its task"
    hydra = prune(model, 0.7, method="hydra", dataloader=_loader(train), epochs=4, seed=0, max_tensor_sparsity=None)
    magnitude = prune(model, 0.7, method="magnitude", max_tensor_sparsity=None)
    rand = prune(model, 0.7, method="random", seed=0, max_tensor_sparsity=None)
    assert hydra.sparsity == rand.sparsity == magnitude.sparsity
    assert hydra != magnitude
    # Score training starts at the magnitude mask and lowers the loss it trains on (and, here, the dev loss).
    assert _evaluate(model, train, hydra)[0] < _evaluate(model, train, magnitude)[0]
    hydra_loss, hydra_acc = _evaluate(model, dev, hydra)
    assert hydra_loss < _evaluate(model, dev, magnitude)[0]
    rand_loss, rand_acc = _evaluate(model, dev, rand)
    assert hydra_acc >= rand_acc + 0.2
    assert hydra_loss < 0.6 * rand_loss


def test_hydra_keeps_weights_below_the_magnitude_threshold(trained):
    model, train, _ = trained
    hydra = prune(model, 0.5, method="hydra", scope="layer", dataloader=_loader(train), epochs=2)
    magnitude = prune(model, 0.5, method="magnitude", scope="layer")
    params = dict(model.named_parameters())
    below = 0
    for name, keep in hydra.items():
        weight = params[name].detach().abs()
        threshold = weight[magnitude[name]].min()
        below += int((keep & (weight < threshold)).sum())
    assert below > 0


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_scores_start_from_magnitudes(trained, scope):
    # With no step taken the ranking is the magnitude ranking of the scope: one empty epoch changes nothing. Under a
    # global top-k this needs one scale for every tensor (per-tensor scaling reorders tensors).
    model, _, _ = trained
    hydra = prune(model, 0.5, method="hydra", scope=scope, dataloader=[])
    assert hydra == prune(model, 0.5, method="magnitude", scope=scope)


def test_pluggable_objective_and_adversarial_training():
    model = tiny_model("roberta")
    loader = _loader(toy_dataset(32, seq_len=8))
    calls = []

    def loss_fn(model, batch):
        calls.append(sorted(batch))
        return model(**batch).loss

    plain = prune(model, 0.5, method="hydra", dataloader=loader, loss_fn=loss_fn, seed=1)
    assert len(calls) == 2 and "input_ids" in calls[0]
    calls.clear()
    adversarial = prune(
        model, 0.5, method="hydra", dataloader=loader, loss_fn=loss_fn, adversarial=True, adversarial_steps=2, seed=1
    )
    assert len(calls) == 4 and "inputs_embeds" in calls[0] and "input_ids" not in calls[0]
    again = prune(model, 0.5, method="hydra", dataloader=loader, adversarial=True, adversarial_steps=2, seed=1)
    assert adversarial == again
    assert adversarial != plain


def test_sgd_and_the_global_rng_is_left_alone():
    model = tiny_model()
    state = torch.random.get_rng_state()
    mask = prune(model, 0.5, method="hydra", dataloader=_loader(toy_dataset(16)), optimizer="sgd", learning_rate=0.1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert mask.num_pruned == round(0.5 * mask.num_params)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "dataloader"),
        ({"dataloader": [], "optimizer": "lion"}, "optimizer"),
        ({"dataloader": [], "epochs": 0}, "epochs"),
        ({"dataloader": iter([]), "epochs": 2}, "one-pass"),
        ({"dataloader": [], "adversarial": True, "adversarial_epsilon": 0.0}, "adversarial"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        prune(tiny_model(), 0.5, method="hydra", **kwargs)


def test_batches_without_labels_need_a_loss_fn():
    dataset = toy_dataset(8).remove_columns("labels")
    with pytest.raises(ValueError, match="loss_fn"):
        prune(tiny_model(), 0.5, method="hydra", dataloader=_loader(dataset))


def test_a_tensor_the_guard_protects_stays_alive_while_the_scores_learn(trained):
    # A tensor of small weights (MiniLM's untrained pooler) is one the layer-collapse guard keeps alive in the
    # final mask; a plain top-k between the steps emptied it after the first one, so the scores were learned on a
    # network whose output no longer depended on its input.
    model, train, _ = trained
    model = copy.deepcopy(model)
    pooler = "bert.pooler.dense.weight"
    with torch.no_grad():
        model.get_parameter(pooler).mul_(0.01)
    kept = []

    def loss_fn(model, batch):
        kept.append(int(model.get_submodule("bert.pooler.dense").weight.count_nonzero()))
        return model(**batch).loss

    mask = prune(model, 0.7, method="hydra", dataloader=_loader(train), loss_fn=loss_fn, epochs=2, seed=0)
    assert prune(model, 0.7, method="magnitude", max_tensor_sparsity=None)[pooler].sum() == 0  # unguarded: emptied
    assert len(kept) == 2 * len(_loader(train)) and kept[0] > 0
    assert min(kept) == kept[0]  # every step keeps at least what the guard kept at the start
    assert mask[pooler].sum() > 0


@pytest.mark.parametrize("k", [0, 1, 7, 500, 999, 1000])
def test_the_step_top_k_keeps_exactly_k_largest_with_ties(k):
    from hf_lottery.scoring.hydra import _largest

    values = torch.randint(0, 20, (1000,)).float()  # many ties
    values[:100] = float("-inf")  # weights an earlier mask pruned
    keep = _largest(values, k)
    assert int(keep.sum()) == k
    if 0 < k < 1000:
        assert values[keep].min() >= values[~keep].max()


def test_pruning_seed_and_round_draw_hydras_dropout(tmp_path):
    """`LotteryArguments.pruning_seed` (plus the round index) seeds HYDRA: the same seed and round give the same
    mask, another seed or another round with dropout gives another draw; without it, `seed` is used."""
    from hf_lottery import LotteryArguments
    from hf_lottery.pruning.prune import prune_with_arguments

    torch.manual_seed(0)
    model = tiny_model("bert", hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    train = toy_dataset(64, seq_len=10, seed=0)

    def ticket(round_index: int, **kwargs) -> object:
        args = LotteryArguments(output_dir=str(tmp_path), pruning_method="hydra", max_tensor_sparsity=None, **kwargs)
        return prune_with_arguments(model, args, 0.6, None, round_index, dataloader=lambda: _loader(train))

    first = ticket(1, seed=3, pruning_seed=10)
    assert first == ticket(1, seed=99, pruning_seed=10)
    assert first == ticket(0, seed=99, pruning_seed=11)  # seeded with pruning_seed + round
    assert first != ticket(1, seed=3, pruning_seed=20)
    assert first == ticket(1, seed=10)  # no pruning_seed: the run's seed
