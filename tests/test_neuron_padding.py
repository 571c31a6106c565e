"""Padding pruned feed-forward widths with zero neurons: same outputs, widths a multiple, records and files follow."""

from __future__ import annotations

import pytest
import torch
from structured_helpers import FAMILIES, NEURONS, inputs, logits, tiny_model
from transformers import AutoModelForSequenceClassification

from hf_lottery import pad_neurons, prune_neurons, pruned_structure
from hf_lottery.structured import get_layout
from hf_lottery.structured.shrink import get_blocks, layout_linear
from hf_lottery.testing_utils import tiny_causal_lm

torch.set_num_threads(1)

# 37 neurons per layer: layer 0 keeps 27 (pads to 32), layer 1 keeps 33 (would pad to 48, capped at 37), layer 2
# keeps none (stays empty).
REMOVED = {0: list(range(3, 37, 3))[:10], 1: [0, 7, 30, 36], 2: list(range(NEURONS))}


def widths(model) -> list[int]:
    layout = get_layout(model.config)
    return [layout_linear(block, layout.intermediate).out_features for block in get_blocks(model, layout)]


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_keeps_the_outputs_and_rounds_the_widths(family):
    model = tiny_model(family)
    prune_neurons(model, REMOVED)
    want = logits(model, inputs())
    added = pad_neurons(model, 16)
    assert widths(model) == [32, NEURONS, 0]
    assert added == {0: 5, 1: 4}
    torch.testing.assert_close(logits(model, inputs()), want, atol=1e-6, rtol=1e-5)
    # The lowest removed indices come back, and the config's record is the blocks' record.
    assert pruned_structure(model)["neurons"] == {0: REMOVED[0][5:], 2: REMOVED[2]}
    assert model.config.pruned_neurons == pruned_structure(model)["neurons"]
    layout = get_layout(model.config)
    output = layout_linear(get_blocks(model, layout)[0], layout.output).weight
    kept = [n for n in range(NEURONS) if n not in REMOVED[0][5:]]
    restored = [kept.index(n) for n in REMOVED[0][:5]]
    assert torch.count_nonzero(output[:, restored]) == 0


def test_padding_round_trips_through_save_and_load(tmp_path):
    model = tiny_model("bert")
    prune_neurons(model, REMOVED)
    pad_neurons(model, 8)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert widths(loaded) == widths(model) == [32, NEURONS, 0]
    assert torch.equal(logits(loaded, inputs()), logits(model, inputs()))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_padding_decoders_gate_up_and_down_together(family):
    model = tiny_causal_lm(family, seed=1).eval()
    prune_neurons(model, {0: [1, 2, 3], 1: list(range(40))})  # 48 neurons per layer: 45 and 8 left
    ids = torch.randint(1, 64, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(ids).logits
    assert pad_neurons(model, 16) == {0: 3, 1: 8}
    mlp = model.model.layers[0].mlp
    assert mlp.gate_proj.out_features == mlp.up_proj.out_features == mlp.down_proj.in_features == 48
    assert model.model.layers[1].mlp.down_proj.in_features == 16
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, want, atol=1e-5, rtol=1e-5)


def test_restored_neurons_stay_zero_under_training():
    model = tiny_model("bert").train()
    prune_neurons(model, REMOVED)
    pad_neurons(model, 16)
    block = model.bert.encoder.layer[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    for _ in range(3):
        model(**inputs(), labels=torch.tensor([0, 1, 0])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    kept = [n for n in range(NEURONS) if n not in REMOVED[0][5:]]
    restored = [kept.index(n) for n in REMOVED[0][:5]]
    assert torch.count_nonzero(block.output.dense.weight[:, restored]) == 0
    assert torch.count_nonzero(block.intermediate.dense.weight[restored]) == 0
    assert torch.count_nonzero(block.output.dense.weight) > 0  # the rest did train


def test_nothing_to_pad_and_bad_quantum():
    model = tiny_model("bert")
    assert pad_neurons(model, 16) == {}  # unpruned widths are never grown past the original
    prune_neurons(model, {0: list(range(5))})  # 32 left: already a multiple of 16
    assert pad_neurons(model, 16) == {}
    assert widths(model) == [32, NEURONS, NEURONS]
    for bad in (0, -16, 1.5, True, "16"):
        with pytest.raises(ValueError, match="multiple_of"):
            pad_neurons(model, bad)
    assert widths(model) == [32, NEURONS, NEURONS]
