"""Wanda (Sun et al., ICLR 2024): a weight matters by its magnitude times the size of the input it multiplies.

The score of `W[i, j]` is `|W[i, j]| · ‖X_j‖`, with `X_j` the j-th input feature of the layer over the calibration
tokens. Choices made for this library:

- `‖X_j‖` is the root mean square over the calibration tokens (padding tokens excluded) rather than the plain
  norm: the ranking inside a layer is the same, and layers that saw the same tokens stay comparable under a global
  threshold.
- The paper compares weights per output (each row of `W` prunes the same fraction): pass `scope="row"` to
  [`prune`] for that. `scope="2:4"` gives its N:M variant; `"global"` and `"layer"` work as for any scorer.
- All layers are calibrated in one pass over the unpruned (current) model, as the paper does; the scores are
  not updated layer by layer.
- Only `nn.Linear` and transformers' `Conv1D` (GPT-2) weights can be scored; other prunable tensors raise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .calibration import as_out_in, layers_of, run_calibration
from .registry import register_scoring


@register_scoring("wanda", needs_data=True)
def wanda_scores(
    model: nn.Module,
    parameters: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor] | None,
    *,
    dataloader: Iterable[Mapping[str, Any]] | None = None,
    calibration_batches: int | None = None,
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    """Wanda scores `|W| · ‖X‖` from calibration batches.

    Args:
        model (`nn.Module`): the model. Not modified (temporary forward hooks, modes restored).
        parameters (`Mapping[str, torch.Tensor]`): the prunable weights, each of an `nn.Linear` or `Conv1D`.
        mask (`Mapping[str, torch.Tensor]`, *optional*): the current mask (the selector keeps it pruned).
        dataloader (`Iterable[dict]`): model-ready batches, `model(**batch)`; tensors are moved to the model's device.
        calibration_batches (`int`, *optional*): how many batches to use; all when `None`.

    Returns:
        `dict[str, torch.Tensor]`: float32 scores on the weights' device, the weights' shapes.
    """
    layers = layers_of(model, parameters, "wanda")
    squares = {
        name: torch.zeros(as_out_in(p, layers[name]).shape[1], device=p.device) for name, p in parameters.items()
    }
    counts = dict.fromkeys(parameters, 0)

    def accumulate(name: str, rows: torch.Tensor) -> None:
        squares[name] += rows.square().sum(0)
        counts[name] += rows.shape[0]

    run_calibration(model, layers, dataloader, accumulate, calibration_batches, "wanda")
    scores = {}
    for name, p in parameters.items():
        rms = (squares[name] / max(counts[name], 1)).sqrt()
        scores[name] = as_out_in(as_out_in(p.detach(), layers[name]).float().abs() * rms, layers[name]).contiguous()
    return scores
