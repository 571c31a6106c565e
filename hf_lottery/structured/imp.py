"""Structured IMP: heads and FFN neurons pruned round by round as all-or-nothing groups of a weight mask.

During the lottery run a removed head is the zeroed Q, K, V rows and attention-output columns of that head, a
removed neuron the zeroed intermediate row and output column, so the run keeps full shapes (rewinding, resume and
mask enforcement work as for unstructured tickets). Zero output columns make a group contribute nothing, so the
masked model computes what the compacted one does; [`compact_by_mask`] removes the groups physically at the end.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import PreTrainedModel

from ..ticket.mask import TicketMask
from .layouts import get_layout
from .removal import compact, select_structures
from .scores import score_structures
from .shrink import get_blocks, original_counts

KINDS = {"head": ("heads",), "neuron": ("neurons",), "head+neuron": ("heads", "neurons")}


def _group_parameters(model: PreTrainedModel) -> list[dict[str, str]]:
    """Per layer, the full parameter names of Q, K, V, attention output, intermediate and output weights."""
    layout = get_layout(model.config)
    base = model.base_model
    prefix = f"{model.base_model_prefix}." if base is not model else ""
    blocks = get_blocks(model, layout)
    names = []
    for i in range(len(blocks)):
        root = f"{prefix}{layout.layers}.{i}."
        names.append(
            {
                role: f"{root}{getattr(layout, role)}.weight"
                for role in ("query", "key", "value", "attention_output", "intermediate", "output")
            }
            # a gated MLP's up projection: its rows are the neurons too
            | {f"intermediate_extra_{j}": f"{root}{path}.weight" for j, path in enumerate(layout.intermediate_extra)}
        )
    return names


def structured_parameters(model: PreTrainedModel) -> dict[str, torch.nn.Parameter]:
    """The weights a structured mask covers, `{name: parameter}` (the pooler and embeddings are never included)."""
    params = dict(model.named_parameters())
    return {name: params[name] for layer in _group_parameters(model) for name in layer.values()}


def _head_widths(model: PreTrainedModel, names: dict[str, str]) -> dict[str, int]:
    """Rows (columns for the attention output) one structural head spans in each role's full-shape weight.

    All equal the head size for multi-head attention; under grouped-query attention a head is a KV group, so Q
    and the attention output span `query heads per group × head size` and K, V one head size.
    """
    num_heads = int(getattr(model.config, get_layout(model.config).config_num_heads))
    params = dict(model.named_parameters())
    return {
        role: params[names[role]].shape[1 if role == "attention_output" else 0] // num_heads
        for role in ("query", "key", "value", "attention_output")
    }


def removed_groups(model: PreTrainedModel, mask: TicketMask) -> dict[str, dict[int, list[int]]]:
    """Heads and neurons whose output columns are fully pruned in `mask`, `{kind: {layer: [ids]}}`."""
    removed: dict[str, dict[int, list[int]]] = {"heads": {}, "neurons": {}}
    for i, names in enumerate(_group_parameters(model)):
        size = _head_widths(model, names)["attention_output"]
        heads_alive = mask[names["attention_output"]].view(-1, mask[names["attention_output"]].shape[1] // size, size)
        dead_heads = (~heads_alive.any(dim=(0, 2))).nonzero().flatten().tolist()
        dead_neurons = (~mask[names["output"]].any(dim=0)).nonzero().flatten().tolist()
        if dead_heads:
            removed["heads"][i] = dead_heads
        if dead_neurons:
            removed["neurons"][i] = dead_neurons
    return removed


def structured_mask(model: PreTrainedModel, removed: dict[str, dict[int, list[int]]]) -> TicketMask:
    """The weight mask that removes `removed` heads and neurons (original indices)."""
    params = structured_parameters(model)
    masks = {name: torch.ones(p.shape, dtype=torch.bool) for name, p in params.items()}
    for i, names in enumerate(_group_parameters(model)):
        widths = _head_widths(model, names)
        for h in removed.get("heads", {}).get(i, []):
            for role in ("query", "key", "value"):
                masks[names[role]][h * widths[role] : (h + 1) * widths[role], :] = False
            masks[names["attention_output"]][
                :, h * widths["attention_output"] : (h + 1) * widths["attention_output"]
            ] = False
        for n in removed.get("neurons", {}).get(i, []):
            for role in names:
                if role == "intermediate" or role.startswith("intermediate_extra_"):
                    masks[names[role]][n, :] = False
            masks[names["output"]][:, n] = False
    return TicketMask(masks)


def prune_structured(
    model: PreTrainedModel,
    fraction: float,
    granularity: str = "head+neuron",
    mask: TicketMask | None = None,
    scope: str = "global",
    method: str = "magnitude",
    **score_kwargs: Any,
) -> TicketMask:
    """Remove the lowest-scoring heads and/or neurons so that `fraction` of each kind's groups is removed in total.

    Args:
        model (`PreTrainedModel`): full-shape model (pruned groups zeroed, not removed).
        fraction (`float`): fraction of the original heads (and neurons) removed in the result.
        granularity (`str`): `"head"`, `"neuron"` or `"head+neuron"`.
        mask (`TicketMask`, *optional*): the current structured mask; its groups stay removed.
        scope (`str`): `"global"` ranks groups across layers, `"layer"` within each layer.
        method (`str`): group score, `"magnitude"`, `"first_order"` (needs `batches=`) or `"random"`.
    """
    kinds = KINDS[granularity]
    removed = removed_groups(model, mask) if mask is not None else {"heads": {}, "neurons": {}}
    scores = score_structures(model, method, **score_kwargs)
    _, num_heads, num_neurons = original_counts(model.config, get_layout(model.config))
    num_layers = len(_group_parameters(model))
    for kind in kinds:
        per_layer = num_heads if kind == "heads" else num_neurons
        for layer, ids in removed[kind].items():
            scores[kind][layer][ids] = float("nan")
        already = sum(len(v) for v in removed[kind].values())
        if scope == "layer":
            amount = round(fraction * per_layer) - max((len(v) for v in removed[kind].values()), default=0)
        else:
            amount = round(fraction * per_layer * num_layers) - already
        if amount > 0:
            for layer, ids in select_structures(scores[kind], amount, scope=scope).items():
                removed[kind][layer] = sorted(set(removed[kind].get(layer, [])) | set(ids))
    return structured_mask(model, removed)


def compact_by_mask(model: PreTrainedModel, mask: TicketMask) -> PreTrainedModel:
    """A copy of `model` with the heads and neurons that `mask` removes physically taken out."""
    removed = removed_groups(model, mask)
    return compact(copy.deepcopy(model), heads=removed["heads"], neurons=removed["neurons"])
