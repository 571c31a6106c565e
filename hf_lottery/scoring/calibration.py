"""Calibration passes for activation-aware scoring: the inputs each prunable layer sees on a few batches.

A pass runs the model in eval mode without gradients over `dataloader` and hands the inputs of every layer that
owns a prunable weight to a per-layer accumulator, as `[tokens, in_features]` float32 rows (padding tokens left out
when the batch has an `attention_mask` of the inputs' leading shape). The hooks are removed and the train/eval modes
restored afterwards, so the model is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def layers_of(model: nn.Module, parameters: Mapping[str, torch.Tensor], method: str) -> dict[str, nn.Linear | Conv1D]:
    """`{name: layer}` for every prunable weight: the `nn.Linear` or `Conv1D` whose `weight` it is."""
    owners = {id(m.weight): m for m in model.modules() if isinstance(m, (nn.Linear, Conv1D))}
    layers = {}
    for name, p in parameters.items():
        layer = owners.get(id(p))
        if layer is None:
            raise ValueError(
                f"{method} scores the weights of nn.Linear and Conv1D layers from their inputs; {name!r} is not one. "
                "Leave it out of prune_modules or use another method."
            )
        layers[name] = layer
    return layers


def as_out_in(weight: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """The weight as `[out_features, in_features]` (a `Conv1D` stores the transpose)."""
    return weight.T if isinstance(layer, Conv1D) else weight


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def run_calibration(
    model: nn.Module,
    layers: Mapping[str, nn.Linear | Conv1D],
    dataloader: Iterable[Mapping[str, Any]] | None,
    accumulate: Callable[[str, torch.Tensor], None],
    calibration_batches: int | None,
    method: str,
) -> int:
    """Feed `calibration_batches` batches (all when `None`) through `model`; `accumulate(name, rows)` per layer call.

    Returns:
        `int`: the number of batches run.
    """
    if dataloader is None:
        raise ValueError(
            f"{method} scores weights by the activations they see: pass dataloader= (an iterable of model-ready "
            "batches, e.g. a DataLoader over the training set)."
        )
    if calibration_batches is not None and calibration_batches < 1:
        raise ValueError(f"calibration_batches must be >= 1 or None, got {calibration_batches}.")
    device = next(iter(layers.values())).weight.device
    tokens: dict[str, torch.Tensor | None] = {"live": None}
    by_layer: dict[int, list[str]] = {}
    for name, layer in layers.items():
        by_layer.setdefault(id(layer), []).append(name)

    def hook(layer: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach()
        live = tokens["live"]
        if live is not None and tuple(x.shape[:-1]) == tuple(live.shape):
            x = x[live]
        rows = x.reshape(-1, x.shape[-1]).float()
        for name in by_layer[id(layer)]:
            accumulate(name, rows)

    modes = {m: m.training for m in model.modules()}
    handles = [layer.register_forward_pre_hook(hook) for layer in {id(v): v for v in layers.values()}.values()]
    seen = 0
    try:
        model.eval()
        with torch.no_grad():
            for batch in dataloader:
                if calibration_batches is not None and seen >= calibration_batches:
                    break
                batch = _to_device(batch, device)
                mask = batch.get("attention_mask")
                tokens["live"] = mask.bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
                model(**batch)
                seen += 1
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in modes.items():
            m.training = mode
    if seen == 0:
        raise ValueError(f"{method} got no calibration batches: the dataloader is empty.")
    return seen
