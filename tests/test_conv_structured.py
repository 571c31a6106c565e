"""Conv nets, structured: inner-channel removal and stripe-wise convs, equal to the masked model, through
`from_pretrained` (with hf_lottery and, by remote code, without it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForImageClassification

import hf_lottery  # noqa: F401  (installs the loading hooks)
from hf_lottery.constants import STRUCTURED_MODELING_FILE
from hf_lottery.structured.conv_flops import conv_macs
from hf_lottery.structured.conv_imp import (
    channel_mask,
    compact_channels_by_mask,
    conv_structure_counts,
    prune_channels,
    prune_stripes,
    removed_channels,
    stripe_model_by_mask,
)
from hf_lottery.structured.stripes import StripeConv2d, stripe_conv_im2col
from hf_lottery.testing_utils import tiny_conv_model, toy_image_dataset

LAYER_TYPES = ["basic", "bottleneck"]


def pixels(n: int = 4, seed: int = 5) -> torch.Tensor:
    return toy_image_dataset(n, seed=seed)[:]["pixel_values"]


def trained_like(layer_type: str = "basic", seed: int = 0, family: str = "resnet") -> nn.Module:
    """A tiny ResNet (or MobileNetV2) with non-trivial BatchNorm statistics, scales and shifts and classifier weights
    (as after training), in eval mode."""
    model = tiny_conv_model(family, seed=seed, **({"layer_type": layer_type} if family == "resnet" else {}))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.classifier.parameters():
            param.copy_(torch.randn(param.shape, generator=g))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=g))
                module.running_var.copy_(0.5 + torch.rand(n, generator=g))
                module.weight.copy_(torch.rand(n, generator=g))
                module.bias.copy_(torch.randn(n, generator=g))
    return model.eval()


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=x).logits


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_removing_channels_equals_the_zeroed_model(layer_type):
    model = trained_like(layer_type)
    mask = prune_channels(model, 0.5)
    removed = removed_channels(model, mask)
    assert sum(map(len, removed.values())) == round(0.5 * sum(m.num_features for m in _inner_norms(model)))
    compact = compact_channels_by_mask(model, mask)
    assert compact.config.pruned_channels == removed
    mask.apply_(model)
    torch.testing.assert_close(logits(compact, pixels()), logits(model, pixels()), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in compact.parameters()) < sum(p.numel() for p in model.parameters())
    # The residual path keeps its widths: only inner convs shrink.
    for name, param in compact.named_parameters():
        if "shortcut" in name or "embedder" in name or name.startswith("classifier"):
            assert param.shape == dict(model.named_parameters())[name].shape


def _inner_norms(model):
    params = dict(model.named_modules())
    return [params[n.removesuffix(".weight")] for n in channel_mask(model, {}) if n.endswith("normalization.weight")]


def test_mobilenet_v2_channels_pass_through_the_depthwise_convs(tmp_path):
    model = trained_like(family="mobilenet_v2", seed=8)
    mask = prune_channels(model, 0.5)
    compact = compact_channels_by_mask(model, mask)
    block = compact.mobilenet_v2.layer[1]
    kept = 48 - len(compact.config.pruned_channels["layer.1.expand_1x1"])
    assert block.expand_1x1.convolution.out_channels == kept < 48
    assert block.conv_3x3.convolution.groups == block.conv_3x3.convolution.out_channels == kept
    assert block.conv_3x3.normalization.num_features == block.reduce_1x1.convolution.in_channels == kept
    assert block.reduce_1x1.convolution.out_channels == model.mobilenet_v2.layer[1].reduce_1x1.convolution.out_channels
    mask.apply_(model)
    reference = logits(model, pixels())
    torch.testing.assert_close(logits(compact, pixels()), reference, atol=1e-4, rtol=1e-5)
    compact.save_pretrained(tmp_path / "small")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "small").eval()
    torch.testing.assert_close(logits(loaded, pixels()), logits(compact, pixels()))


def test_channel_pruning_picks_the_smallest_scales_and_is_nested():
    model = trained_like(seed=1)
    first = prune_channels(model, 0.25)
    first.apply_(model)
    second = prune_channels(model, 0.5, mask=first)
    assert second.is_subset_of(first)
    params = dict(model.named_parameters())
    gates = {n: params[n] for n in second if n.endswith("normalization.weight")}
    kept = torch.cat([g[second[n]] for n, g in gates.items()])
    gone = torch.cat([g.detach()[~second[n] & first[n]] for n, g in gates.items()])
    assert gone.abs().max() <= kept.abs().min()


def test_channel_guard_keeps_every_unit_alive():
    model = trained_like(seed=2)
    with torch.no_grad():
        model.resnet.encoder.stages[0].layers[0].layer[0].normalization.weight.zero_()  # the weakest unit by far
    mask = prune_channels(model, 0.5, max_tensor_sparsity=0.75)
    removed = removed_channels(model, mask)
    assert len(removed["encoder.stages.0.layers.0.layer.0"]) == 6  # 8 channels, at least 2 kept


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_shrunk_conv_model_round_trips_through_from_pretrained(tmp_path, layer_type):
    model = trained_like(layer_type, seed=3)
    compact = compact_channels_by_mask(model, prune_channels(model, 0.4))
    compact.save_pretrained(tmp_path / "small")
    config = json.loads((tmp_path / "small" / "config.json").read_text())
    assert config["pruned_channels"] and "AutoModelForImageClassification" in config["auto_map"]
    loaded, info = AutoModelForImageClassification.from_pretrained(tmp_path / "small", output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    shapes = {k: v.shape for k, v in loaded.state_dict().items()}
    assert shapes == {k: v.shape for k, v in compact.state_dict().items()}
    torch.testing.assert_close(logits(loaded.eval(), pixels()), logits(compact, pixels()))


@pytest.mark.parametrize(
    "stride,padding,dilation,kernel,bias",
    [(1, 1, 1, 3, False), (2, 1, 1, 3, True), (2, 3, 1, 7, False), (1, 2, 2, 3, True), (2, 0, 1, 1, False)],
)
def test_stripe_conv_forms_equal_the_masked_conv(stride, padding, dilation, kernel, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias)
    kept = torch.rand(7, kernel, kernel) > 0.6
    kept[0, 0, 0] = True
    x = torch.randn(2, 5, 11, 10)
    reference = nn.functional.conv2d(x, conv.weight * kept[:, None], conv.bias, stride, padding, dilation)
    stripe = StripeConv2d.from_conv(conv, kept)
    assert stripe.weight.shape == (int(kept.sum()), 5)
    with torch.no_grad():
        torch.testing.assert_close(stripe(x), reference, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stripe_conv_im2col(x, conv, kept), reference, atol=1e-5, rtol=1e-5)
        stripe.form = "im2col"
        torch.testing.assert_close(stripe(x), reference, atol=1e-5, rtol=1e-5)
        stripe.form = "dense"
        torch.testing.assert_close(stripe(x), reference, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stripe.dense_weight(), conv.weight * kept[:, None], atol=0, rtol=0)
        stripe.form = "winograd"
        with pytest.raises(ValueError, match="form must be one of"):
            stripe(x)


def test_stripe_pruning_removes_the_weakest_stripes_by_weight_count():
    model = trained_like(seed=4)
    mask = prune_stripes(model, 0.6)
    assert mask.sparsity == pytest.approx(0.6, abs=0.02)
    for name, kept in mask.items():  # whole stripes: a stripe is kept or pruned across all input channels
        assert torch.equal(kept.any(dim=1), kept.all(dim=1)), name
    second = prune_stripes(model, 0.7, mask=mask)
    assert second.is_subset_of(mask) and second.sparsity == pytest.approx(0.7, abs=0.02)


def test_stripe_model_equals_the_masked_model_and_round_trips(tmp_path):
    model = trained_like(seed=5)
    mask = prune_stripes(model, 0.6)
    stripe = stripe_model_by_mask(model, mask)
    assert any(isinstance(m, StripeConv2d) for m in stripe.modules())
    assert conv_structure_counts(stripe)["stripes_kept"] < sum(
        p.shape[0] * p.shape[2] * p.shape[3] for n, p in model.named_parameters() if n in mask
    )
    mask.apply_(model)
    torch.testing.assert_close(logits(stripe, pixels()), logits(model, pixels()), atol=1e-5, rtol=1e-5)
    stripe.save_pretrained(tmp_path / "stripes")
    loaded, info = AutoModelForImageClassification.from_pretrained(tmp_path / "stripes", output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    torch.testing.assert_close(logits(loaded.eval(), pixels()), logits(stripe, pixels()))
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "field,value",
    [
        ("pruned_channels", {"encoder.stages.0.layers.0.layer.0": [99]}),
        ("pruned_channels", {"encoder.nowhere": [0]}),
        ("pruned_channels", {"encoder.stages.0.layers.0.layer.0": list(range(8))}),
        ("pruned_stripes", {"encoder.stages.0.layers.0.layer.0.convolution": [0, 0]}),
        ("pruned_stripes", {"encoder.stages.0.layers.0.layer.0.convolution": "0"}),
    ],
)
def test_bad_conv_structure_in_a_config_is_refused(tmp_path, field, value):
    tiny_conv_model().save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    config[field] = value
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=field):
        AutoModelForImageClassification.from_pretrained(tmp_path / "m")


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_lottery"] = None  # hf_lottery must not be importable here
    import torch
    import transformers

    results = {}
    for folder in json.loads(sys.argv[1]):
        model = transformers.AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        ref = torch.load(folder + "/reference.pt")
        with torch.no_grad():
            got = model(pixel_values=ref["pixels"]).logits
        results[folder] = [type(model).__module__, float((got - ref["logits"]).abs().max())]
    print(json.dumps(results))
    """
)


def test_conv_checkpoints_load_without_hf_lottery_through_remote_code(tmp_path):
    model = trained_like(seed=6)
    cases = {
        tmp_path / "channels": compact_channels_by_mask(model, prune_channels(model, 0.5)),
        tmp_path / "stripes": stripe_model_by_mask(model, prune_stripes(model, 0.5)),
    }
    mobilenet = trained_like(family="mobilenet_v2", seed=6)
    cases[tmp_path / "mobilenet"] = compact_channels_by_mask(mobilenet, prune_channels(mobilenet, 0.5))
    x = pixels()
    for folder, shrunk in cases.items():
        shrunk.save_pretrained(folder)
        assert (folder / STRUCTURED_MODELING_FILE).is_file()
        torch.save({"pixels": x, "logits": logits(shrunk, x)}, folder / "reference.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    proc = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, json.dumps([str(f) for f in cases])],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for folder, (module, diff) in results.items():
        assert module.endswith(Path(STRUCTURED_MODELING_FILE).stem)
        assert diff < 1e-5, folder


def test_flop_ideal_of_the_masked_model_is_the_cost_of_the_compact_forms():
    model = trained_like(seed=7)
    x = pixels(2)
    dense = conv_macs(model, x)["total"]
    for mask, compact in (
        (m := prune_channels(model, 0.5), compact_channels_by_mask(model, m)),
        (s := prune_stripes(model, 0.5), stripe_model_by_mask(model, s)),
    ):
        ideal = conv_macs(model, x, mask)["total"]
        assert ideal == conv_macs(compact, x)["total"] < dense
