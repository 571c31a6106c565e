"""Peak memory of prune() on a randomly initialised decoder: the chunked global threshold vs concatenating scores.

Each measurement runs in a fresh child process that builds the model (random weights, `--dtype`), warms the
kernels up on a tiny input, then records the resident set size before and its high-water mark after (Linux: `/proc/self/clear_refs` resets VmHWM):

  prune    - prune(model, sparsity), magnitude, global scope: scores (|w|, the weights' dtype) + selection + mask
  select   - select_mask(scores, sparsity) on precomputed scores: the selector's own working set + the mask
  concat   - the selection as it was before: every score converted to float32 and concatenated, then kthvalue

Reported: prunable weights and their bytes, the peak extra RSS of each variant, the part of it that is not the
scores or the returned mask (the selector's working set), and seconds (meaningful only on a quiet machine).
Results accumulate in `--results` (JSON keyed by shape, dtype and variant); finished entries are skipped, so a
killed run resumes. Every entry records the machine, load average, torch version, threads and command.

    python bench/prune_memory.py --shape llama-1b --dtype bfloat16     # ~1.24B parameters, Llama-3.2-1B shape
    python bench/prune_memory.py --shape tiny --results /tmp/prune_memory_smoke.json   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import machine
from transformers import LlamaConfig, LlamaForCausalLM

from hf_lottery import prunable_parameters, prune, select_mask
from hf_lottery.selector import _prune_lowest

SHAPES = {
    # Llama-3.2-1B: 16 layers, hidden 2048, MLP 8192, 32 query / 8 KV heads, tied embeddings (1.24B parameters).
    "llama-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
    ),
    "llama-150m": dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
        vocab_size=32000,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        tie_word_embeddings=True,
    ),
}
VARIANTS = ("prune", "select", "concat")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _concat_select(scores: dict[str, torch.Tensor], sparsity: float) -> None:
    flats = [s.detach().flatten().to("cpu", torch.float32) for s in scores.values()]
    total = sum(f.numel() for f in flats)
    keep = _prune_lowest(torch.cat(flats), round(sparsity * total))
    dict(zip(scores, keep.split([f.numel() for f in flats]), strict=True))


def child(opts: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    torch.set_default_dtype(getattr(torch, opts.dtype))
    model = LlamaForCausalLM(LlamaConfig(**SHAPES[opts.shape])).eval()
    torch.set_default_dtype(torch.float32)
    params = prunable_parameters(model)
    numel = sum(p.numel() for p in params.values())
    weight_bytes = sum(p.numel() * p.element_size() for p in params.values())
    scores = None
    if opts.variant != "prune":
        scores = {n: p.detach().abs() for n, p in params.items()}
    # Warm up on a tiny input first: the kernels' code pages (file-backed, counted in RSS) load on first use.
    warm = {"w": torch.rand(64, 64).to(getattr(torch, opts.dtype))}
    select_mask(warm, opts.sparsity, max_tensor_sparsity=None)
    _concat_select(warm, opts.sparsity)
    base = _status_kib("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    if opts.variant == "prune":
        prune(model, opts.sparsity, max_tensor_sparsity=None)
    elif opts.variant == "select":
        select_mask(scores, opts.sparsity, max_tensor_sparsity=None)
    else:
        _concat_select(scores, opts.sparsity)
    seconds = time.perf_counter() - start
    extra = (_status_kib("VmHWM") - base) * 1024
    score_bytes = weight_bytes if opts.variant == "prune" else 0  # prune() builds |w| in the weights' dtype
    return {
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "prunable_weights": numel,
        "prunable_bytes": weight_bytes,
        "peak_extra_bytes": extra,
        "selection_working_set_bytes": extra - score_bytes - numel,  # minus the scores and the bool mask
        "working_set_over_prunable_bytes": (extra - score_bytes - numel) / weight_bytes,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), default="llama-1b")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--results", default=str(Path(__file__).with_name("prune_memory_results.json")))
    parser.add_argument("--force", action="store_true", help="re-measure finished entries")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # set in the child process
    opts = parser.parse_args()
    if opts.variant:
        print(json.dumps(child(opts)))
        return
    path = Path(opts.results)
    results = json.loads(path.read_text()) if path.exists() else {}
    for variant in opts.variants:
        key = f"{opts.shape}/{opts.dtype}/{variant}/{opts.sparsity}"
        if key in results and not opts.force:
            print(f"{key}: done, skipped")
            continue
        command = [
            sys.executable,
            __file__,
            "--shape",
            opts.shape,
            "--dtype",
            opts.dtype,
            "--sparsity",
            str(opts.sparsity),
            "--variant",
            variant,
        ]
        load = Path("/proc/loadavg").read_text().split()[:3]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        entry = json.loads(out.strip().splitlines()[-1])
        entry.update(
            machine=machine(),
            loadavg=load,
            torch=torch.__version__,
            threads=torch.get_num_threads(),
            command=" ".join(command),
            pid=os.getpid(),
        )
        results[key] = entry
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2, sort_keys=True))
        tmp.replace(path)
        gib = 2**30
        print(
            f"{key}: {entry['prunable_weights'] / 1e9:.3f}B prunable ({entry['prunable_bytes'] / gib:.2f} GiB), "
            f"peak extra {entry['peak_extra_bytes'] / gib:.3f} GiB, selector working set "
            f"{entry['working_set_over_prunable_bytes']:.1%} of the prunable bytes, {entry['seconds']:.1f} s "
            f"(load {' '.join(load)})"
        )


if __name__ == "__main__":
    main()
