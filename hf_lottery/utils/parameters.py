"""Parameters by name: the names a model has without peft, and which parameters are prunable.

A `PeftModel` renames the weights it wraps (`bert.encoder.layer.0.attention.self.query.weight` becomes
`base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.weight`). hf_lottery always addresses the
base weights by their *original* names ([`named_parameters`]), so a ticket found on the plain model fits the
`PeftModel` and a ticket found on a `PeftModel` fits the plain one; adapter weights are never prunable.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


# -- Names ---------------------------------------------------------------------------------------------------------
def is_peft_model(model: nn.Module) -> bool:
    """True if `model` is a `peft.PeftModel` or holds peft adapter layers."""
    if "peft" not in sys.modules:  # nothing can be a peft model before peft is imported
        return False
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    return isinstance(model, PeftModel) or any(isinstance(m, BaseTunerLayer) for m in model.modules())


def peft_root_and_adapter_names(model: nn.Module) -> tuple[nn.Module, set[str]]:
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    root = model.get_base_model() if isinstance(model, PeftModel) else model
    adapter_names = {"original_module"}  # modules_to_save keeps a frozen copy of the original module
    for module in root.modules():
        if isinstance(module, BaseTunerLayer):
            adapter_names.update(module.adapter_layer_names)
    return root, adapter_names


def original_parameter_name(name: str, adapter_layer_names: set[str] | frozenset[str] = frozenset()) -> str | None:
    """The name a parameter has in the model without peft, or None for adapter weights.

    `name` is relative to the base model (`PeftModel.get_base_model()`): `...query.base_layer.weight` ->
    `...query.weight`; the trainable copy of a `modules_to_save` module (`classifier.modules_to_save.default.weight`)
    -> `classifier.weight`; anything under one of `adapter_layer_names` (`lora_A`, `lora_B`, ...) or a
    `modules_to_save` frozen copy (`original_module`) -> None.
    """
    parts = name.split(".")
    out: list[str] = []
    i = 0
    while i < len(parts):
        part = parts[i]
        if part in adapter_layer_names or part.startswith("lora_"):
            return None
        if part == "modules_to_save":
            i += 2  # "modules_to_save.<adapter name>"
            continue
        if part != "base_layer":
            out.append(part)
        i += 1
    return ".".join(out)


def named_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """`{name: parameter}` with the names of the model without peft (adapter weights left out).

    For a model without peft adapters this is `dict(model.named_parameters())`.
    """
    if not is_peft_model(model):
        return dict(model.named_parameters())
    root, adapter_names = peft_root_and_adapter_names(model)
    named: dict[str, nn.Parameter] = {}
    for name, param in root.named_parameters():
        original = original_parameter_name(name, adapter_names)
        if original is not None:
            named[original] = param
    return named


def original_names(model: nn.Module, names: list[str]) -> list[str]:
    """Map parameter names found by walking `model`'s modules to the original names (identity without peft)."""
    if not is_peft_model(model):
        return names
    _, adapter_names = peft_root_and_adapter_names(model)
    mapped = (original_parameter_name(name, adapter_names) for name in names)
    return list(dict.fromkeys(name for name in mapped if name is not None))


# Parts of the base model that are never pruned by default (ELECTRA's `embeddings_project` and ALBERT's
# `embedding_hidden_mapping_in` are Linears over the embeddings).
_DEFAULT_EXCLUDED = re.compile(r"(^|\.)embeddings?(\.|_|$)")
# Projections counted as Linears: GPT-2's Conv1D is a Linear with a transposed weight.
_LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)


def _base_model_prefix(model: nn.Module) -> str | None:
    prefix = getattr(model, "base_model_prefix", None)
    if prefix and isinstance(getattr(model, prefix, None), nn.Module):
        return prefix
    return None


def _conv_weight_names(root: nn.Module, prefix: str | None) -> list[str]:
    """The kernels of every `nn.Conv2d` under `root` (conv nets: ResNet, MobileNetV2, ConvNeXt's depthwise convs).

    BatchNorm is never included: its scales are the channel gates of structured pruning, and zeroing one
    silences the whole channel. Patch embeddings of vision transformers live under `embeddings` and stay out.
    """
    names = []
    for module_name, module in root.named_modules():
        if isinstance(module, nn.Conv2d) and not _DEFAULT_EXCLUDED.search(module_name):
            names.append(f"{prefix}.{module_name}.weight" if prefix else f"{module_name}.weight")
    return names


def default_prunable_names(model: nn.Module) -> list[str]:
    """Names of the default prunable parameters (as BERT-Tickets).

    The weight matrix of every `nn.Linear` (or GPT-2 `Conv1D`) inside the base model (the encoder's Q, K, V,
    attention output, intermediate and output projections, and the pooler; a decoder's attention and MLP
    projections), and the kernel of every `nn.Conv2d` there (conv nets). Never embeddings (nor projections of them
    such as ALBERT's `embedding_hidden_mapping_in`), LayerNorm, BatchNorm, biases, the task head or the output
    embeddings (`lm_head`, tied or not): the head lives outside `model.base_model_prefix`, and for a model without
    one (T5) every Linear but the output embeddings counts.
    """
    prefix = _base_model_prefix(model)
    root = getattr(model, prefix) if prefix else model
    get_output = getattr(model, "get_output_embeddings", None)
    output_embeddings = get_output() if callable(get_output) else None
    names = []
    for module_name, module in root.named_modules():
        if module is output_embeddings:
            continue
        if isinstance(module, _LINEAR_TYPES) and not _DEFAULT_EXCLUDED.search(module_name):
            full = f"{prefix}.{module_name}" if prefix else module_name
            names.append(f"{full}.weight")
    names += _conv_weight_names(root, prefix)
    return original_names(model, names)  # under peft: `...query.base_layer.weight` -> `...query.weight`


def prunable_parameters(model: nn.Module, prune_modules: Sequence[str] | str | None = None) -> dict[str, nn.Parameter]:
    """The parameters to prune, `{name: parameter}` in the model's own order.

    Args:
        model (`nn.Module`): the model.
        prune_modules (`str` or `list[str]`, *optional*):
            Regular expressions over parameter names; a parameter is prunable when any of them matches its full
            name (`re.fullmatch`). `None` selects the default set of [`default_prunable_names`].

    Raises:
        `ValueError`: when nothing is selected, or a regex is invalid.
    """
    params = named_parameters(model)  # original names, also under peft
    if prune_modules is None:
        wanted = set(default_prunable_names(model))
    else:
        patterns = [prune_modules] if isinstance(prune_modules, str) else list(prune_modules)
        compiled = []
        for pattern in patterns:
            try:
                compiled.append(re.compile(pattern))
            except re.error as err:
                raise ValueError(f"prune_modules: invalid regular expression {pattern!r} ({err}).") from err
        wanted = {name for name in params if any(c.fullmatch(name) for c in compiled)}
    selected = {name: p for name, p in params.items() if name in wanted and p.is_floating_point()}
    if not selected:
        what = (
            "the default set (nn.Linear and nn.Conv2d weights of the base model)"
            if prune_modules is None
            else prune_modules
        )
        matrices = [name for name, p in params.items() if p.dim() >= 2 and p.is_floating_point()]
        example = f" Its weight matrices include {', '.join(map(repr, matrices[:3]))}." if matrices else ""
        raise ValueError(
            f"No prunable parameters found in {type(model).__name__} for {what}.{example} Pass `prune_modules` with "
            "regular expressions matched (re.fullmatch) against such names, e.g. [r'.*\\.attention\\..*\\.weight']."
        )
    return selected


def check_mask_fits(masks: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Check that every masked parameter exists in `model` (by original name) with the mask's shape.

    Raises:
        `ValueError`: naming the first parameter that is missing or whose shape differs.
    """
    params = named_parameters(model)
    for name, mask in masks.items():
        if name not in params:
            near = [p for p in params if p.endswith(name) or name.endswith(p)]
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise ValueError(
                f"The ticket masks parameter {name!r}, which {type(model).__name__} does not have.{hint} "
                "The ticket was found on a model with other parameter names; load it onto the same architecture."
            )
        if tuple(params[name].shape) != tuple(mask.shape):
            raise ValueError(
                f"Shape mismatch for {name!r}: the ticket has {tuple(mask.shape)}, the model "
                f"{tuple(params[name].shape)}. The ticket was found on a model of another size."
            )


def output_dims(model: nn.Module, names: Sequence[str]) -> dict[str, int]:
    """The dimension of each named weight that indexes its layer's outputs: 1 for transformers' `Conv1D`, else 0.

    `Conv1D` (GPT-2) stores its weight as `[in_features, out_features]`, the transpose of `nn.Linear`; per-output
    and N:M selection ([`select_mask`]'s `output_dims`) needs to know which way round a weight is.
    """
    transposed = {id(m.weight) for m in model.modules() if isinstance(m, Conv1D)}
    params = named_parameters(model)
    return {name: 1 if id(params[name]) in transposed else 0 for name in names if name in params}
