"""SparseGPT (Frantar & Alistarh, ICML 2023): optimal-brain-surgeon saliency and weight reconstruction per layer.

For a layer with calibration inputs `X` (`[tokens, in]`), `H = XᵀX / tokens + λ·mean(diag H)·I` (damping `λ`,
default 0.01) and `U` the upper Cholesky factor of `H⁻¹`. Removing `W[i, j]` costs `W[i, j]² / U[j, j]²` in
squared output error once the remaining weights of the row are updated: that saliency is the score.

The weight update is exposed apart, as [`sparsegpt_update`]: scoring methods never modify the model, and the
update only means something for the mask it was computed for. Choices made for this library:

- The mask is chosen once from the saliency of the weights as they are, by the shared selector (any scope: the
  paper's per-row choice is `scope="row"`, its N:M variant `scope="2:4"`), not block by block while the update
  runs (the paper's adaptive mask selection, blocksize 128). The update then is the paper's lazy-batch OBS pass
  for that fixed mask.
- Every layer's `H` comes from one calibration pass over the model as it is, not layer by layer from the already
  reconstructed earlier layers. `H` is `in × in` float32 per layer, all layers at once: `4 · Σ in²` bytes.
- Inputs that never fire (`H[j, j] = 0`) have no effect on the output: their weights score 0.
- Rewinding: lottery-ticket rounds rewind the surviving weights to θ0 (or θ_k) after pruning, which discards any
  reconstruction, so `LotteryTrainer` uses SparseGPT's saliency to rank weights and never applies the update.
  The update serves one-shot pruning (a baseline, or `rewind="none"` fine-tuning started from reconstructed
  weights): `sparsegpt_update(model, mask, dataloader)` then `load_reconstruction_(model, update)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..ticket.mask import TicketMask
from ..types import DEFAULT_SPARSEGPT_DAMPING
from ..utils.parameters import named_parameters
from .calibration import as_out_in, layers_of, run_calibration
from .registry import register_scoring


def _hessians(
    model: nn.Module,
    parameters: Mapping[str, torch.Tensor],
    dataloader: Iterable[Mapping[str, Any]] | None,
    calibration_batches: int | None,
) -> tuple[dict[str, nn.Linear | Conv1D], dict[str, torch.Tensor]]:
    layers = layers_of(model, parameters, "sparsegpt")
    shared: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    for name, p in parameters.items():
        columns = as_out_in(p, layers[name]).shape[1]
        shared.setdefault(id(layers[name]), torch.zeros(columns, columns, device=p.device))
        counts.setdefault(id(layers[name]), 0)
    first = {id(layer): name for name, layer in reversed(layers.items())}

    def accumulate(name: str, rows: torch.Tensor) -> None:
        key = id(layers[name])
        if first[key] == name:  # one Hessian per layer, whatever the number of its names
            shared[key] += rows.T @ rows
            counts[key] += rows.shape[0]

    run_calibration(model, layers, dataloader, accumulate, calibration_batches, "sparsegpt")
    return layers, {n: shared[id(layers[n])] / max(counts[id(layers[n])], 1) for n in parameters}


def _inverse_cholesky(hessian: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`U`, the upper Cholesky factor of the damped `H⁻¹`, and the dead inputs (`H[j, j] = 0`)."""
    h = hessian.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(damping * torch.diag(h).mean())
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True), dead


def _check(damping: float, block_size: int = 1) -> None:
    if not damping > 0:
        raise ValueError(f"sparsegpt damping must be > 0 (a fraction of the mean Hessian diagonal), got {damping}.")
    if block_size < 1:
        raise ValueError(f"sparsegpt block_size must be >= 1, got {block_size}.")


@register_scoring("sparsegpt", needs_data=True)
def sparsegpt_scores(
    model: nn.Module,
    parameters: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor] | None,
    *,
    dataloader: Iterable[Mapping[str, Any]] | None = None,
    calibration_batches: int | None = None,
    damping: float = DEFAULT_SPARSEGPT_DAMPING,
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    """SparseGPT saliency `W² / [chol(H⁻¹)]_jj²` from calibration batches (no weight update; see [`sparsegpt_update`]).

    Args:
        model (`nn.Module`): the model. Not modified (temporary forward hooks, modes restored).
        parameters (`Mapping[str, torch.Tensor]`): the prunable weights, each of an `nn.Linear` or `Conv1D`.
        mask (`Mapping[str, torch.Tensor]`, *optional*): the current mask (the selector keeps it pruned).
        dataloader (`Iterable[dict]`): model-ready batches, `model(**batch)`.
        calibration_batches (`int`, *optional*): how many batches to use; all when `None`.
        damping (`float`, *optional*, defaults to 0.01): `λ`, added to the diagonal of `H` times its mean.

    Returns:
        `dict[str, torch.Tensor]`: float32 scores, the weights' shapes.
    """
    _check(damping)
    layers, hessians = _hessians(model, parameters, dataloader, calibration_batches)
    scores = {}
    for name, p in parameters.items():
        u, dead = _inverse_cholesky(hessians[name], damping)
        w = as_out_in(p.detach(), layers[name]).float()
        saliency = (w / torch.diag(u)).square()
        saliency[:, dead] = 0.0
        scores[name] = as_out_in(saliency, layers[name]).contiguous()
    return scores


@torch.no_grad()
def sparsegpt_update(
    model: nn.Module,
    mask: Mapping[str, torch.Tensor],
    dataloader: Iterable[Mapping[str, Any]] | None,
    *,
    calibration_batches: int | None = None,
    damping: float = DEFAULT_SPARSEGPT_DAMPING,
    block_size: int = 128,
) -> dict[str, torch.Tensor]:
    """SparseGPT's reconstruction for a fixed `mask`: the kept weights of each row absorb the error of the pruned ones.

    The model is not modified; apply the result with [`load_reconstruction_`]. The update is for one-shot use: a
    lottery-ticket round that rewinds afterwards discards it (see the module docstring).

    Args:
        model (`nn.Module`): the model whose weights are reconstructed (as they are now, not rewound).
        mask (`Mapping[str, torch.Tensor]`): the mask the weights are reconstructed for (True = kept).
        dataloader (`Iterable[dict]`): model-ready calibration batches.
        calibration_batches (`int`, *optional*): how many batches to use; all when `None`.
        damping (`float`, *optional*, defaults to 0.01): `λ` of the damped Hessian.
        block_size (`int`, *optional*, defaults to 128): columns updated together (lazy batch updates); the result
            is the same for any block size up to rounding.

    Returns:
        `dict[str, torch.Tensor]`: `{name: weight}` in the weights' dtype, exactly zero where `mask` prunes.
    """
    _check(damping, block_size)
    mask = mask if isinstance(mask, TicketMask) else TicketMask(mask)
    mask.validate(model)
    named = named_parameters(model)
    parameters = {name: p for name, p in named.items() if name in mask}
    layers, hessians = _hessians(model, parameters, dataloader, calibration_batches)
    updated = {}
    for name, p in parameters.items():
        layer = layers[name]
        u, dead = _inverse_cholesky(hessians[name], damping)
        w = as_out_in(p.detach(), layer).float().clone()
        pruned = ~as_out_in(mask[name].to(p.device, torch.bool), layer)
        w[:, dead] = 0.0
        columns = w.shape[1]
        for start in range(0, columns, block_size):
            end = min(start + block_size, columns)
            block = w[:, start:end].clone()
            errors = torch.zeros_like(block)
            u_block = u[start:end, start:end]
            for i in range(end - start):
                column = block[:, i]
                target = column.masked_fill(pruned[:, start + i], 0.0)
                error = (column - target) / u_block[i, i]
                block[:, i:] -= error.unsqueeze(1) * u_block[i, i:].unsqueeze(0)
                block[:, i] = target
                errors[:, i] = error
            w[:, start:end] = block
            w[:, end:] -= errors @ u[start:end, end:]
        w.masked_fill_(pruned, 0.0)
        updated[name] = as_out_in(w, layer).to(p.dtype).contiguous()
    return updated


@torch.no_grad()
def load_reconstruction_(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> nn.Module:
    """Copy reconstructed weights (from [`sparsegpt_update`]) into `model` in place; returns `model`."""
    named = named_parameters(model)
    for name, w in weights.items():
        if name not in named or tuple(named[name].shape) != tuple(w.shape):
            raise ValueError(f"The reconstruction holds {name!r} {tuple(w.shape)}, which the model does not have.")
        named[name].copy_(w)
    return model
