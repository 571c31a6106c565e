"""Removing heads and neurons: same logits as zeroing them, composing calls, parameter counts, clear errors."""

import pytest
import torch
from structured_helpers import (
    FAMILIES,
    HEAD_SIZE,
    HEADS,
    HIDDEN,
    LAYERS,
    NEURONS,
    inputs,
    logits,
    n_params,
    tiny_model,
    zeroed,
)

from hf_lottery.structured import compact, get_layout, prune_heads, prune_neurons, pruned_structure, structure_counts
from hf_lottery.structured.shrink import get_blocks

torch.set_num_threads(1)

HEAD_CASE = {0: [1, 2], 2: [3]}
NEURON_CASE = {1: [0, 5, 36], 2: list(range(10))}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("what", ["heads", "neurons", "both"])
def test_removal_matches_zeroing(family, what):
    model = tiny_model(family)
    heads = HEAD_CASE if what in ("heads", "both") else {}
    neurons = NEURON_CASE if what in ("neurons", "both") else {}
    ref = zeroed(model, heads, neurons)
    before = n_params(model)
    if heads:
        prune_heads(model, heads)
    if neurons:
        prune_neurons(model, neurons)
    batch = inputs()
    torch.testing.assert_close(logits(model, batch), logits(ref, batch), atol=1e-5, rtol=1e-5)
    removed_heads = sum(map(len, heads.values()))
    removed_neurons = sum(map(len, neurons.values()))
    # A head: its rows of Q, K, V (weights and biases) and its columns of the output projection.
    # A neuron: its row and bias of the intermediate Linear and its column of the output Linear.
    expected = removed_heads * HEAD_SIZE * (4 * HIDDEN + 3) + removed_neurons * (2 * HIDDEN + 1)
    assert before - n_params(model) == expected
    assert pruned_structure(model) == {"heads": heads, "neurons": neurons}
    assert (model.config.pruned_heads if heads else None) == (heads or None)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_attention_implementations_run_with_per_layer_heads(attn_implementation):
    model = tiny_model("bert", attn_implementation=attn_implementation)
    ref = zeroed(model, {0: [0], 1: [1, 2, 3]})
    prune_heads(model, {0: [0], 1: [1, 2, 3]})
    attention = model.bert.encoder.layer[1].attention.self
    assert attention.num_attention_heads == 1 and attention.all_head_size == HEAD_SIZE
    batch = inputs()
    torch.testing.assert_close(logits(model, batch), logits(ref, batch), atol=1e-5, rtol=1e-5)
    if attn_implementation == "eager":
        attentions = model(**batch, output_attentions=True).attentions
        assert [a.shape[1] for a in attentions] == [3, 1, 4]


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_repeated_calls_use_original_numbering(family):
    once, twice = tiny_model(family), tiny_model(family)
    ref = zeroed(once, {0: [1, 2, 3]}, {1: [4, 7, 8]})
    prune_heads(once, {0: [1, 2, 3]})
    prune_neurons(once, {1: [4, 7, 8]})
    prune_heads(twice, {0: [3]})
    prune_heads(twice, {0: [1]})  # original head 1, not the second remaining one
    prune_heads(twice, {0: [2]})
    prune_neurons(twice, {1: [8]})
    prune_neurons(twice, {1: [7, 4]})
    batch = inputs()
    torch.testing.assert_close(logits(twice, batch), logits(once, batch), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(twice, batch), logits(ref, batch), atol=1e-5, rtol=1e-5)
    assert twice.config.pruned_heads == {0: [1, 2, 3]}
    assert twice.config.pruned_neurons == {1: [4, 7, 8]}
    layout = get_layout(twice.config)
    block = get_blocks(twice, layout)[0]
    assert block.get_submodule(layout.query).out_features == HEAD_SIZE
    assert getattr(block.get_submodule(layout.attention), layout.head_count_attrs[0]) == 1


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_removing_every_head_leaves_the_output_bias(family):
    model = tiny_model(family)
    ref = zeroed(model, {1: list(range(HEADS))})
    prune_heads(model, {1: [0, 1]})
    prune_heads(model, {1: [2, 3]})
    layout = get_layout(model.config)
    block = get_blocks(model, layout)[1]
    assert block.get_submodule(layout.query).out_features == 0
    batch = inputs()
    torch.testing.assert_close(logits(model, batch), logits(ref, batch), atol=1e-5, rtol=1e-5)
    # Training still works through an empty layer.
    model.train()
    out = model(**batch, labels=torch.tensor([0, 1, 0]))
    out.loss.backward()


def test_removing_every_neuron_leaves_the_output_bias():
    model = tiny_model("bert")
    ref = zeroed(model, neurons={2: list(range(NEURONS))})
    prune_neurons(model, {2: range(NEURONS)})
    batch = inputs()
    torch.testing.assert_close(logits(model, batch), logits(ref, batch), atol=1e-5, rtol=1e-5)


def test_all_layers_are_independent():
    model = tiny_model("bert")
    prune_heads(model, {layer: [layer] for layer in range(LAYERS)})
    sizes = [layer.attention.self.query.out_features for layer in model.bert.encoder.layer]
    assert sizes == [(HEADS - 1) * HEAD_SIZE] * LAYERS


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({0: [4]}, r"layer 0, head 4 is not a valid index; valid heads are 0\.\.3"),
        ({0: [-1]}, r"layer 0, head -1 is not a valid index; valid heads are 0\.\.3"),
        ({1: [2, 2]}, r"layer 1, head 2 is listed twice"),
        ({0: [1.0]}, r"layer 0, head 1\.0 is not a valid index"),
        ({0: ["1"]}, r"layer 0, head '1' is not a valid index"),
        ({0: [True]}, r"layer 0, head True is not a valid index"),
        ({0: 1}, r"layer 0 must map to a list"),
        ({3: [0]}, r"layer 3 is not a valid layer index \(valid layers: 0\.\.2\)"),
        ({-1: [0]}, r"layer -1 is not a valid layer index"),
        ({"0": [0]}, r"layer '0' is not a valid layer index"),
        ([0, 1], r"expects a mapping"),
    ],
)
def test_bad_head_indices_raise_and_change_nothing(request_, message):
    model = tiny_model("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        prune_heads(model, {2: [0], **request_} if isinstance(request_, dict) else request_)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert getattr(model.config, "pruned_heads", None) is None


def test_already_removed_head_and_neuron_raise():
    model = tiny_model("distilbert")
    prune_heads(model, {0: [1]})
    prune_neurons(model, {2: [5]})
    with pytest.raises(
        ValueError, match=r"layer 0, head 1 was already removed.*remaining heads of this layer are \[0, 2, 3\]"
    ):
        prune_heads(model, {0: [1]})
    with pytest.raises(ValueError, match=r"layer 2, neuron 5 was already removed"):
        prune_neurons(model, {2: [5]})
    with pytest.raises(ValueError, match=r"layer 1, neuron 37 is not a valid index; valid neurons are 0\.\.36"):
        prune_neurons(model, {1: [37]})


def test_unsupported_family_is_a_clear_error():
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=10, n_positions=8))
    with pytest.raises(ValueError, match="does not support model type 'gpt2'"):
        prune_heads(model, {0: [0]})


def test_training_after_surgery_updates_shrunk_weights():
    model = tiny_model("bert")
    prune_heads(model, HEAD_CASE)
    prune_neurons(model, NEURON_CASE)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    query = model.bert.encoder.layer[0].attention.self.query.weight
    before = query.detach().clone()
    model(**inputs(), labels=torch.tensor([0, 1, 1])).loss.backward()
    optimizer.step()
    assert query.shape == (2 * HEAD_SIZE, HIDDEN) and not torch.equal(before, query)


def test_empty_layer_survives_deepcopy_and_pickle():
    import copy
    import io

    model = tiny_model("distilbert")
    prune_heads(model, {0: list(range(HEADS))})
    batch = inputs()
    expected = logits(model, batch)
    clone = copy.deepcopy(model)
    assert (
        clone.distilbert.transformer.layer[0].attention.forward.attention
        is clone.distilbert.transformer.layer[0].attention
    )
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    for other in (clone, restored):
        torch.testing.assert_close(logits(other, batch), expected, atol=0, rtol=0)


def test_counts_and_replaying_a_structure_on_fresh_weights():
    model = tiny_model("bert")
    prune_heads(model, HEAD_CASE)
    prune_neurons(model, NEURON_CASE)
    assert structure_counts(model) == {
        "heads": {"remaining": LAYERS * HEADS - 3, "total": LAYERS * HEADS},
        "neurons": {"remaining": LAYERS * NEURONS - 13, "total": LAYERS * NEURONS},
    }
    # Rewinding: the same structure applied to other weights (e.g. the pre-trained ones) gives the same shapes.
    fresh = compact(tiny_model("bert", seed=1), **pruned_structure(model))
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
