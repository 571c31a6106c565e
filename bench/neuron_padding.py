"""Does padding the pruned feed-forward widths to a multiple of 16 or 32 make a speed ticket faster on CPU?

For each CPU export given (fp32 folders written by `export_for_cpu(..., quantize=None)`, e.g. the speed tickets of
`bench/speed_tickets.py` under `bench/_cache/speed_tickets/<task>/<run>/exports/round-N`), the same process holds:
  pruned      - the export exactly as pruned (ragged widths such as 1091 or 559)
  pad16/pad32 - the same model after `hf_lottery.pad_neurons(model, 16 | 32)` (zero neurons put back: same outputs)
  dense       - the unpruned architecture (random weights: dense fp32 latency does not depend on them)
and, with `--int8`, the int8 recipe of the speed tickets (every Linear but the FFN output) of `pruned` and `pad16`.
All run in alternation (order flipping every round) at batch 1 and 32, sequence 128, on 1 and all threads; medians.
Outputs of every padded model are checked equal to the pruned one's (to 1e-5) before timing. Run it alone on the machine.

    python bench/neuron_padding.py bench/_cache/speed_tickets/mrpc/structured+kd-seed*/exports/round-3 \
        --int8 --output bench/neuron_padding.jsonl
    python bench/neuron_padding.py --widths 601 607 608 612 616 624 --threads 1   # the FFN pair per width
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from _common import INT8_ALL_BUT_FFN_OUTPUT, layer_widths, machine

from hf_lottery import load_for_cpu, pad_neurons
from hf_lottery.deploy.quantize import quantizable_linears, quantize_linears_
from hf_lottery.deploy.speed import _flops, _inputs, _time_alternated, load_average, unpruned_reference


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("exports", nargs="*", type=Path, help="fp32 CPU export folders")
    p.add_argument(
        "--widths",
        nargs="+",
        type=int,
        help="instead: time the FFN pair hidden -> width -> hidden (4,096 rows) per width, against the full width",
    )
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--full-width", type=int, default=1536)
    p.add_argument("--multiples", nargs="+", type=int, default=[16, 32])
    p.add_argument("--int8", action="store_true", help="also time the int8 recipe, pruned and padded to 16")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 1])
    p.add_argument("--threads", nargs="+", type=int, default=[1, torch.get_num_threads()])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--output", type=Path, default=Path("bench/neuron_padding.jsonl"))
    return p.parse_args(argv)


def variants(folder: Path, multiples: list[int], int8: bool) -> dict[str, torch.nn.Module]:
    pruned = load_for_cpu(folder).eval()
    models: dict[str, torch.nn.Module] = {"pruned": pruned}
    for multiple in multiples:
        padded = copy.deepcopy(pruned)
        pad_neurons(padded, multiple)
        models[f"pad{multiple}"] = padded.eval()
    probe = _inputs(pruned, 4, 32, seed=1)
    with torch.inference_mode():
        want = pruned(**probe).logits
        for name, model in models.items():
            # Equal up to the rounding of sums that the kernels now block differently.
            torch.testing.assert_close(model(**probe).logits, want, rtol=1e-5, atol=1e-5, msg=f"{folder}: {name}")
    if int8:
        for name in ["pruned", f"pad{multiples[0]}"]:
            quantized = copy.deepcopy(models[name])
            quantize_linears_(quantized, quantizable_linears(quantized, INT8_ALL_BUT_FFN_OUTPUT))
            models[f"{name}+int8"] = quantized.eval()
    models["dense"] = unpruned_reference(pruned)
    return models


def time_widths(args: argparse.Namespace) -> None:
    """Per width n: the pair Linear(hidden, n), Linear(n, hidden) on 4,096 rows; efficiency = FLOP share / time share."""
    x = torch.randn(4096, args.hidden)
    widths = [args.full_width, *args.widths]
    pairs = {n: torch.nn.Sequential(torch.nn.Linear(args.hidden, n), torch.nn.Linear(n, args.hidden)) for n in widths}
    for threads in args.threads:
        torch.set_num_threads(threads)
        medians = _time_alternated({str(n): m for n, m in pairs.items()}, {"input": x}, args.repeats, 2, 0.05)
        full = medians[str(args.full_width)]
        for n in args.widths:
            efficiency = full / medians[str(n)] * n / args.full_width
            print(f"threads {threads} width {n}: {1000 * medians[str(n)]:.1f} ms, efficiency {efficiency:.2f}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.widths:
        time_widths(args)
        return
    all_threads = torch.get_num_threads()
    for folder in args.exports:
        models = variants(folder, args.multiples, args.int8)
        flops = {name: _flops(model, args.seq_len) for name, model in models.items()}
        shapes = {
            name: layer_widths(model)["neurons"]
            for name, model in models.items()
            if "int8" not in name and name != "dense"
        }
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch in args.batch_sizes:
                before = load_average()
                medians = _time_alternated(
                    models, _inputs(models["pruned"], batch, args.seq_len, 0), args.repeats, 2, 0.05
                )
                record = {
                    "export": str(folder),
                    "threads": threads,
                    "batch_size": batch,
                    "seq_len": args.seq_len,
                    "ms": {name: 1000 * s for name, s in medians.items()},
                    "speedup": {name: medians["dense"] / s for name, s in medians.items() if name != "dense"},
                    "flop_ideal": {name: flops["dense"] / f for name, f in flops.items() if name != "dense" and f},
                    "ffn_widths": shapes,
                    "load_average": [before, load_average()],
                    "machine": machine(),
                    "repeats": args.repeats,
                }
                with args.output.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                ideal = record["flop_ideal"]["pruned"]
                print(
                    f"{folder} threads {threads} batch {batch}: "
                    + ", ".join(f"{n} {v:.2f}x" for n, v in record["speedup"].items())
                    + f" (FLOP ideal {ideal:.2f}x, load before {before})",
                    flush=True,
                )
        torch.set_num_threads(all_threads)


if __name__ == "__main__":
    main()
