"""Stripe-wise convolutions (Meng et al., NeurIPS 2020, "Pruning Filter in Filter"): a conv that keeps only some
stripes, run as fewer dense operations.

A stripe is one filter's 1x1 slice at one kernel position, `weight[o, :, i, j]`. [`StripeConv2d`] stores only the kept
stripes, as a `weight` of shape `(kept stripes, in_channels)` ordered by kernel position then filter, and runs one
1x1 convolution per kernel position over the filters that keep it, summing the shifted results: the same output as
the full conv with the pruned stripes zeroed. [`stripe_conv_im2col`] is the other inference form (an im2col that
unfolds only the kernel positions some filter keeps); `bench/conv_study.py` measures which is faster.

The model config records what each conv lost in `config.pruned_stripes` (`{conv path: sorted list}`, flat indices
`o * kh * kw + i * kw + j` in the original numbering, paths relative to the base model).

This module depends only on torch and transformers: its source is also copied into the self-contained modeling
file written beside stripe-pruned checkpoints (see `remote.py`), so keep it that way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

PRUNED_STRIPES_ATTR = "pruned_stripes"


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def check_stripe_conv(conv: nn.Conv2d, where: str = "conv") -> None:
    """Raise `ValueError` unless `conv` is a conv stripes can be taken from (groups=1, zero padding given as ints)."""
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"{where}: stripe pruning needs groups=1 and numeric zero padding.")


class StripeConv2d(nn.Module):
    """
    A `Conv2d` that keeps only some stripes, computed as one 1x1 convolution per kernel position.

    Args:
        in_channels, out_channels (`int`): as for `nn.Conv2d`.
        kernel_size, stride, padding, dilation (`int` or `tuple[int, int]`): as for `nn.Conv2d` (zero padding).
        kept (`Iterable[int]`): flat indices `o * kh * kw + i * kw + j` of the stripes kept.
        bias (`bool`, *optional*, defaults to `False`): whether the conv has a bias (one per output channel).

    Attributes:
        form (`str`): how `forward` computes: `"per_position"` (one 1x1 conv per kernel position, the default),
            `"im2col"` (one matrix product over the unfolded kernel positions in use) or `"dense"` (the kept stripes
            scattered back into a full kernel, one `conv2d`: no fewer operations, but the speed of the dense conv
            where the other forms lose to it — small convs, large batches; see `bench/RESULTS_conv.md`). All give
            the same output.
    """

    form = "per_position"
    FORMS = ("per_position", "im2col", "dense")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        kept: Iterable[int] = (),
        bias: bool = False,
    ):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        kh, kw = self.kernel_size
        flat = sorted(set(int(i) for i in kept))
        if any(not 0 <= i < self.out_channels * kh * kw for i in flat):
            raise ValueError("StripeConv2d: a kept stripe index is out of range.")
        # Rows ordered by kernel position, then filter: each position's filters are one contiguous slice.
        order = sorted(flat, key=lambda i: (i % (kh * kw), i // (kh * kw)))
        self.kept_stripes = order
        self.positions: list[tuple[int, int, int, int]] = []  # (i, j, first row, last row + 1)
        self.position_filters: list[list[int]] = []
        start = 0
        for p in range(kh * kw):
            rows = [i // (kh * kw) for i in order if i % (kh * kw) == p]
            if rows:
                self.positions.append((p // kw, p % kw, start, start + len(rows)))
                self.position_filters.append(rows)
                start += len(rows)
        # Index tensors are built on first use on the input's device (not buffers: `from_pretrained` builds
        # modules on the meta device, and these are not stored in checkpoints).
        self._filter_index: dict[torch.device, list[torch.Tensor]] = {}
        self.weight = nn.Parameter(torch.zeros(len(order), self.in_channels))
        self.bias = nn.Parameter(torch.zeros(self.out_channels)) if bias else None

    @classmethod
    @torch.no_grad()
    def from_conv(cls, conv: nn.Conv2d, kept: torch.Tensor) -> StripeConv2d:
        """
        The stripe form of `conv` keeping the stripes where `kept` (bool, shape `(out, kh, kw)`) is True.

        The output equals `conv` with the other stripes zeroed.
        """
        check_stripe_conv(conv)
        flat = kept.reshape(-1).nonzero().flatten().tolist()
        module = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            kept=flat,
            bias=conv.bias is not None,
        )
        kh, kw = module.kernel_size
        rows = torch.tensor(module.kept_stripes, dtype=torch.long)
        dense = conv.weight.detach().permute(0, 2, 3, 1).reshape(-1, conv.in_channels)  # (out*kh*kw, in)
        module.weight = nn.Parameter(
            dense[rows].clone().to(conv.weight.dtype), requires_grad=conv.weight.requires_grad
        )
        module.to(conv.weight.device)
        if conv.bias is not None:
            module.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=conv.bias.requires_grad)
        return module

    def dense_weight(self) -> torch.Tensor:
        """The equivalent full `Conv2d` kernel, `(out, in, kh, kw)`, zeros at the pruned stripes."""
        kh, kw = self.kernel_size
        dense = self.weight.new_zeros(self.out_channels * kh * kw, self.in_channels)
        dense[torch.tensor(self.kept_stripes, dtype=torch.long, device=dense.device)] = self.weight
        return dense.view(self.out_channels, kh, kw, self.in_channels).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "im2col":
            return self._forward_im2col(x)
        if self.form == "dense":
            return F.conv2d(x, self.dense_weight(), self.bias, self.stride, self.padding, self.dilation)
        if self.form != "per_position":
            raise ValueError(f"StripeConv2d.form must be one of {self.FORMS}, got {self.form!r}.")
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        kh, kw = self.kernel_size
        n, _, h, w = x.shape
        h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        w_out = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        padded = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
        out = x.new_zeros(n, self.out_channels, h_out, w_out)
        if x.device not in self._filter_index:
            self._filter_index[x.device] = [
                torch.tensor(f, dtype=torch.long, device=x.device) for f in self.position_filters
            ]
        filters = self._filter_index[x.device]
        for index, (i, j, first, last) in enumerate(self.positions):
            shifted = padded[
                :, :, i * dh : i * dh + sh * (h_out - 1) + 1 : sh, j * dw : j * dw + sw * (w_out - 1) + 1 : sw
            ]
            rows = self.weight[first:last]
            out.index_add_(1, filters[index], F.conv2d(shifted, rows[:, :, None, None]))
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out

    def _forward_im2col(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        used = torch.tensor([i * kw + j for i, j, _, _ in self.positions], dtype=torch.long, device=x.device)
        n, c, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        cols = cols.view(n, c, kh * kw, -1)[:, :, used].reshape(n, c * len(used), -1)
        weight = self.dense_weight().reshape(self.out_channels, c, kh * kw)[:, :, used].reshape(self.out_channels, -1)
        h_out = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        out = (weight @ cols).view(n, self.out_channels, h_out, -1)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        kh, kw = self.kernel_size
        total = self.out_channels * kh * kw
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, stripes={len(self.kept_stripes)}/{total}"
        )


def stripe_conv_im2col(x: torch.Tensor, conv: nn.Conv2d, kept: torch.Tensor) -> torch.Tensor:
    """
    `conv(x)` with the stripes outside `kept` (bool, `(out, kh, kw)`) zeroed, computed by an im2col that unfolds
    only the kernel positions some filter keeps (one matrix product over those columns).
    """
    check_stripe_conv(conv)
    padding = _pair(conv.padding)  # numeric: check_stripe_conv refuses padding given as a string
    kh, kw = conv.kernel_size
    used = kept.reshape(kept.shape[0], -1).any(dim=0).nonzero().flatten()
    n, c, h, w = x.shape
    cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=padding, stride=conv.stride)
    cols = cols.view(n, c, kh * kw, -1)[:, :, used].reshape(n, c * len(used), -1)
    weight = (conv.weight * kept[:, None].to(conv.weight.dtype)).reshape(conv.out_channels, c, kh * kw)
    out = weight[:, :, used].reshape(conv.out_channels, -1) @ cols
    h_out = (h + 2 * padding[0] - conv.dilation[0] * (kh - 1) - 1) // conv.stride[0] + 1
    out = out.view(n, conv.out_channels, h_out, -1)
    return out if conv.bias is None else out + conv.bias.view(1, -1, 1, 1)


def kept_rows(stripe: StripeConv2d) -> torch.Tensor:
    """The rows of the `(out * kh * kw, in)` view of the full kernel that `stripe.weight` holds, in its order."""
    return torch.tensor(stripe.kept_stripes, dtype=torch.long)


def normalize_stripe_structure(value: Any, totals: Mapping[str, int]) -> dict[str, list[int]]:
    """
    Check a `pruned_stripes` value read from a config (untrusted input) and return it as `{path: sorted list}`.

    Args:
        value: the config field (`None` or a mapping from conv path to flat stripe indices).
        totals (`Mapping[str, int]`): stripes per conv (`out * kh * kw`), by path, of the convs that may lose stripes.

    Raises:
        `ValueError`: naming the field and the first bad entry.
    """
    field = PRUNED_STRIPES_ATTR
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"`{field}` must map conv paths to lists of stripe indices, got {type(value).__name__}.")
    result: dict[str, list[int]] = {}
    for path, ids in value.items():
        if path not in totals:
            raise ValueError(f"`{field}` names {path!r}, which is not a stripe-prunable conv of this model.")
        if not isinstance(ids, (list, tuple)):
            raise ValueError(f"`{field}`: the entry of {path!r} must be a list of stripe indices.")
        seen: set[int] = set()
        for index in ids:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < totals[path]:
                raise ValueError(f"`{field}`: {path!r} lists {index!r}, not an index in 0..{totals[path] - 1}.")
            if index in seen:
                raise ValueError(f"`{field}`: {path!r} lists index {index} twice.")
            seen.add(index)
        if seen:
            result[path] = sorted(seen)
    return result


def stripe_convs(model: nn.Module) -> dict[str, nn.Conv2d | StripeConv2d]:
    """`{path: module}` of the convs stripes can be taken from (plain `Conv2d` with groups=1, or already
    [`StripeConv2d`]), paths relative to the base model."""
    base = getattr(model, "base_model", model)
    found: dict[str, nn.Conv2d | StripeConv2d] = {}
    for name, module in base.named_modules():
        if isinstance(module, StripeConv2d) or (
            isinstance(module, nn.Conv2d)
            and module.groups == 1
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        ):
            found[name] = module
    return found


def apply_stripe_structure_(model: nn.Module, structure: Mapping[str, Iterable[int]]) -> None:
    """Replace each conv named in `structure` by its [`StripeConv2d`] without the given stripes (weights are then
    loaded into the stripe form). A conv that already has this form is left alone."""
    base = getattr(model, "base_model", model)
    convs = stripe_convs(model)
    for path, removed in structure.items():
        module = convs[path]
        kh, kw = _pair(module.kernel_size)
        drop = set(removed)
        kept = [i for i in range(module.out_channels * kh * kw) if i not in drop]
        if isinstance(module, StripeConv2d):
            if sorted(module.kept_stripes) != kept:
                raise ValueError(f"{path} already has another stripe structure.")
            continue
        check_stripe_conv(module, path)
        stripe = StripeConv2d(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            kept=kept,
            bias=module.bias is not None,
        ).to(device=module.weight.device, dtype=module.weight.dtype)
        with torch.no_grad():
            if module.weight.device.type != "meta":  # a model built for loading gets its weights from the checkpoint
                stripe.weight.copy_(
                    module.weight.permute(0, 2, 3, 1).reshape(-1, module.in_channels)[kept_rows(stripe)]
                )
                if module.bias is not None:
                    assert stripe.bias is not None  # built with bias=True above
                    stripe.bias.copy_(module.bias)
        parent_path, _, attr = path.rpartition(".")
        setattr(base.get_submodule(parent_path) if parent_path else base, attr, stripe)


def apply_config_stripes_(model: nn.Module) -> bool:
    """
    Turn the convs listed in `model.config.pruned_stripes` into [`StripeConv2d`] (before weights are loaded).

    Returns:
        `bool`: whether the config records a stripe structure that was applied.
    """
    config = getattr(model, "config", None)
    value = getattr(config, PRUNED_STRIPES_ATTR, None) if config is not None else None
    if config is None or not value:
        return False
    convs = stripe_convs(model)
    if not convs:
        return False
    totals: dict[str, int] = {}
    for path, module in convs.items():
        kh, kw = _pair(module.kernel_size)
        totals[path] = module.out_channels * kh * kw
    structure = normalize_stripe_structure(value, totals)
    apply_stripe_structure_(model, structure)
    config.pruned_stripes = structure
    return True
