"""Per-step cost of HYDRA's top-k over MiniLM-sized scores: the `kthvalue` selection against `torch.topk`.

A HYDRA step re-selects the kept weights among all prunable scores (10.8 M for all-MiniLM-L6-v2's encoder and
pooler). Times both on random scores at the given sparsity, median of `--repeats`, on `--threads` threads.

    python bench/hydra_topk.py --numel 10800000 --sparsity 0.6 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import machine

from hf_lottery.scoring.hydra import _largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--numel", type=int, default=10_800_000)
    parser.add_argument("--sparsity", type=float, default=0.6)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    scores = torch.rand(opts.numel, generator=torch.Generator().manual_seed(0))
    k = opts.numel - round(opts.sparsity * opts.numel)

    def by_topk() -> torch.Tensor:
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[scores.topk(k).indices] = True
        return keep

    times = {}
    for name, select in (("topk", by_topk), ("kthvalue", lambda: _largest(scores, k))):
        runs = []
        for _ in range(opts.repeats):
            start = time.perf_counter()
            select()
            runs.append(time.perf_counter() - start)
        times[name] = statistics.median(runs)
    assert torch.equal(by_topk(), _largest(scores, k))  # no ties in random floats: the same mask
    print(machine())
    for name, seconds in times.items():
        print(f"{name}: {seconds:.3f} s")
    print(f"topk / kthvalue: {times['topk'] / times['kthvalue']:.1f}x")


if __name__ == "__main__":
    main()
