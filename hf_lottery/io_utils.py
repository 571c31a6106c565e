"""Atomic writes and safetensors helpers: nothing half-written on disk, nothing unpickled."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .constants import SAFETENSORS_METADATA, TENSOR_ORDER_METADATA_KEY


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` atomically (`os.replace`)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON with sorted keys, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Save `{name: tensor}` to a safetensors file atomically (tensors made contiguous and moved to CPU)."""
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    # safetensors returns names sorted; the order matters (tie-breaking, random scores), so it is recorded.
    order = {TENSOR_ORDER_METADATA_KEY: json.dumps(list(plain))}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata={**SAFETENSORS_METADATA, **order, **(metadata or {})})


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file to CPU tensors, in the order they were saved in by [`save_tensors`]."""
    tensors = load_file(str(path), device="cpu")
    with safe_open(str(path), framework="pt") as f:
        order = (f.metadata() or {}).get(TENSOR_ORDER_METADATA_KEY)
    names = json.loads(order) if order else []
    if sorted(names) != sorted(tensors):
        return tensors
    return {name: tensors[name] for name in names}
