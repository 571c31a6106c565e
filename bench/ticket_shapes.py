"""How close to its FLOP ideal does a structured ticket's *shape* run on CPU, whatever heads it kept?

The speed of a shrunk model depends on its shapes only (kept heads and FFN neurons per layer), not on its weights.
This rebuilds the shapes of the recorded 60 %-removed speed tickets from their FFN widths (`ffn_widths.pruned` of
`bench/neuron_padding.jsonl`), each with several distributions of its kept heads over the layers (the per-layer
head counts of those tickets were not recorded; their total was, 29 of 72): uniform, a known ticket's (the SST-2
seed-0 ticket kept 6 / 7 / 5 / 2 / 4 / 5), and `--draws` random ones (at least one head per layer; seeded by the
kept-neuron total, so every 60 % ticket, 3,686 neurons kept, gets the same draws). Each
shape is all-MiniLM-L6-v2 shrunk with `prune_heads` / `prune_neurons` and padded like the export default
(`pad_neurons(model, 16)`); all shapes of one width profile and the unpruned reference run in alternation in one
process (order flipping every round), batch 32, sequence 128, 1 and all threads; medians. measured / ideal is the
speed-up over the reference divided by the FLOP ideal of the *unpadded* shape (the padding counts against it).
`--int8` adds each shape with the speed tickets' int8 recipe (every Linear but the FFN output; speed-ups over the
fp32 reference). Run it alone on the machine.

    python bench/ticket_shapes.py --output bench/ticket_shapes.jsonl
    python bench/ticket_shapes.py --int8 --draws 1 --output bench/ticket_shapes.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
from pathlib import Path

import torch
from _common import INT8_ALL_BUT_FFN_OUTPUT, machine, minilm_classifier

from hf_lottery import pad_neurons, prune_heads, prune_neurons
from hf_lottery.deploy.quantize import quantizable_linears, quantize_linears_
from hf_lottery.deploy.speed import _flops, _inputs, _time_alternated, load_average, unpruned_reference

KNOWN_HEADS = [6, 7, 5, 2, 4, 5]  # the SST-2 seed-0 60 % ticket (bench/RESULTS.md, "Speed tickets")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profiles", type=Path, default=Path("bench/neuron_padding.jsonl"), help="recorded FFN widths")
    p.add_argument("--heads", type=int, default=29, help="kept heads in all (the recorded tickets kept 29 of 72)")
    p.add_argument("--draws", type=int, default=3, help="random head distributions per width profile")
    p.add_argument("--threads", nargs="+", type=int, default=[1, torch.get_num_threads()])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--int8", action="store_true", help="also time each shape with the speed tickets' int8 recipe")
    p.add_argument("--only", nargs="+", help="these profiles only (e.g. mrpc/structured+kd-seed1)")
    p.add_argument("--output", type=Path, default=Path("bench/ticket_shapes.jsonl"))
    return p.parse_args(argv)


def width_profiles(path: Path) -> dict[str, list[int]]:
    profiles: dict[str, list[int]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        name = record["export"].split("/speed_tickets/")[-1].split("/exports")[0]  # e.g. mrpc/structured+kd-seed0
        profiles.setdefault(name, record["ffn_widths"]["pruned"])
    return profiles


def head_distributions(total: int, layers: int, heads_per_layer: int, draws: int, seed: int) -> dict[str, list[int]]:
    uniform = [total // layers + (1 if i < total % layers else 0) for i in range(layers)]
    out = {"uniform": uniform}
    if sum(KNOWN_HEADS) == total and len(KNOWN_HEADS) == layers:
        out["sst2-seed0"] = KNOWN_HEADS
    rng = random.Random(seed)
    for draw in range(draws):
        counts = [1] * layers
        while sum(counts) < total:
            i = rng.randrange(layers)
            if counts[i] < heads_per_layer:
                counts[i] += 1
        out[f"random{draw}"] = counts
    return out


def shrunk(base: torch.nn.Module, heads: list[int], widths: list[int], seq_len: int) -> tuple[torch.nn.Module, int]:
    config = base.config
    model = copy.deepcopy(base)
    prune_heads(model, {i: list(range(config.num_attention_heads - h)) for i, h in enumerate(heads)})
    prune_neurons(model, {i: list(range(config.intermediate_size - w)) for i, w in enumerate(widths)})
    flops = _flops(model, seq_len)
    pad_neurons(model, 16)
    return model.eval(), flops


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    base, name = minilm_classifier()
    base.eval()
    config = base.config
    all_threads = torch.get_num_threads()
    for profile, widths in width_profiles(args.profiles).items():
        if args.only and profile not in args.only:
            continue
        distributions = head_distributions(
            args.heads,
            config.num_hidden_layers,
            config.num_attention_heads,
            args.draws,
            seed=len(widths) + sum(widths),
        )
        models: dict[str, torch.nn.Module] = {}
        flops: dict[str, int] = {}
        for label, heads in distributions.items():
            models[label], flops[label] = shrunk(base, heads, widths, args.seq_len)
        if args.int8:
            for label in distributions:
                quantized = copy.deepcopy(models[label])
                quantize_linears_(quantized, quantizable_linears(quantized, INT8_ALL_BUT_FFN_OUTPUT))
                models[f"{label}+int8"] = quantized.eval()
        reference = unpruned_reference(models["uniform"])
        dense_flops = _flops(reference, args.seq_len)
        models["reference"] = reference
        inputs = _inputs(reference, args.batch_size, args.seq_len, 0)
        for threads in args.threads:
            torch.set_num_threads(threads)
            before = load_average()
            medians = _time_alternated(models, inputs, args.repeats, 2, 0.05)
            ratios = {}
            for label in distributions:
                ideal = dense_flops / flops[label]
                ratios[label] = medians["reference"] / medians[label] / ideal
            record = {
                "profile": profile,
                "model": name,
                "ffn_widths": widths,
                "heads": distributions,
                "threads": threads,
                "batch_size": args.batch_size,
                "seq_len": args.seq_len,
                "ms": {k: 1000 * v for k, v in medians.items()},
                "flop_ideal": {k: dense_flops / f for k, f in flops.items()},
                "measured_over_ideal": ratios,
                "speedup": {k: medians["reference"] / v for k, v in medians.items() if k != "reference"},
                "load_average": [before, load_average()],
                "machine": machine(),
                "repeats": args.repeats,
            }
            with args.output.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            print(
                f"{profile} threads {threads}: reference {1000 * medians['reference']:.0f} ms; measured/ideal "
                + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
                + f" (min {min(ratios.values()):.2f}, median {statistics.median(ratios.values()):.2f}; load {before})"
                + "".join(f"; {k} {record['speedup'][k]:.2f}x" for k in models if k.endswith("+int8")),
                flush=True,
            )
        torch.set_num_threads(all_threads)


if __name__ == "__main__":
    main()
