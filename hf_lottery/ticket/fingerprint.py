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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 (hex) of `tensor`'s values as float32, C order, little-endian (see the module docstring)."""
    array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    if sys.byteorder != "little":
        array = array.astype("<f4")
    return hashlib.sha256(array.data.cast("B")).hexdigest()


def tensor_digests(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """`tensor_digest` of every tensor, hashed on as many threads as torch uses (SHA-256 releases the GIL)."""
    workers = max(1, min(len(tensors), torch.get_num_threads()))
    if workers == 1:
        return {name: tensor_digest(t) for name, t in tensors.items()}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(tensors, pool.map(tensor_digest, tensors.values())))


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
