"""Export a 2:4 ticket to torch's semi-structured sparse tensors (CUDA sparse tensor cores; inference only).

`torch.sparse.to_sparse_semi_structured` stores a 2:4 weight as its kept half plus 2-bit indices and multiplies
it with the GPU's sparse tensor cores (Ampere or newer, fp16 / bf16 / int8). A ticket found with
`scope="2:4"` has exactly that pattern along the input dimension of every `nn.Linear`, so its pruned model can
run on them. The swapped weights are not trainable and the model no longer saves to a standard checkpoint:
export last, from a model that holds the ticket (`mask.apply_(model)`), for inference.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..utils.parameters import named_parameters


def has_2_4_pattern(weight: torch.Tensor) -> bool:
    """True if every 4 consecutive weights along the input dimension of `weight` (`[out, in]`) hold ≥ 2 zeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.reshape(-1, 4) != 0).sum(1) <= 2).all())


def to_semi_structured(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> nn.Module:
    """Swap every masked `nn.Linear` weight of `model` for a `SparseSemiStructuredTensor`, in place.

    Args:
        model (`nn.Module`): on a CUDA device, in float16 or bfloat16, with the ticket applied (pruned weights zero).
        mask (`Mapping[str, torch.Tensor]`): the 2:4 ticket (from `prune(..., scope="2:4")` or a ticket folder);
            only its `nn.Linear` weights are swapped.

    Returns:
        `nn.Module`: `model`, for inference (`model.eval()`, no gradients through the swapped weights).

    Raises:
        `RuntimeError`: without CUDA. `ValueError`: naming the first weight that is not on CUDA, not fp16/bf16, or
        not 2:4 (apply the mask first), or that `to_sparse_semi_structured` cannot take (its shape limits).
    """
    if not torch.cuda.is_available():
        raise RuntimeError(
            "Semi-structured sparse tensors need CUDA (sparse tensor cores); no CUDA device is present."
        )
    named = named_parameters(model)
    owners = {id(m.weight): m for m in model.modules() if isinstance(m, nn.Linear)}
    for name in mask:
        param = named[name]
        layer = owners.get(id(param))
        if layer is None:
            continue
        if param.device.type != "cuda" or param.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"{name!r} is {param.dtype} on {param.device}; move the model to CUDA in fp16 or bf16.")
        if not has_2_4_pattern(param.detach()):
            raise ValueError(f"{name!r} is not 2:4 sparse; find the ticket with scope='2:4' and apply it first.")
        try:
            sparse = torch.sparse.to_sparse_semi_structured(param.detach())
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"{name!r} {tuple(param.shape)} cannot be made semi-structured: {err}") from err
        layer.weight = nn.Parameter(sparse, requires_grad=False)
    return model
