"""Fingerprints of base weights: a ticket is found on particular weights θ0, and `load_model` checks them.

- Tensor digest: the SHA-256 (hex) of the tensor's values cast to `float32`, in C order, as little-endian bytes.
  Casting makes the digest independent of the storage dtype when the cast is exact (bfloat16 / float16 weights
  upcast to float32 hash alike).
- `base_fingerprint`: `"sha256:"` followed by the SHA-256 (hex) of the UTF-8 text made of one line
  `"{name}\\t{shape}\\t{digest}\\n"` per prunable parameter, sorted by name, where `shape` is the dimensions joined
  by `"x"` (e.g. `768x3072`; empty for a scalar).

The per-tensor digests are stored too (`prunable_parameters[i]["sha256"]`), so a mismatch names the first tensor
that differs.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers.utils import logging

if TYPE_CHECKING:
    from .config import TicketConfig

logger = logging.get_logger(__name__)


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 (hex) of `tensor`'s values as float32, C order, little-endian (see the module docstring)."""
    array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    if sys.byteorder != "little":
        array = array.astype("<f4")
    return hashlib.sha256(memoryview(array).cast("B")).hexdigest()


def combine_digests(entries: list[dict[str, Any]]) -> str | None:
    """The `base_fingerprint` of `[{"name", "shape", "sha256"}]` entries; None if a digest is missing."""
    if not entries or any(not e.get("sha256") for e in entries):
        return None
    lines = "".join(
        f"{e['name']}\t{'x'.join(str(int(d)) for d in e['shape'])}\t{e['sha256']}\n"
        for e in sorted(entries, key=lambda e: e["name"])
    )
    return "sha256:" + hashlib.sha256(lines.encode("utf-8")).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_base(mask: Mapping[str, torch.Tensor], model: nn.Module, config: TicketConfig) -> None:
    """Check that `model` holds the θ0 the ticket was found on (its fingerprint).

    Raises:
        `ValueError`: naming the first prunable tensor whose weights differ.
    """
    recorded = {e.get("name"): e.get("sha256") for e in config.prunable_parameters}
    if not config.base_fingerprint or any(not recorded.get(name) for name in mask):
        logger.warning("The ticket records no fingerprint of its base weights; the base model cannot be verified.")
        return
    params = dict(model.named_parameters())
    differing = [name for name in mask if tensor_digest(params[name]) != recorded[name]]
    if not differing:
        return
    name = differing[0]
    dtype = params[name].dtype
    hint = (
        f" The model holds {dtype} weights: if the ticket was found in float32, load it with dtype=torch.float32."
        if dtype != torch.float32
        else ""
    )
    found_on = config.base_model_name_or_path or "an unrecorded base"
    found_on += f" (revision {config.revision})" if config.revision else ""
    raise ValueError(
        f"The base weights differ from those the ticket was found on: {len(differing)} of {len(mask)} prunable "
        f"tensors differ, first {name!r} (sha256 {tensor_digest(params[name])[:12]}… vs {recorded[name][:12]}… "
        f"recorded). The ticket was found on {found_on}.{hint} Load that base, or pass verify_base=False to "
        "apply the mask anyway."
    )
