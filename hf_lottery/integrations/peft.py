"""`peft` (LoRA) over a lottery ticket: masks by original names, masked LoRA updates, sparse merging.

A `PeftModel` renames the weights it wraps (`bert.encoder.layer.0.attention.self.query.weight` becomes
`base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.weight`). hf_lottery always addresses the
base weights by their *original* names ([`named_parameters`]), so a ticket found on the plain model fits the
`PeftModel` and a ticket found on a `PeftModel` fits the plain one; adapter weights are never prunable.

A LoRA update ΔW = s·B·A is dense: trained as is, merging it would refill the pruned weights. Once a ticket is
applied ([`apply_ticket_to_peft`], or by `LotteryTrainer` / `LotteryCallback`, whose mask enforcement does it), each
LoRA layer over a masked weight computes `base(x) + x·(ΔW ⊙ m)ᵀ` and merges `W + ΔW ⊙ m`: the trained function is
exactly the merged sparse one, and [`merge_and_unload_sparse`] (or peft's own `merge_and_unload`) keeps the zeros.
This forms ΔW (the size of W) in each forward pass of a masked layer, which LoRA's low-rank path avoids; the
adapter's size and what is saved are unchanged. Supported: LoRA on `nn.Linear` (and GPT-2's `Conv1D`), no DoRA or
other LoRA variant.

Saved adapters: the adapter files hold vanilla LoRA weights (A, B), and a masked update ΔW ⊙ m is not a low-rank
product, so a plain `PeftModel.from_pretrained` over the dense base computes another function. Save the ticket beside
the adapter (`LotteryTrainer.save_model` does; or `ticket.save_pretrained(adapter_folder)`) and reload both with
[`load_peft_ticket`]: the same logits as the trained model, and peft's `merge_and_unload` keeps the zeros. A ticket
saved into an adapter's folder records itself in its `adapter_config.json` (key `hf_lottery_ticket`: the ticket's
files, sparsity, mask digest and this loader), which a plain peft load ignores with a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import ADAPTER_TICKET_KEY
from ..ticket.mask import TicketMask
from ..utils.parameters import is_peft_model, original_parameter_name, peft_root_and_adapter_names

__all__ = [
    "apply_ticket_to_peft",
    "load_peft_ticket",
    "merge_and_unload_sparse",
    "remove_ticket_from_peft",
    "sync_lora_masks",
]

_KEEP_ATTRIBUTE = "_hf_lottery_keep"  # on a LoRA layer: the bool mask of its base weight, on the weight's device


# -- Masked LoRA updates -------------------------------------------------------------------------------------------
def _masked_variant():
    from peft.tuners.lora.layer import LoraVariant

    class MaskedLoraVariant(LoraVariant):
        """Vanilla LoRA whose update ΔW is multiplied by the layer's ticket mask, in forward and in merges."""

        @staticmethod
        def init(module, adapter_name, **kwargs) -> None:
            pass

        @staticmethod
        def _delta(module, active_adapter: str) -> torch.Tensor:
            delta = module.get_delta_weight(active_adapter)  # scaled, in the base weight's layout
            return delta * getattr(module, _KEEP_ATTRIBUTE).to(device=delta.device, dtype=delta.dtype)

        @staticmethod
        def merge_safe(module, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
            return orig_weight + MaskedLoraVariant._delta(module, active_adapter).to(orig_weight.dtype)

        @staticmethod
        def merge_unsafe(module, active_adapter: str, orig_weight: torch.Tensor) -> None:
            orig_weight.data += MaskedLoraVariant._delta(module, active_adapter).to(orig_weight.dtype)

        @staticmethod
        def unmerge(module, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
            return orig_weight - MaskedLoraVariant._delta(module, active_adapter).to(orig_weight.dtype)

        @staticmethod
        def forward(module, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs) -> torch.Tensor:
            delta = MaskedLoraVariant._delta(module, active_adapter)
            if module.fan_in_fan_out:
                delta = delta.T
            x = module.lora_dropout[active_adapter](x.to(delta.dtype))
            update = F.linear(x, delta)
            if module.lora_bias[active_adapter]:
                update = update + module.lora_B[active_adapter].bias * module.scaling[active_adapter]
            return result + update.to(result.dtype)

    return MaskedLoraVariant


_VARIANT_CLASS = None


def _variant_class():
    global _VARIANT_CLASS
    if _VARIANT_CLASS is None:
        _VARIANT_CLASS = _masked_variant()
    return _VARIANT_CLASS


def _lora_layers(model: nn.Module) -> dict[str, Any]:
    """`{original name of the base weight: LoRA layer}` for every LoRA layer of `model`."""
    from peft.tuners.lora import LoraLayer

    root, adapter_names = peft_root_and_adapter_names(model)
    layers: dict[str, Any] = {}  # LoraLayer: a mixin over nn.Module
    for name, module in root.named_modules():
        if isinstance(module, LoraLayer):
            original = original_parameter_name(f"{name}.weight" if name else "weight", adapter_names)
            if original is not None:
                layers[original] = module
    return layers


def sync_lora_masks(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> int:
    """Mask the LoRA updates of `model` with `mask` (original names); returns how many layers are masked.

    A LoRA layer whose base weight is fully kept (or not in `mask`) is left vanilla. Called by the mask
    enforcement of `LotteryTrainer` / `LotteryCallback`; a no-op for models without peft.

    Raises:
        `NotImplementedError`: a masked LoRA layer is not a plain LoRA Linear (DoRA or another variant, an
            embedding or convolution adapter).
    """
    if not is_peft_model(model):
        return 0
    from peft.tuners.lora.layer import Linear as LoraLinear

    variant = _variant_class()
    masked = 0
    for name, layer in _lora_layers(model).items():
        keep = mask.get(name)
        if keep is None or bool(keep.all()):
            _unmask_layer(layer)
            continue
        if not isinstance(layer, LoraLinear):
            raise NotImplementedError(
                f"The ticket prunes {name!r}, adapted by a {type(layer).__name__} LoRA layer: only LoRA on Linear "
                "layers can keep a ticket's sparsity. Leave that module out of LoraConfig(target_modules=...)."
            )
        others = [a for a, v in layer.lora_variant.items() if not isinstance(v, variant)]
        if others:
            raise NotImplementedError(
                f"Adapter {others[0]!r} of {name!r} is a LoRA variant ({type(layer.lora_variant[others[0]]).__name__}"
                ", e.g. DoRA); hf_lottery masks vanilla LoRA updates only. Use LoraConfig(use_dora=False)."
            )
        weight = cast(torch.Tensor, layer.get_base_layer().weight)
        setattr(layer, _KEEP_ATTRIBUTE, keep.to(device=weight.device, dtype=torch.bool))
        for adapter in layer.lora_A:
            layer.lora_variant[adapter] = variant()
        masked += 1
    return masked


def _unmask_layer(layer: Any) -> None:  # a peft LoraLayer
    variant = _variant_class()
    for adapter in [a for a, v in layer.lora_variant.items() if isinstance(v, variant)]:
        del layer.lora_variant[adapter]
    if hasattr(layer, _KEEP_ATTRIBUTE):
        delattr(layer, _KEEP_ATTRIBUTE)


# -- Public API ----------------------------------------------------------------------------------------------------
def apply_ticket_to_peft(peft_model: nn.Module, ticket: Mapping[str, torch.Tensor]) -> nn.Module:
    """Apply a ticket to a `PeftModel`: zero the pruned base weights and mask the LoRA updates over them.

    The ticket addresses the base weights by their original names (as found on the model without peft). After
    this, the model's function equals that of [`merge_and_unload_sparse`]'s merged model, before and after training
    the adapters. Apply it after the adapters are added (adapters added later are not masked).

    Args:
        peft_model (`nn.Module`): a `peft.PeftModel` (or a model with LoRA layers injected).
        ticket (`TicketMask` or `Mapping[str, torch.Tensor]`): the mask, True = kept.

    Returns:
        The same `peft_model`.

    Raises:
        `ValueError`: the ticket names a weight the model does not have (the error names it) or shapes differ.
        `NotImplementedError`: a pruned weight is adapted by a LoRA variant or a non-Linear LoRA layer.

    Example:
        ```python
        >>> from peft import LoraConfig, get_peft_model
        >>> peft_model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"]))
        >>> apply_ticket_to_peft(peft_model, ticket)
        >>> # ... train the adapters (LotteryCallback(args, mask=ticket) keeps the base sparse) ...
        >>> merged = merge_and_unload_sparse(peft_model, ticket)   # a plain model, exactly ticket.sparsity
        ```
    """
    ticket = ticket if isinstance(ticket, TicketMask) else TicketMask(ticket)
    ticket.apply_(peft_model)  # validates (original names) and zeroes the pruned base weights
    sync_lora_masks(peft_model, ticket)
    return peft_model


def remove_ticket_from_peft(peft_model: nn.Module) -> nn.Module:
    """Make the LoRA updates of `peft_model` dense again (the base weights keep their zeros)."""
    if is_peft_model(peft_model):
        for layer in _lora_layers(peft_model).values():
            _unmask_layer(layer)
    return peft_model


@torch.no_grad()
def merge_and_unload_sparse(
    peft_model: nn.Module, ticket: Mapping[str, torch.Tensor], safe_merge: bool = False
) -> nn.Module:
    """Merge the LoRA adapters into the base weights and return the plain model, exactly as sparse as `ticket`.

    With the updates masked ([`apply_ticket_to_peft`], or training under `LotteryTrainer` / `LotteryCallback`),
    the merged model computes what the `PeftModel` computed. Adapters trained without the mask are merged, then
    the mask is applied again: sparse, but no longer the trained function.

    Args:
        peft_model (`nn.Module`): the `PeftModel`.
        ticket (`TicketMask` or `Mapping[str, torch.Tensor]`): the mask, by original names.
        safe_merge (`bool`, defaults to `False`): peft's `safe_merge` (check for NaNs before merging).

    Returns:
        `nn.Module`: the base model with the adapters merged, weights zero wherever `ticket` is False.
    """
    ticket = ticket if isinstance(ticket, TicketMask) else TicketMask(ticket)
    ticket.validate(peft_model)
    merged = cast(Any, peft_model).merge_and_unload(safe_merge=safe_merge)
    ticket.apply_(merged)
    return merged


def load_peft_ticket(
    base_model: nn.Module,
    adapter_name_or_path: str | os.PathLike,
    ticket: Mapping[str, torch.Tensor] | None = None,
    **peft_kwargs: Any,
) -> nn.Module:
    """Load a LoRA adapter trained over a ticket, with the ticket applied: the function it was trained as.

    Args:
        base_model (`nn.Module`): the dense base model (θ0); its pruned weights are zeroed here.
        adapter_name_or_path (`str` or `os.PathLike`): the adapter folder (or Hub id), as for
            `PeftModel.from_pretrained`.
        ticket (`TicketMask` or `Mapping[str, torch.Tensor]`, *optional*): the mask; default: the ticket saved in
            the same folder (`ticket_config.json` and `ticket_mask.safetensors`).
        peft_kwargs: passed to `PeftModel.from_pretrained` (`adapter_name`, `is_trainable`, `revision`...).

    Returns:
        `peft.PeftModel`: with the pruned base weights zero and the LoRA updates masked, so its logits are those of
        the trained model and `merge_and_unload()` gives an exactly sparse model.

    Raises:
        What [`TicketMask.from_pretrained`] raises when no ticket is given and none is saved with the adapter.

    Example:
        ```python
        >>> peft_model = load_peft_ticket(AutoModelForSequenceClassification.from_pretrained(base_id), "out/lora")
        >>> merged = peft_model.merge_and_unload()  # still sparse
        ```
    """
    from peft import PeftModel

    if ticket is None:
        hub_kwargs = {k: peft_kwargs[k] for k in ("revision", "token", "subfolder") if k in peft_kwargs}
        ticket = TicketMask.from_pretrained(adapter_name_or_path, **hub_kwargs)
    with warnings.catch_warnings():
        # The ticket's record in adapter_config.json is read here, not by peft, which warns that it ignores it.
        warnings.filterwarnings("ignore", message=rf"Unexpected keyword arguments \['{ADAPTER_TICKET_KEY}'\]")
        peft_model = PeftModel.from_pretrained(base_model, adapter_name_or_path, **peft_kwargs)
    return apply_ticket_to_peft(peft_model, ticket)
