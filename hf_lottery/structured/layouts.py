"""Architecture tables: where the prunable Linear layers of each encoder (and decoder) family live.

A family is described as data (one [`BlockLayout`] per family), never as a per-model code path. Every path is a
dotted attribute path as accepted by `torch.nn.Module.get_submodule`.

This module only depends on the standard library: its source is also copied into the self-contained modeling file
written beside structured checkpoints (see `remote.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class BlockLayout:
    """
    Where the attention heads and feed-forward neurons of one transformer family live.

    Args:
        name (`str`):
            Family name, used in messages.
        model_types (`tuple[str, ...]`):
            The `config.model_type` values that share this layout.
        layers (`str`):
            Path of the `ModuleList` of transformer blocks, relative to the base model (`model.base_model`).
        attention (`str`):
            Path, relative to a block, of the module that splits the projections into heads (its attributes hold
            the head count read by the forward).
        query, key, value (`str`):
            Paths, relative to a block, of the Q, K and V `nn.Linear` layers (heads are groups of output rows).
        attention_output (`str`):
            Path of the attention output projection (heads are groups of input columns).
        intermediate (`str`):
            Path of the first feed-forward `nn.Linear` (neurons are output rows).
        output (`str`):
            Path of the second feed-forward `nn.Linear` (neurons are input columns).
        head_count_attrs (`tuple[str, ...]`):
            Attributes of the attention module set to the number of heads kept in that layer.
        head_width_attrs (`tuple[str, ...]`):
            Attributes of the attention module set to `kept heads * head size`.
        head_size_attr (`str`):
            Attribute of the attention module holding the width of one head.
        config_num_heads (`str`):
            Config attribute: heads per layer in the unpruned model.
        config_intermediate_size (`str`):
            Config attribute: feed-forward neurons per layer in the unpruned model.
        config_num_layers (`str`):
            Config attribute: number of blocks.
        intermediate_extra (`tuple[str, ...]`, *optional*):
            Paths of further feed-forward `nn.Linear` layers whose output rows are the same neurons (the up
            projection of a gated MLP: `down(act(gate(x)) * up(x))` loses neuron n with row n of gate and up).
        query_group_attr (`str`, *optional*):
            Grouped-query attention: the attention module's attribute holding query heads per key/value head. A
            structural head is then one key/value head together with its query heads (whole KV groups are removed,
            so every kept group keeps the same number of query heads), and `config_num_heads` names the KV count.
    """

    name: str
    model_types: tuple[str, ...]
    layers: str
    attention: str
    query: str
    key: str
    value: str
    attention_output: str
    intermediate: str
    output: str
    head_count_attrs: tuple[str, ...]
    head_width_attrs: tuple[str, ...]
    head_size_attr: str
    config_num_heads: str
    config_intermediate_size: str
    config_num_layers: str
    intermediate_extra: tuple[str, ...] = ()
    query_group_attr: str | None = None


BERT_LAYOUT = BlockLayout(
    name="bert",
    model_types=("bert",),
    layers="encoder.layer",
    attention="attention.self",
    query="attention.self.query",
    key="attention.self.key",
    value="attention.self.value",
    attention_output="attention.output.dense",
    intermediate="intermediate.dense",
    output="output.dense",
    head_count_attrs=("num_attention_heads",),
    head_width_attrs=("all_head_size",),
    head_size_attr="attention_head_size",
    config_num_heads="num_attention_heads",
    config_intermediate_size="intermediate_size",
    config_num_layers="num_hidden_layers",
)

# RoBERTa, XLM-R and ELECTRA keep BERT's block verbatim; only the family (and the base model prefix) differ.
ROBERTA_LAYOUT = replace(BERT_LAYOUT, name="roberta", model_types=("roberta", "xlm-roberta"))
ELECTRA_LAYOUT = replace(BERT_LAYOUT, name="electra", model_types=("electra",))

DISTILBERT_LAYOUT = BlockLayout(
    name="distilbert",
    model_types=("distilbert",),
    layers="transformer.layer",
    attention="attention",
    query="attention.q_lin",
    key="attention.k_lin",
    value="attention.v_lin",
    attention_output="attention.out_lin",
    intermediate="ffn.lin1",
    output="ffn.lin2",
    head_count_attrs=("n_heads",),
    head_width_attrs=(),
    head_size_attr="attention_head_size",
    config_num_heads="n_heads",
    config_intermediate_size="hidden_dim",
    config_num_layers="n_layers",
)

# Decoders with grouped-query attention and a gated MLP. Heads are KV groups: removing group g drops K and V head g,
# query heads g*r .. g*r + r - 1 (r = num_attention_heads / num_key_value_heads) and their o_proj columns; the
# attention module reshapes by head_dim and repeats KV r times, so no attribute changes.
LLAMA_LAYOUT = BlockLayout(
    name="llama",
    model_types=("llama",),
    layers="layers",
    attention="self_attn",
    query="self_attn.q_proj",
    key="self_attn.k_proj",
    value="self_attn.v_proj",
    attention_output="self_attn.o_proj",
    intermediate="mlp.gate_proj",
    output="mlp.down_proj",
    head_count_attrs=(),
    head_width_attrs=(),
    head_size_attr="head_dim",
    config_num_heads="num_key_value_heads",
    config_intermediate_size="intermediate_size",
    config_num_layers="num_hidden_layers",
    intermediate_extra=("mlp.up_proj",),
    query_group_attr="num_key_value_groups",
)
QWEN2_LAYOUT = replace(LLAMA_LAYOUT, name="qwen2", model_types=("qwen2",))

LAYOUTS: dict[str, BlockLayout] = {}


def register_layout(layout: BlockLayout, overwrite: bool = False) -> None:
    """
    Make a family prunable by registering its [`BlockLayout`] for each of its `model_types`.

    Args:
        layout (`BlockLayout`):
            The architecture table of the family.
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace a layout already registered for one of the model types.
    """
    for model_type in layout.model_types:
        if model_type in LAYOUTS and not overwrite and LAYOUTS[model_type] != layout:
            raise ValueError(f"A layout is already registered for model type {model_type!r}.")
        LAYOUTS[model_type] = layout


for _layout in (BERT_LAYOUT, ROBERTA_LAYOUT, ELECTRA_LAYOUT, DISTILBERT_LAYOUT, LLAMA_LAYOUT, QWEN2_LAYOUT):
    register_layout(_layout)


def find_layout(config: Any) -> BlockLayout | None:
    """
    The [`BlockLayout`] of a model config, or `None` when its family is not supported.

    Args:
        config (`PreTrainedConfig`):
            A model configuration (anything with a `model_type` attribute).
    """
    model_type = getattr(config, "model_type", None)
    return None if model_type is None else LAYOUTS.get(model_type)


def get_layout(config: Any) -> BlockLayout:
    """
    The [`BlockLayout`] of a model config.

    Args:
        config (`PreTrainedConfig`):
            A model configuration (anything with a `model_type` attribute).

    Raises:
        `ValueError`: if the family has no registered layout.
    """
    layout = find_layout(config)
    if layout is None:
        raise ValueError(
            f"Structured pruning does not support model type {getattr(config, 'model_type', None)!r}; "
            f"supported: {', '.join(sorted(LAYOUTS))} (add one with `register_layout`)."
        )
    return layout
