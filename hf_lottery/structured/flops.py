"""Matrix-multiplication FLOPs of the transformer blocks, read from the current (possibly shrunk) shapes."""

from __future__ import annotations

from transformers import PreTrainedModel

from .layouts import get_layout
from .shrink import get_blocks, layout_linear


def encoder_matmul_flops(model: PreTrainedModel, seq_len: int, batch_size: int = 1) -> int:
    """
    FLOPs (2 per multiply-add) of the matrix products in every transformer block for one forward pass: the Q, K, V
    and attention output projections, the attention scores `QKᵀ` and context `softmax(·)V` products, and both
    feed-forward Linears. Embeddings, LayerNorm, softmax, activations and the (per-sequence) pooler and task head
    are not counted.

    Args:
        model (`PreTrainedModel`):
            A model of a supported family.
        seq_len (`int`):
            Tokens per sequence.
        batch_size (`int`, *optional*, defaults to 1):
            Sequences per batch.

    Returns:
        `int`: the FLOP count; `dense / pruned` is the ideal speed-up of a shrunk model.
    """
    layout = get_layout(model.config)
    tokens = batch_size * seq_len
    total = 0
    for block in get_blocks(model, layout):
        for path in (
            layout.query,
            layout.key,
            layout.value,
            layout.attention_output,
            layout.intermediate,
            *layout.intermediate_extra,
            layout.output,
        ):
            linear = layout_linear(block, path)
            total += 2 * tokens * linear.in_features * linear.out_features
        width = layout_linear(block, layout.query).out_features  # kept heads * head size
        total += 2 * 2 * batch_size * seq_len * seq_len * width  # scores and context
    return total
