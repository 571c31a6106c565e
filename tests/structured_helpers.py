"""Tiny random models of every supported family, and references built by zeroing weights (no surgery)."""

from __future__ import annotations

import copy

import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    DistilBertConfig,
    ElectraConfig,
    PreTrainedConfig,
    PreTrainedModel,
    RobertaConfig,
    XLMRobertaConfig,
)

from hf_lottery.structured import get_layout
from hf_lottery.structured.shrink import get_blocks

VOCAB = 99
LAYERS = 3
HEADS = 4
HIDDEN = 32
HEAD_SIZE = HIDDEN // HEADS
NEURONS = 37


def tiny_config(family: str, attn_implementation: str = "sdpa") -> PreTrainedConfig:
    common = {"vocab_size": VOCAB, "attn_implementation": attn_implementation}
    bert_like = {
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": NEURONS,
        "max_position_embeddings": 64,
        **common,
    }
    if family == "bert":
        return BertConfig(**bert_like)
    if family == "roberta":
        return RobertaConfig(**bert_like, pad_token_id=1)
    if family == "xlm-roberta":
        return XLMRobertaConfig(**bert_like, pad_token_id=1)
    if family == "electra":
        return ElectraConfig(**bert_like, embedding_size=16)
    if family == "distilbert":
        return DistilBertConfig(
            dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=NEURONS, max_position_embeddings=64, **common
        )
    raise ValueError(family)


FAMILIES = ("bert", "roberta", "xlm-roberta", "electra", "distilbert")


def tiny_model(
    family: str, seed: int = 0, model_class=AutoModelForSequenceClassification, **kwargs
) -> PreTrainedModel:
    torch.manual_seed(seed)
    model = model_class.from_config(tiny_config(family, **kwargs))
    # Non-zero biases everywhere, so that a wrong slice of any bias shows in the logits.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.1)
    return model.eval()


def inputs(batch: int = 3, length: int = 9, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, length - 3 :] = 0  # some padding
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def zeroed(model: PreTrainedModel, heads=None, neurons=None) -> PreTrainedModel:
    """A copy of `model` with the given heads' value rows and biases, and neurons' intermediate rows and biases, zeroed."""
    ref = copy.deepcopy(model)
    layout = get_layout(ref.config)
    blocks = get_blocks(ref, layout)
    with torch.no_grad():
        for layer, ids in (heads or {}).items():
            value = blocks[layer].get_submodule(layout.value)
            size = getattr(blocks[layer].get_submodule(layout.attention), layout.head_size_attr)
            for h in ids:
                value.weight[h * size : (h + 1) * size] = 0
                value.bias[h * size : (h + 1) * size] = 0
        for layer, ids in (neurons or {}).items():
            inter = blocks[layer].get_submodule(layout.intermediate)
            inter.weight[list(ids)] = 0
            inter.bias[list(ids)] = 0
    return ref


@torch.no_grad()
def logits(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**batch)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
