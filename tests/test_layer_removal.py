"""Whole-layer removal: blocks skipped by the residual stream, a shallower config, records renumbered, plain loading."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from structured_helpers import FAMILIES, inputs, logits, tiny_config
from transformers import AutoModelForSequenceClassification

from hf_lottery.deploy import export_for_cpu, load_for_cpu, measure_speed, unpruned_reference
from hf_lottery.structured import (
    encoder_matmul_flops,
    get_layout,
    prune_heads,
    prune_layers,
    prune_neurons,
    pruned_structure,
    removed_layers,
)
from hf_lottery.structured.shrink import get_blocks
from hf_lottery.testing_utils import tiny_causal_lm


def _deep_model(family: str, layers: int = 5, seed: int = 0):
    config = tiny_config(family)
    setattr(config, get_layout(config).config_num_layers, layers)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.1)
    return model.eval()


def _skipping(model, positions):
    """A copy of `model` whose blocks at `positions` return their input unchanged (forward hooks, no surgery)."""
    reference = copy.deepcopy(model)
    blocks = get_blocks(reference, get_layout(reference.config))

    def identity(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    for p in positions:
        blocks[p].register_forward_hook(identity, with_kwargs=True)
    return reference


@pytest.mark.parametrize("family", FAMILIES)
def test_removed_layers_are_skipped(family):
    model = _deep_model(family)
    reference = _skipping(model, [1, 3])
    prune_layers(model, [3, 1])
    layout = get_layout(model.config)
    assert getattr(model.config, layout.config_num_layers) == 3 and len(get_blocks(model, layout)) == 3
    assert model.config.pruned_layers == [1, 3]
    batch = inputs()
    torch.testing.assert_close(logits(model, batch), logits(reference, batch), rtol=0, atol=1e-6)


def test_repeated_calls_record_original_indices():
    model = _deep_model("bert", layers=6)
    reference = _skipping(model, [0, 2, 5])
    prune_layers(model, [2])  # original 0 1 [2] 3 4 5
    prune_layers(model, [0, 4])  # positions 0 and 4 are originals 0 and 5
    assert removed_layers(model.config) == [0, 2, 5] and model.config.num_hidden_layers == 3
    batch = inputs()
    torch.testing.assert_close(logits(model, batch), logits(reference, batch), rtol=0, atol=1e-6)


def test_head_and_neuron_records_move_with_their_blocks(tmp_path):
    model = _deep_model("bert", layers=4)
    prune_heads(model, {1: [0], 3: [1, 2]})
    prune_neurons(model, {3: [4, 5]})
    reference = _skipping(model, [2])
    prune_layers(model, [2])
    assert pruned_structure(model) == {"heads": {1: [0], 2: [1, 2]}, "neurons": {2: [4, 5]}}
    assert model.config.pruned_heads == {1: [0], 2: [1, 2]}
    batch = inputs()
    expected = logits(reference, batch)
    torch.testing.assert_close(logits(model, batch), expected, rtol=0, atol=1e-6)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.num_hidden_layers == 3 and loaded.config.pruned_layers == [2]
    torch.testing.assert_close(logits(loaded, batch), expected, rtol=0, atol=1e-6)


def test_a_layer_pruned_model_loads_without_hf_lottery(tmp_path):
    model = _deep_model("bert", layers=4)
    prune_layers(model, [0, 3])
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and "auto_map" not in config
    batch = inputs()
    save_file(batch, tmp_path / "batch.safetensors")
    expected = logits(model, batch)
    script = (
        "import sys, torch\n"
        "from safetensors.torch import load_file, save_file\n"
        "from transformers import AutoModelForSequenceClassification\n"
        "model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()\n"
        "assert 'hf_lottery' not in sys.modules\n"
        "with torch.no_grad():\n"
        "    out = model(**load_file(sys.argv[1] + '/batch.safetensors')).logits\n"
        "save_file({'logits': out.contiguous()}, sys.argv[1] + '/out.safetensors')\n"
    )
    env = {**os.environ, "PYTHONPATH": ""}
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, env=env, cwd=tmp_path)
    torch.testing.assert_close(load_file(tmp_path / "out.safetensors")["logits"], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ([5], "not a valid layer position"),
        ([-1], "not a valid layer position"),
        (["1"], "not a valid layer position"),
        ([1, 1], "listed twice"),
        ([0, 1, 2, 3, 4], "leaves no transformer block"),
        ({1: []}, "list of layer positions"),
    ],
)
def test_bad_layer_requests_raise_and_change_nothing(request_, message):
    model = _deep_model("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        prune_layers(model, request_)
    assert model.config.num_hidden_layers == 5 and not getattr(model.config, "pruned_layers", None)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    ("record", "message"),
    [("0,1", "list of layer indices"), ([1, 1], "distinct"), ([-2], "distinct non-negative"), ([9], "names layer 9")],
)
def test_a_bad_pruned_layers_record_is_refused(record, message):
    config = tiny_config("bert")
    config.pruned_layers = record
    with pytest.raises(ValueError, match=message):
        removed_layers(config)


def test_the_speed_reference_has_every_layer_back():
    model = _deep_model("bert", layers=6)
    prune_layers(model, [1, 4])
    reference = unpruned_reference(model)
    assert reference.config.num_hidden_layers == 6 and not reference.config.pruned_layers
    assert encoder_matmul_flops(reference, 16) * 4 == encoder_matmul_flops(model, 16) * 6


def test_a_huge_pruned_layers_record_does_not_build_a_huge_reference():
    model = _deep_model("bert", layers=2)
    model.config.pruned_layers = list(range(2, 5000))
    with pytest.raises(ValueError, match="limited to"):
        unpruned_reference(model)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_decoder_layers_are_renumbered_for_the_cache(family):
    model = tiny_causal_lm(family, seed=1, num_hidden_layers=4).eval()
    ids = torch.randint(1, 64, (2, 7), generator=torch.Generator().manual_seed(3))
    reference = _skipping(model, [0, 2])
    with torch.no_grad():
        expected = reference(ids, use_cache=False).logits
    prune_layers(model, [0, 2])
    assert [block.self_attn.layer_idx for block in model.model.layers] == [0, 1]
    if getattr(model.config, "layer_types", None) is not None:
        assert len(model.config.layer_types) == 2
    with torch.no_grad():
        torch.testing.assert_close(model(ids, use_cache=False).logits, expected, rtol=0, atol=1e-5)
        # Greedy decoding with the KV cache gives the tokens that decoding without it gives.
        cached = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True)
        uncached = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_a_layer_and_head_pruned_export_loads_back_exactly(tmp_path):
    model = _deep_model("bert", layers=4)
    prune_heads(model, {0: [1]})
    prune_layers(model, [3])
    exported = export_for_cpu(model, tmp_path / "cpu", quantize=None)
    loaded = load_for_cpu(tmp_path / "cpu")
    assert loaded.config.num_hidden_layers == 3 and loaded.config.pruned_layers == [3]
    batch = inputs()
    expected = logits(model, batch)
    torch.testing.assert_close(logits(exported, batch), expected, rtol=0, atol=0)
    torch.testing.assert_close(logits(loaded, batch), expected, rtol=0, atol=0)
    reference = unpruned_reference(loaded)  # what `hf-lottery speed PATH` times against by default
    report = measure_speed(loaded, reference, batch_sizes=[1], seq_len=16, threads=[1], repeats=1, warmup=0)
    dense_flops = encoder_matmul_flops(_deep_model("bert", layers=4), 16)
    assert report.figures[0].flop_ideal == pytest.approx(dense_flops / encoder_matmul_flops(loaded, 16))
