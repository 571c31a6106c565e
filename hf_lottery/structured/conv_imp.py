"""Structured IMP on conv nets: inner channels and stripes pruned round by round as groups of a weight mask.

During a lottery run the model keeps full shapes (rewinding, resume and mask enforcement work as for unstructured
tickets). A removed *channel* is the zeroed output filter of an inner unit's conv, the zeroed BatchNorm scale and
shift of that channel (so the channel outputs exactly zero whatever its running statistics), the same in the
depthwise units it passes through, and the zeroed input channel of the next conv. Its gate is the BatchNorm scale
right before that next conv. A removed *stripe* is a zeroed `weight[o, :, i, j]`. At the end, [`compact_channels_by_mask`]
takes the channels out physically and [`stripe_model_by_mask`] turns the convs into [`StripeConv2d`]; both record
the structure in the config, so `from_pretrained` rebuilds them.
"""

from __future__ import annotations

import copy
import math
from typing import cast

import torch
from torch import nn
from transformers import PreTrainedModel

from ..selector import resolve_max_tensor_sparsity
from ..ticket.mask import TicketMask
from ..types import DEFAULT_MAX_TENSOR_SPARSITY
from .channels import PRUNED_CHANNELS_ATTR, channel_units, remove_channels_
from .conv_layouts import get_conv_layout
from .stripes import StripeConv2d, apply_stripe_structure_, stripe_convs


def _prefix(model: nn.Module) -> str:
    base = getattr(model, "base_model", model)
    return f"{model.base_model_prefix}." if base is not model else ""


def _kept_at_least(total: int, max_tensor_sparsity: float | str | None, fraction: float) -> int:
    """Groups a tensor keeps at least under the layer-collapse guard (one at the very least); the guard is read as
    the selector reads it (`"auto"` adapts to the requested fraction, `None` disables it)."""
    cap = resolve_max_tensor_sparsity(max_tensor_sparsity, fraction)
    return max(1, math.ceil(total * (1.0 - (1.0 if cap is None else cap)) - 1e-9))


def _select_lowest(
    candidates: list[tuple[float, str, int, int]], budget: int, room: dict[str, int]
) -> dict[str, list[int]]:
    """Remove the lowest-scoring `(score, tensor, index, cost)` candidates until `budget` cost is removed, never more
    than `room[tensor]` groups of one tensor. Ties are broken by tensor and index, so the choice is deterministic."""
    chosen: dict[str, list[int]] = {}
    removed = 0
    for _score, key, index, cost in sorted(candidates, key=lambda c: (c[0], c[1], c[2])):
        if removed >= budget:
            break
        if room[key] <= 0:
            continue
        room[key] -= 1
        chosen.setdefault(key, []).append(index)
        removed += cost
    return chosen


# -- Channels -------------------------------------------------------------------------------------------------------
def channel_roles(model: PreTrainedModel) -> dict[str, dict[str, str]]:
    """
    `{unit path: {role: parameter name}}` for the inner units. Roles: `conv`, `norm_weight`, `norm_bias` (the
    producing unit), `pass{i}_conv`, `pass{i}_norm_weight`, `pass{i}_norm_bias` (depthwise units passing the
    channels through), `next_conv` (the consumer), and `gate` / `gate_bias`: the BatchNorm scale and shift right
    before the consumer (the producer's own, or the last depthwise unit's).
    """
    layout = get_conv_layout(model.config)
    prefix = _prefix(model)
    base = getattr(model, "base_model", model)
    path_of = {id(module): name for name, module in base.named_modules()}
    roles = {}
    for path, (_, passing, following) in channel_units(model, layout).items():
        unit_roles = {
            "conv": f"{prefix}{path}.{layout.conv}.weight",
            "norm_weight": f"{prefix}{path}.{layout.norm}.weight",
            "norm_bias": f"{prefix}{path}.{layout.norm}.bias",
        }
        for i, unit in enumerate(passing):
            where = f"{prefix}{path_of[id(unit)]}"
            unit_roles[f"pass{i}_conv"] = f"{where}.{layout.conv}.weight"
            unit_roles[f"pass{i}_norm_weight"] = f"{where}.{layout.norm}.weight"
            unit_roles[f"pass{i}_norm_bias"] = f"{where}.{layout.norm}.bias"
        last = f"pass{len(passing) - 1}_" if passing else ""
        unit_roles["gate"] = unit_roles[f"{last}norm_weight"]
        unit_roles["gate_bias"] = unit_roles[f"{last}norm_bias"]
        unit_roles["next_conv"] = f"{prefix}{path_of[id(following)]}.{layout.conv}.weight"
        roles[path] = unit_roles
    return roles


def channel_parameters(model: PreTrainedModel) -> dict[str, nn.Parameter]:
    """The parameters a channel mask covers, `{name: parameter}` (conv kernels, BatchNorm scales and shifts)."""
    params = dict(model.named_parameters())
    names = [name for roles in channel_roles(model).values() for name in roles.values()]
    return {name: params[name] for name in dict.fromkeys(names)}


def channel_gates(model: PreTrainedModel) -> dict[str, nn.Parameter]:
    """`{unit path: BatchNorm scale}`: the gates of the inner channels (what the regularizers act on)."""
    params = dict(model.named_parameters())
    return {path: params[roles["gate"]] for path, roles in channel_roles(model).items()}


def removed_channels(model: PreTrainedModel, mask: TicketMask) -> dict[str, list[int]]:
    """The inner channels whose BatchNorm scale is pruned in `mask`, `{unit path: [ids]}`."""
    removed = {}
    for path, roles in channel_roles(model).items():
        dead = (~mask[roles["gate"]]).nonzero().flatten().tolist()
        if dead:
            removed[path] = dead
    return removed


def channel_mask(model: PreTrainedModel, removed: dict[str, list[int]]) -> TicketMask:
    """The weight mask that removes `removed` inner channels (`{unit path: [ids]}`)."""
    params = channel_parameters(model)
    masks = {name: torch.ones(p.shape, dtype=torch.bool) for name, p in params.items()}
    for path, roles in channel_roles(model).items():
        ids = torch.tensor(removed.get(path, []), dtype=torch.long)
        if len(ids):
            for role, name in roles.items():
                if role == "next_conv":
                    masks[name][:, ids] = False
                else:
                    masks[name][ids] = False
    return TicketMask(masks)


@torch.no_grad()
def prune_channels(
    model: PreTrainedModel,
    fraction: float,
    mask: TicketMask | None = None,
    scope: str = "global",
    max_tensor_sparsity: float | str | None = DEFAULT_MAX_TENSOR_SPARSITY,
) -> TicketMask:
    """
    Remove the inner channels with the smallest |BatchNorm scale| so that `fraction` of them is removed in total.

    Args:
        model (`PreTrainedModel`): full-shape model of a family with a conv layout (pruned channels zeroed).
        fraction (`float`): fraction of the inner channels removed in the result (of each unit with `scope="layer"`).
        mask (`TicketMask`, *optional*): the current channel mask; its channels stay removed.
        scope (`str`): `"global"` ranks channels across units (scales are comparable: every unit is followed by its
            own BatchNorm), `"layer"` within each unit.
        max_tensor_sparsity (`float`, `"auto"` or `None`): no unit loses more than this fraction of its channels (one is always kept).
    """
    removed = removed_channels(model, mask) if mask is not None else {}
    gates = channel_gates(model)
    candidates: dict[str, list[tuple[float, str, int, int]]] = {}
    room = {}
    for path, gate in gates.items():
        gone = set(removed.get(path, ()))
        candidates[path] = [(abs(float(v)), path, i, 1) for i, v in enumerate(gate.tolist()) if i not in gone]
        room[path] = gate.numel() - _kept_at_least(gate.numel(), max_tensor_sparsity, fraction) - len(gone)
    if scope == "layer":
        chosen = {}
        for path, gate in gates.items():
            budget = round(fraction * gate.numel()) - len(removed.get(path, ()))
            chosen.update(_select_lowest(candidates[path], budget, {path: room[path]}))
    else:
        total = sum(g.numel() for g in gates.values())
        budget = round(fraction * total) - sum(len(v) for v in removed.values())
        chosen = _select_lowest([c for cs in candidates.values() for c in cs], budget, room)
    for path, ids in chosen.items():
        removed[path] = sorted(set(removed.get(path, [])) | set(ids))
    result = channel_mask(model, removed)
    return result if mask is None else TicketMask({k: result[k] & mask[k] for k in result})


def compact_channels_by_mask(model: PreTrainedModel, mask: TicketMask) -> PreTrainedModel:
    """A copy of `model` with the inner channels that `mask` removes physically taken out (and recorded in
    `config.pruned_channels`, so that `from_pretrained` rebuilds the shapes)."""
    layout = get_conv_layout(model.config)
    removed = removed_channels(model, mask)
    compact = copy.deepcopy(model)
    for path, (unit, passing, following) in channel_units(compact, layout).items():
        if removed.get(path):
            remove_channels_(unit, passing, following, layout, removed[path])
    recorded = {
        path: sorted(getattr(unit, PRUNED_CHANNELS_ATTR, ()))
        for path, (unit, _, _) in channel_units(compact, layout).items()
    }
    compact.config.pruned_channels = {path: ids for path, ids in recorded.items() if ids} or None
    return compact


# -- Stripes --------------------------------------------------------------------------------------------------------
def stripe_parameters(model: PreTrainedModel) -> dict[str, nn.Parameter]:
    """The conv kernels a stripe mask covers, `{name: parameter}`: every `Conv2d` with groups=1 in the base model."""
    prefix = _prefix(model)
    return {
        f"{prefix}{path}.weight": cast(nn.Parameter, conv.weight)  # torch types `Conv2d.weight` as a Tensor
        for path, conv in stripe_convs(model).items()
        if isinstance(conv, nn.Conv2d)
    }


def kept_stripes(kernel_mask: torch.Tensor) -> torch.Tensor:
    """`(out, kh, kw)` bool: the stripes a kernel mask `(out, in, kh, kw)` keeps (any weight of the stripe kept)."""
    return kernel_mask.any(dim=1)


def stripe_mask(model: PreTrainedModel, kept: dict[str, torch.Tensor]) -> TicketMask:
    """The weight mask keeping the stripes `kept` (`{name: (out, kh, kw) bool}`; names not given keep everything)."""
    masks = {}
    for name, param in stripe_parameters(model).items():
        stripes = kept.get(name)
        full = torch.ones(param.shape, dtype=torch.bool)
        masks[name] = full if stripes is None else full & stripes[:, None].cpu()
    return TicketMask(masks)


@torch.no_grad()
def stripe_scores(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """`{name: (out, kh, kw)}`: the root-mean-square of each stripe's weights (comparable across fan-ins)."""
    return {name: p.detach().float().pow(2).mean(dim=1).sqrt().cpu() for name, p in stripe_parameters(model).items()}


@torch.no_grad()
def prune_stripes(
    model: PreTrainedModel,
    fraction: float,
    mask: TicketMask | None = None,
    scope: str = "global",
    max_tensor_sparsity: float | str | None = DEFAULT_MAX_TENSOR_SPARSITY,
) -> TicketMask:
    """
    Remove the weakest stripes so that `fraction` of the covered conv weights is removed in total.

    Args:
        model (`PreTrainedModel`): full-shape model (pruned stripes zeroed).
        fraction (`float`): fraction of the covered weights removed in the result (of each conv with
            `scope="layer"`); a stripe of a conv with `c` input channels weighs `c`.
        mask (`TicketMask`, *optional*): the current stripe mask; its stripes stay removed.
        scope (`str`): `"global"` or `"layer"`.
        max_tensor_sparsity (`float`, `"auto"` or `None`): no conv loses more than this fraction of its stripes (one is always kept).
    """
    params = stripe_parameters(model)
    scores = stripe_scores(model)
    alive = {
        name: kept_stripes(mask[name]) if mask is not None else torch.ones(scores[name].shape, dtype=torch.bool)
        for name in params
    }
    candidates: dict[str, list[tuple[float, str, int, int]]] = {}
    room = {}
    for name, param in params.items():
        cost = param.shape[1]
        flat_alive = alive[name].reshape(-1)
        values = scores[name].reshape(-1).tolist()
        candidates[name] = [(values[i], name, i, cost) for i in flat_alive.nonzero().flatten().tolist()]
        total = flat_alive.numel()
        room[name] = int(flat_alive.sum()) - _kept_at_least(total, max_tensor_sparsity, fraction)

    def gone_weights(name: str) -> int:
        return int((~alive[name]).sum()) * params[name].shape[1]

    if scope == "layer":
        chosen = {}
        for name, param in params.items():
            budget = round(fraction * param.numel()) - gone_weights(name)
            chosen.update(_select_lowest(candidates[name], budget, {name: room[name]}))
    else:
        total = sum(p.numel() for p in params.values())
        budget = round(fraction * total) - sum(gone_weights(n) for n in params)
        chosen = _select_lowest([c for cs in candidates.values() for c in cs], budget, room)
    kept = {}
    for name, stripes in alive.items():
        flat = stripes.clone().reshape(-1)
        flat[torch.tensor(chosen.get(name, []), dtype=torch.long)] = False
        kept[name] = flat.view(stripes.shape)
    return stripe_mask(model, kept)


def stripe_structure(model: PreTrainedModel, mask: TicketMask) -> dict[str, list[int]]:
    """`{conv path: removed flat stripe ids}` of `mask` (paths relative to the base model; convs losing none left out)."""
    prefix = _prefix(model)
    structure = {}
    for name in stripe_parameters(model):
        dead = (~kept_stripes(mask[name])).reshape(-1).nonzero().flatten().tolist()
        if dead:
            structure[name[len(prefix) : -len(".weight")]] = dead
    return structure


def stripe_model_by_mask(model: PreTrainedModel, mask: TicketMask) -> PreTrainedModel:
    """A copy of `model` whose convs that lose stripes in `mask` are [`StripeConv2d`] (recorded in
    `config.pruned_stripes`, so that `from_pretrained` rebuilds them); the output equals the masked model's."""
    structure = stripe_structure(model, mask)
    result = copy.deepcopy(model)
    apply_stripe_structure_(result, structure)
    result.config.pruned_stripes = structure or None
    return result


def conv_structure_counts(model: nn.Module) -> dict[str, int]:
    """`{"channels_removed": n, "stripes_kept": n}` over the inner units and [`StripeConv2d`] layers of `model`."""
    return {
        "channels_removed": sum(len(getattr(m, PRUNED_CHANNELS_ATTR, ())) for m in model.modules()),
        "stripes_kept": sum(len(m.kept_stripes) for m in model.modules() if isinstance(m, StripeConv2d)),
    }
