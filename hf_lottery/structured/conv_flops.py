"""Multiply-accumulates of conv nets, counted from one forward pass: the FLOP-ideal cost of masked, channel-shrunk
and stripe-wise models alike."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .stripes import StripeConv2d


@torch.no_grad()
def conv_macs(
    model: nn.Module, pixel_values: torch.Tensor, mask: Mapping[str, torch.Tensor] | None = None
) -> dict[str, int]:
    """
    Multiply-accumulates per sample of every `Conv2d`, [`StripeConv2d`] and `Linear` of `model` on `pixel_values`.

    A conv costs `kept weights x output positions`: with `mask`, only the kept weights of the masked kernels count
    (the ideal cost of a sparse kernel), a [`StripeConv2d`] counts its kept stripes, a shrunk conv its own shape.

    Args:
        model (`nn.Module`): the model.
        pixel_values (`torch.Tensor`): one batch of inputs (its first dimension is divided out).
        mask (`Mapping[str, torch.Tensor]`, *optional*): `{parameter name: bool}` of a masked model.

    Returns:
        `dict[str, int]`: `{"conv": n, "linear": n, "total": n}`.
    """
    kept: dict[nn.Module, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            key = f"{name}.weight"
            kept[module] = int(mask[key].sum()) if mask is not None and key in mask else module.weight.numel()
        elif isinstance(module, StripeConv2d):
            kept[module] = module.weight.numel()
    totals = {"conv": 0, "linear": 0}
    batch = pixel_values.shape[0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Linear):
            totals["linear"] += kept[module] * (output.numel() // output.shape[-1]) // batch
        else:
            totals["conv"] += kept[module] * output.shape[-2] * output.shape[-1]

    handles = [module.register_forward_hook(hook) for module in kept]
    try:
        model(pixel_values=pixel_values)
    finally:
        for handle in handles:
            handle.remove()
    return {**totals, "total": totals["conv"] + totals["linear"]}
