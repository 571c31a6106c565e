"""Benchmark of the mask codec on BERT-base shapes: bytes against the entropy bound, encode and decode time.

For each sparsity s in 10%..99%, a mask over the 73 prunable tensors of BERT-base (85.5M weights: Q, K, V,
attention output, intermediate and output of 12 layers, and the pooler) is saved with
`hf_lottery.ticket.codec.save_masks` and read back with `load_masks`. Two kinds of masks:

- `iid`: every tensor pruned independently at random at exactly s (the worst case for the codec: no structure);
- `magnitude`: global magnitude pruning of synthetic weights with a different scale per tensor and per row, so
  tensors end at different sparsities and rows are pruned unevenly (closer to a real ticket).

The bound is the sum over tensors of n_t * H(s_t) / 8 bytes, H the binary entropy of that tensor's sparsity;
the file is everything on disk (safetensors header and per-tensor metadata included).

    python bench/mask_codec.py --output bench/RESULTS_artifact.md
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from hf_lottery.ticket.codec import encode_mask, load_masks, save_masks

SPARSITIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


def bert_base_shapes() -> dict[str, tuple[int, int]]:
    shapes = {}
    for layer in range(12):
        prefix = f"bert.encoder.layer.{layer}"
        for proj in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes[f"{prefix}.{proj}.weight"] = (768, 768)
        shapes[f"{prefix}.intermediate.dense.weight"] = (3072, 768)
        shapes[f"{prefix}.output.dense.weight"] = (768, 3072)
    shapes["bert.pooler.dense.weight"] = (768, 768)
    return shapes


def iid_masks(shapes, sparsity: float, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(shape, generator=g) >= sparsity for name, shape in shapes.items()}


def magnitude_masks(shapes, sparsity: float, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scores = {}
    for name, shape in shapes.items():
        tensor_scale = 0.02 + 0.04 * torch.rand((), generator=g)
        row_scale = 0.5 + torch.rand(shape[0], 1, generator=g)
        scores[name] = (torch.randn(shape, generator=g) * tensor_scale * row_scale).abs()
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    k = int(round(sparsity * flat.numel()))
    threshold = flat.kthvalue(k).values if k else flat.min() - 1
    del flat
    return {name: s > threshold for name, s in scores.items()}


def entropy_bytes(masks) -> float:
    total = 0.0
    for m in masks.values():
        n, p = m.numel(), float(m.float().mean())
        h = 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
        total += n * h / 8
    return total


def machine() -> str:
    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = (
        f", load average {os.getloadavg()[0]:.1f} at the end of the run (shared machine)"
        if hasattr(os, "getloadavg")
        else ""
    )
    return f"{model}, {affinity} cores available (os.cpu_count()={os.cpu_count()}){load}, Python {platform.python_version()}"


def run(kind: str, sparsity: float, shapes, folder: Path, repeats: int) -> dict:
    masks = (iid_masks if kind == "iid" else magnitude_masks)(shapes, sparsity)
    n = sum(m.numel() for m in masks.values())
    path = folder / f"{kind}-{sparsity}.safetensors"
    start = time.perf_counter()
    save_masks(path, masks)
    encode_s = time.perf_counter() - start
    decode_s = []
    for _ in range(repeats):
        start = time.perf_counter()
        loaded = load_masks(path)
        decode_s.append(time.perf_counter() - start)
    assert all(torch.equal(loaded[k], masks[k]) for k in masks), "round trip failed"
    codecs = Counter(encode_mask(m)[1]["codec"] for m in masks.values()) if repeats else Counter()
    bound = entropy_bytes(masks)
    size = path.stat().st_size
    path.unlink()
    return {
        "kind": kind,
        "target": sparsity,
        "sparsity": 1 - sum(int(m.sum()) for m in masks.values()) / n,
        "n": n,
        "file": size,
        "bound": bound,
        "ratio": size / bound,
        "packed": n / 8,
        "encode_s": encode_s,
        "decode_s": min(decode_s),
        "codecs": ", ".join(f"{c} {k}" for c, k in sorted(codecs.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, help="write the Markdown results here")
    parser.add_argument("--repeats", type=int, default=3, help="decode timings per case (best is reported)")
    parser.add_argument("--kinds", nargs="+", default=["iid", "magnitude"], choices=["iid", "magnitude"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    shapes = bert_base_shapes()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            for s in SPARSITIES:
                row = run(kind, s, shapes, Path(tmp), args.repeats)
                rows.append(row)
                print(
                    f"{kind:9s} s={row['sparsity']:.4f} file={row['file']:>10,} bound={row['bound']:>12,.0f} "
                    f"ratio={row['ratio']:.4f} encode={row['encode_s']:.2f}s decode={row['decode_s']:.3f}s "
                    f"[{row['codecs']}]",
                    flush=True,
                )
    lines = [
        "| Masks | Sparsity | File bytes | n·H(s)/8 bytes | File / bound | Bit-packed bytes | Encode (s) | "
        "Decode (s) | Codecs (tensors) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {100 * r['sparsity']:.2f}% | {r['file']:,} | {r['bound']:,.0f} | {r['ratio']:.4f} | "
            f"{r['packed']:,.0f} | {r['encode_s']:.2f} | {r['decode_s']:.3f} | {r['codecs']} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.output:
        n = rows[0]["n"]
        worst = max(rows, key=lambda r: r["ratio"])
        slowest = max(rows, key=lambda r: r["decode_s"])
        env = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
        command = env + " ".join(["python", *sys.argv])
        text = f"""# Mask codec benchmark (`bench/mask_codec.py`)

Masks over the {len(shapes)} prunable tensors of BERT-base ({n:,} weights), saved with
`hf_lottery.ticket.codec.save_masks` (per tensor the smallest of packed bits, packed bits + zstd, and Rice-coded
gaps) and read back with `load_masks` (file read, digest checks, decoding, `torch.bool` tensors). The bound is
Σ n_t·H(s_t)/8 over tensors; "file" is the whole safetensors file, headers included. Decode time is the best
of {args.repeats} reads.

- Machine: {machine()}
- Command: `{command}` (torch threads: 1; numpy decoding is single-threaded)
- Worst file/bound ratio: {worst["ratio"]:.4f} ({worst["kind"]}, {100 * worst["sparsity"]:.1f}% sparsity);
  slowest decode: {slowest["decode_s"]:.3f} s ({slowest["kind"]}, {100 * slowest["sparsity"]:.1f}%).

{table}

`iid`: each tensor pruned independently at random at exactly s, the codec's worst case (no structure to
exploit beyond first-order entropy). `magnitude`: global magnitude pruning of synthetic weights with a scale per
tensor and per row, so tensor sparsities differ (the bound uses each tensor's own sparsity) and rows are pruned
unevenly.
"""
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    np.seterr(all="raise")
    main()
