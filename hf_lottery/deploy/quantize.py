"""Int8 dynamic quantization of a model's Linear layers for CPU inference, through one of two backends.

- `"torch.ao"`: `torch.ao.quantization.quantize_dynamic` (int8 weights with one scale per output channel by default,
  or one per tensor; activations quantized per batch by fbgemm/onednn kernels). Ships with torch; deprecated since
  torch 2.10 in favour of torchao and due to be removed. When a torch release no longer has it, `"auto"` falls through to torchao and an explicit `"torch.ao"`
  raises `ImportError`.
- `"torchao"`: `torchao.quantization.quantize_` with `Int8DynamicActivationInt8WeightConfig` (per-row int8 weights,
  per-token int8 activations, `torch._int_mm` on CPU). Needs `pip install torchao` (`hf-lottery[cpu]`).

Per-channel weight scales are the default because one scale per tensor loses accuracy on real models: on
all-MiniLM-L6-v2 fine-tuned on SST-2, per-tensor int8 costs 1.3 points of dev accuracy, per-channel 0.1
(bench/RESULTS.md, "Speed tickets").

`"auto"` takes the first of [`BACKEND_PREFERENCE`] that is installed. Both quantize from the fp32 weights
deterministically, so quantizing the same weights again gives the same int8 model: this is what lets an export be
stored as fp32 safetensors and re-quantized on load (no pickled quantized modules).
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from collections.abc import Iterable

import torch
from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)

QUANTIZATIONS = (None, "int8")
BACKENDS = ("torch.ao", "torchao")
WEIGHT_SCALES = ("per_channel", "per_tensor")
# torch.ao first while it exists: one fused fbgemm/onednn int8 kernel per Linear in eager mode, where torchao's CPU
# path is decomposed into separate ops (activation quantization, `torch._int_mm`, rescaling) for Inductor to fuse. bench/speed_tickets.py --part backends times both.
BACKEND_PREFERENCE = ("torch.ao", "torchao")


def _torch_ao_available() -> bool:
    try:
        from torch.ao.quantization import quantize_dynamic  # noqa: F401
    except ImportError:
        return False
    return True


def available_backends() -> list[str]:
    """The int8 backends that can run here, in [`BACKEND_PREFERENCE`] order."""
    found = {"torch.ao": _torch_ao_available(), "torchao": importlib.util.find_spec("torchao") is not None}
    return [name for name in BACKEND_PREFERENCE if found[name]]


def resolve_backend(backend: str = "auto") -> str:
    """
    The backend to use: `backend` itself if it is installed, or for `"auto"` the first available one.

    Raises:
        `ValueError`: for an unknown name.
        `ImportError`: when the backend (or, for `"auto"`, every backend) is missing, with what to install.
    """
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"`backend` must be 'auto' or one of {BACKENDS}, got {backend!r}.")
    available = available_backends()
    if backend == "auto":
        if not available:
            raise ImportError(
                "No int8 backend: this torch has no torch.ao.quantization.quantize_dynamic; pip install torchao."
            )
        return available[0]
    if backend not in available:
        hint = "pip install torchao" if backend == "torchao" else "use backend='torchao' (pip install torchao)"
        raise ImportError(f"The int8 backend {backend!r} is not available with torch {torch.__version__}: {hint}.")
    return backend


def quantizable_linears(model: nn.Module, patterns: Iterable[str] | None = None) -> list[str]:
    """
    Names of the fp32 `nn.Linear` modules to quantize, in module order (Linears already quantized are left out).

    Args:
        model (`nn.Module`): the fp32 model.
        patterns (`Iterable[str]`, *optional*): regexes over module names (`re.search`); default every Linear.
    """
    compiled = [re.compile(p) for p in patterns] if patterns is not None else None
    names = []
    for name, module in model.named_modules():
        plain = type(module) is nn.Linear and type(module.weight) is nn.Parameter
        if plain and module.in_features > 0 and module.out_features > 0:
            if compiled is None or any(p.search(name) for p in compiled):
                names.append(name)
    return names


def quantize_linears_(
    model: nn.Module, names: Iterable[str], backend: str = "auto", weight_scales: str = "per_channel"
) -> str:
    """
    Replace the Linears named in `names` by int8 dynamically quantized ones, in place.

    Args:
        model (`nn.Module`): an fp32 model in eval mode.
        names (`Iterable[str]`): module names, e.g. from [`quantizable_linears`].
        backend (`str`, *optional*, defaults to `"auto"`): `"auto"`, `"torch.ao"` or `"torchao"`.
        weight_scales (`str`, *optional*, defaults to `"per_channel"`): one int8 scale per output channel
            (`"per_channel"`) or per weight tensor (`"per_tensor"`, torch.ao only: torchao scales per row).

    Returns:
        `str`: the backend used.
    """
    if weight_scales not in WEIGHT_SCALES:
        raise ValueError(f"`weight_scales` must be one of {WEIGHT_SCALES}, got {weight_scales!r}.")
    backend = resolve_backend(backend)
    if backend == "torchao" and weight_scales != "per_channel":
        raise ValueError(
            "torchao's int8 Linears scale each output channel; weight_scales='per_tensor' needs torch.ao."
        )
    wanted = set(names)
    modules = dict(model.named_modules())
    missing = sorted(n for n in wanted if type(modules.get(n)) is not nn.Linear)
    if missing:
        raise ValueError(f"Not an nn.Linear of the model: {missing[0]!r}.")
    if not wanted:
        return backend
    model.eval()
    if backend == "torch.ao":
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

        # The deprecation is handled here (torchao is the fallback once the API is gone): say it once, not per call.
        logger.info_once(
            "int8 through torch.ao.quantization.quantize_dynamic, deprecated by torch; hf_lottery falls back to "
            "torchao where torch no longer has it."
        )
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning
            )
            warnings.filterwarnings(
                "ignore", message=r"torch\.quantize_per_tensor.* are deprecated", category=UserWarning
            )
            qconfig = per_channel_dynamic_qconfig if weight_scales == "per_channel" else default_dynamic_qconfig
            quantize_dynamic(model, qconfig_spec=dict.fromkeys(wanted, qconfig), dtype=torch.qint8, inplace=True)
    else:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda _, fqn: fqn in wanted)
    return backend
