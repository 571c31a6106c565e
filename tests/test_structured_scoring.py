"""Choosing what to remove: magnitude, first-order importance, gates with the polarization regularizer, selection."""

import math

import pytest
import torch
from structured_helpers import HEAD_SIZE, HEADS, HIDDEN, LAYERS, NEURONS, inputs, logits, tiny_model

from hf_lottery.structured import (
    StructureGates,
    attach_gates,
    compact,
    encoder_matmul_flops,
    first_order_scores,
    gate_scores,
    magnitude_scores,
    polarization_regularizer,
    prune_heads,
    prune_neurons,
    random_scores,
    score_structures,
    select_below,
    select_structures,
)

torch.set_num_threads(1)
nan = math.nan


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


# --- magnitude -------------------------------------------------------------------------------------------------------


def test_magnitude_scores_are_group_norms():
    model = tiny_model("bert")
    scores = magnitude_scores(model)
    block = model.bert.encoder.layer[1]
    rows = slice(2 * HEAD_SIZE, 3 * HEAD_SIZE)
    attn = block.attention.self
    head = torch.cat(
        [
            attn.query.weight[rows].flatten(),
            attn.key.weight[rows].flatten(),
            attn.value.weight[rows].flatten(),
            block.attention.output.dense.weight[:, rows].flatten(),
        ]
    )
    torch.testing.assert_close(scores["heads"][1][2], head.norm())
    neuron = torch.cat([block.intermediate.dense.weight[5], block.output.dense.weight[:, 5]])
    torch.testing.assert_close(scores["neurons"][1][5], neuron.norm())
    assert set(scores["heads"]) == set(range(LAYERS)) and scores["neurons"][0].shape == (NEURONS,)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_scores_keep_the_original_numbering_after_surgery(family):
    model = tiny_model(family)
    before = magnitude_scores(model)
    prune_heads(model, {0: [1], 2: [0, 3]})
    prune_neurons(model, {1: [0, 36]})
    after = magnitude_scores(model)
    assert torch.isnan(after["heads"][0][1]) and torch.isnan(after["heads"][2][[0, 3]]).all()
    torch.testing.assert_close(after["heads"][0][[0, 2, 3]], before["heads"][0][[0, 2, 3]])
    torch.testing.assert_close(after["heads"][2][[1, 2]], before["heads"][2][[1, 2]])
    torch.testing.assert_close(after["neurons"][1][1:36], before["neurons"][1][1:36])
    assert torch.isnan(after["neurons"][1][[0, 36]]).all()


def test_empty_layer_gets_no_scores():
    model = tiny_model("bert")
    prune_heads(model, {1: list(range(HEADS))})
    assert 1 not in magnitude_scores(model)["heads"]
    assert 1 not in random_scores(model)["heads"]


# --- gates -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_gates_are_exact_masks_and_removable(family):
    model = tiny_model(family)
    batch = inputs()
    dense = logits(model, batch)
    with attach_gates(model) as gates:
        torch.testing.assert_close(logits(model, batch), dense, atol=0, rtol=0)
        with torch.no_grad():
            gates.head_gates["0"][[1, 3]] = 0
            gates.neuron_gates["2"][[4, 9]] = 0
        gated = logits(model, batch)
    torch.testing.assert_close(logits(model, batch), dense, atol=0, rtol=0)  # hooks are gone
    assert all(not m._forward_pre_hooks for m in model.modules())
    prune_heads(model, {0: [1, 3]})
    prune_neurons(model, {2: [4, 9]})
    torch.testing.assert_close(logits(model, batch), gated, atol=1e-5, rtol=1e-5)


def test_gates_on_a_shrunk_model_use_original_ids():
    model = tiny_model("bert")
    prune_heads(model, {0: [0, 2], 1: list(range(HEADS))})
    gates = StructureGates(model, neurons=False, init=0.5)
    assert gates.ids["heads"] == {0: [1, 3], 2: [0, 1, 2, 3]}
    assert set(gates.neuron_gates) == set()
    scores = gates.scores()["heads"]
    assert torch.isnan(scores[0][[0, 2]]).all() and torch.equal(scores[0][[1, 3]], t(0.5, 0.5))
    gates.remove()


# --- first-order importance ------------------------------------------------------------------------------------------


def test_first_order_scores_are_gate_gradients():
    model = tiny_model("bert").double()
    batch = {**inputs(), "labels": torch.tensor([0, 1, 1])}
    scores = first_order_scores(model, [batch], normalize_layers=False)

    def loss_with_gate(kind, layer, index, value):
        with attach_gates(model) as gates, torch.no_grad():
            gates_of_kind = gates.head_gates if kind == "heads" else gates.neuron_gates
            gates_of_kind[str(layer)][index] = value
            return model(**batch).loss.item()

    eps = 2.0**-12  # exact in the float32 gates
    for kind, layer, index in [("heads", 0, 1), ("heads", 2, 3), ("neurons", 1, 7), ("neurons", 2, 30)]:
        numeric = (loss_with_gate(kind, layer, index, 1 + eps) - loss_with_gate(kind, layer, index, 1 - eps)) / (
            2 * eps
        )
        assert scores[kind][layer][index].item() == pytest.approx(abs(numeric), rel=1e-4, abs=1e-9)


def test_first_order_scores_accumulate_normalize_and_restore():
    model = tiny_model("distilbert")
    model.train()
    model.classifier.weight.requires_grad_(False)
    batches = [{**inputs(seed=s), "labels": torch.tensor([0, 1, 1])} for s in range(3)]
    scores = first_order_scores(model, batches, neurons=False, max_batches=2)
    assert scores["neurons"] == {}
    for values in scores["heads"].values():
        assert values.norm().item() == pytest.approx(1.0)
    assert model.training and not model.classifier.weight.requires_grad
    assert model.classifier.bias.requires_grad and all(not m._forward_pre_hooks for m in model.modules())
    one = first_order_scores(model, batches[:1], neurons=False, normalize_layers=False)
    two = first_order_scores(model, batches[:2], neurons=False, normalize_layers=False)
    assert all((two["heads"][k] >= one["heads"][k]).all() for k in one["heads"])
    with pytest.raises(ValueError, match="no loss"):
        first_order_scores(model, [inputs()])


# --- polarization ----------------------------------------------------------------------------------------------------


def test_polarization_value():
    gates = t(0.0, 1.0, 0.5, 0.5)  # ‖γ‖₁ = 2, mean 0.5, ‖γ − mean‖₁ = 1
    assert polarization_regularizer(gates, t=1.2).item() == pytest.approx(2 * 1.2 - 1)
    assert polarization_regularizer([t(0.0, 1.0), t(0.5, 0.5)], t=1.0).item() == pytest.approx(1.0)
    uniform = torch.full((10,), 0.3)
    assert polarization_regularizer(uniform, t=2.0).item() == pytest.approx(2.0 * 3.0)  # pure L1 when no spread


def test_polarization_gradient():
    gamma = t(0.1, 0.9, 0.2, 0.7, 0.65).requires_grad_()
    polarization_regularizer(gamma, t=1.5).backward()
    mean = gamma.detach().mean()
    signs = torch.sign(gamma.detach() - mean)
    expected = 1.5 * torch.sign(gamma.detach()) - signs + signs.mean()
    torch.testing.assert_close(gamma.grad, expected)
    double = torch.tensor([0.1, 0.9, 0.2, 0.7, 0.65], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g: polarization_regularizer(g, t=1.5).double(), (double,))


def test_polarization_alone_polarizes():
    # Without a task loss, gates above the mean rise while fewer than (2 - t) / 2 of them are above it (t = 0.8: 60%).
    torch.manual_seed(0)
    gamma = torch.rand(40).requires_grad_()
    optimizer = torch.optim.SGD([gamma], lr=0.01)
    for _ in range(300):
        optimizer.zero_grad()
        polarization_regularizer(gamma, t=0.8).backward()
        optimizer.step()
        with torch.no_grad():
            gamma.clamp_(0, 1)
    assert ((gamma < 1e-6) | (gamma > 1 - 1e-6)).all()
    assert 0 < (gamma > 0.5).sum() < 40


def test_training_with_polarized_gates_ends_bimodal():
    model = tiny_model("bert")
    model.train()
    batch = inputs(batch=16, length=8, seed=3)
    labels = batch["input_ids"][:, 1] % 2
    gates = attach_gates(model)
    optimizer = torch.optim.Adam(
        [{"params": model.parameters(), "lr": 1e-3}, {"params": gates.parameters(), "lr": 0.05}]
    )
    for _ in range(60):
        loss = model(**batch, labels=labels).loss + 0.05 * gates.polarization(t=1.2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        gates.clamp_()
    values = torch.cat([g.detach() for g in gates.gate_tensors()])
    assert ((values < 0.05) | (values > 0.95)).float().mean() >= 0.9
    assert (values > 0.95).any() and (values < 0.05).any()
    scores = gate_scores(gates)
    heads = select_below(scores["heads"], 0.5)
    neurons = select_below(scores["neurons"], 0.5)
    gates.remove()
    assert heads and neurons
    compact(model, heads=heads, neurons=neurons)  # the survivors are what training kept


# --- selection -------------------------------------------------------------------------------------------------------


SCORES = {0: t(0.5, nan, 0.1, 0.9), 1: t(0.2, 0.3, 0.05, 0.8), 2: t(nan, nan, 0.01, nan)}


def test_select_global():
    assert select_structures(SCORES, 3) == {0: [2], 1: [0, 2]}  # 0.05, 0.1, 0.2 (layer 2's last head is kept)
    assert select_structures(SCORES, 0.5) == {0: [2], 1: [0, 1, 2]}  # 4 of the 8 remaining
    assert select_structures(SCORES, 3, min_remaining=0) == {0: [2], 1: [2], 2: [2]}
    assert select_structures(SCORES, 0) == {} and select_structures(SCORES, 0.0) == {}


def test_select_per_layer():
    # Per layer: round(0.5 * 3) = 2, round(0.5 * 4) = 2, round(0.5 * 1) = 0 (Python's round, half to even).
    assert select_structures(SCORES, 0.5, scope="layer") == {0: [0, 2], 1: [0, 2]}
    assert select_structures(SCORES, 1, scope="layer") == {0: [2], 1: [2]}
    assert select_structures(SCORES, 1, scope="layer", min_remaining=0) == {0: [2], 1: [2], 2: [2]}


def test_select_caps_and_errors():
    assert select_structures(SCORES, 1.0) == {0: [0, 2], 1: [0, 1, 2]}  # every layer keeps one
    with pytest.raises(ValueError, match="amount"):
        select_structures(SCORES, 1.5)
    with pytest.raises(ValueError, match="8 remaining"):
        select_structures(SCORES, 10)
    with pytest.raises(ValueError, match="scope"):
        select_structures(SCORES, 1, scope="model")
    with pytest.raises(ValueError, match="min_remaining"):
        select_structures(SCORES, 1, min_remaining=-1)


def test_select_ties_are_deterministic():
    scores = {0: torch.ones(4), 1: torch.ones(4)}
    assert select_structures(scores, 3) == {0: [0, 1, 2]}


def test_select_below():
    assert select_below(SCORES, 0.25) == {0: [2], 1: [0, 2]}
    assert select_below({0: t(0.0, 0.01, 0.02)}, 0.5) == {0: [0, 1]}
    assert select_below({0: t(0.0, 0.01, 0.02)}, 0.5, min_remaining=0) == {0: [0, 1, 2]}


def test_select_then_compact_end_to_end():
    model = tiny_model("roberta")
    scores = score_structures(model, "magnitude")
    heads = select_structures(scores["heads"], 0.5, scope="layer")
    neurons = select_structures(scores["neurons"], 0.25)
    compact(model, heads=heads, neurons=neurons)
    assert [len(v) for v in heads.values()] == [2] * LAYERS
    assert sum(map(len, neurons.values())) == round(0.25 * LAYERS * NEURONS)
    again = magnitude_scores(model)
    assert sum(int(torch.isnan(v).sum()) for v in again["heads"].values()) == 2 * LAYERS
    with pytest.raises(ValueError, match="Unknown structure scoring method"):
        score_structures(model, "taylor")


def test_random_scores_are_reproducible():
    model = tiny_model("electra")
    one = random_scores(model, generator=torch.Generator().manual_seed(0))
    two = random_scores(model, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(one["neurons"][k], two["neurons"][k]) for k in one["neurons"])


# --- FLOPs -----------------------------------------------------------------------------------------------------------


def test_encoder_matmul_flops():
    model = tiny_model("bert")
    batch, length = 2, 5
    tokens = batch * length
    per_block = 2 * tokens * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * NEURONS) + 4 * batch * length * length * HIDDEN
    assert encoder_matmul_flops(model, length, batch) == LAYERS * per_block
    prune_heads(model, {0: [0, 1]})
    prune_neurons(model, {1: list(range(10))})
    saved = 2 * tokens * 4 * HIDDEN * (2 * HEAD_SIZE) + 4 * batch * length * length * 2 * HEAD_SIZE
    saved += 2 * tokens * 2 * HIDDEN * 10
    assert encoder_matmul_flops(model, length, batch) == LAYERS * per_block - saved
