"""Training-step cost of knowledge distillation in the lottery loop (distill_alpha > 0) against none.

The same 50 %-sparse MiniLM-L6-shaped ticket is trained by LotteryTrainer on the same batches, in alternating
blocks in one process:
  plain    - distill_alpha=0
  distill  - distill_alpha=0.5, the dense model as teacher (one extra forward pass per step, no backward)
  hidden   - as distill, plus hidden-state distillation (distill_hidden_weight=1: both models return every layer's
             hidden states, and their squared error is part of the backward pass)
Step time = wall time between on_step_begin and on_step_end (teacher forward, student forward and backward,
clipping, AdamW, mask enforcement). The report gives the median per variant and their ratio.

Resumable: each finished block is appended to `--out` (JSON lines) with the load average read around it; a rerun
skips the blocks already there. Timings are only meaningful on an otherwise idle machine: see the recorded load.

    python bench/distillation_overhead.py --steps 20 --blocks 4 --seq-len 64 --batch-size 32
    python bench/distillation_overhead.py --tiny --seq-len 16 --steps 3 --blocks 1 --out /tmp/kd_smoke.jsonl  # smoke
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import machine, minilm_classifier
from datasets import Dataset
from transformers import TrainerCallback

from hf_lottery import LotteryArguments, LotteryTrainer, prune
from hf_lottery.testing_utils import tiny_model

VARIANTS = ("plain", "distill", "hidden")


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def load_average() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def done_blocks(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a block torn by a kill: run it again
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per block")
    parser.add_argument("--blocks", type=int, default=4, help="alternating blocks per variant")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of each block")
    parser.add_argument("--tiny", action="store_true", help="the 2-layer test model (smoke run of the script)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--out", type=Path, default=Path("bench/distillation_overhead.jsonl"))
    opts = parser.parse_args()

    torch.manual_seed(0)
    if opts.tiny:
        student, model_name, vocab = tiny_model(), "tiny test BERT (2 layers, hidden 32)", 64
    else:
        student, model_name = minilm_classifier()
        vocab = student.config.vocab_size
    teacher = copy.deepcopy(student).eval()  # dense; the student trains its 50 % ticket
    mask = prune(student, 0.5)
    mask.apply_(student)
    state = {k: v.clone() for k, v in student.state_dict().items()}
    n = opts.steps * opts.batch_size
    g = torch.Generator().manual_seed(0)
    low = min(5, vocab - 1)
    data = Dataset.from_dict(
        {
            "input_ids": torch.randint(low, vocab, (n, opts.seq_len), generator=g).tolist(),
            "attention_mask": [[1] * opts.seq_len] * n,
            "labels": torch.randint(0, 2, (n,), generator=g).tolist(),
        }
    )
    setting = {
        "model": model_name,
        "machine": machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "command": " ".join([sys.executable, *sys.argv]),
        "steps": opts.steps,
        "warmup": opts.warmup,
        "seq_len": opts.seq_len,
        "batch_size": opts.batch_size,
    }
    rows = [r for r in done_blocks(opts.out) if r.get("setting") == setting]
    print(f"{model_name}; {setting['machine']}; {len(rows)} blocks already in {opts.out}")
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    for block in range(opts.blocks):
        for variant in opts.variants:
            if any(r["block"] == block and r["variant"] == variant for r in rows):
                continue
            student.load_state_dict(state)
            with tempfile.TemporaryDirectory() as tmp:
                args = LotteryArguments(
                    output_dir=tmp,
                    max_steps=opts.steps,
                    per_device_train_batch_size=opts.batch_size,
                    learning_rate=1e-4,
                    target_sparsity=0.5,
                    distill_alpha=0.0 if variant == "plain" else 0.5,
                    distill_hidden_weight=1.0 if variant == "hidden" else 0.0,
                    save_strategy="no",
                    report_to="none",
                    disable_tqdm=True,
                    use_cpu=True,
                    seed=block,
                )
                timer = StepTimer()
                trainer = LotteryTrainer(
                    model=student,
                    args=args,
                    train_dataset=data,
                    mask=mask,
                    teacher=None if variant == "plain" else teacher,
                    callbacks=[timer],
                )
                load_before = load_average()
                trainer.train()
            times = timer.times[opts.warmup :] or timer.times
            row = {
                "setting": setting,
                "block": block,
                "variant": variant,
                "median_step_s": statistics.median(times),
                "step_s": times,
                "loadavg_before": load_before,
                "loadavg_after": load_average(),
                "cpu_count": os.cpu_count(),
            }
            with opts.out.open("a") as f:  # one line per block: a kill loses at most the block it interrupted
                f.write(json.dumps(row) + "\n")
            rows.append(row)
            print(f"block {block} {variant}: median step {row['median_step_s']:.4f} s, load {row['loadavg_after']}")

    medians = {
        v: statistics.median(r["median_step_s"] for r in rows if r["variant"] == v)
        for v in VARIANTS
        if any(r["variant"] == v for r in rows)
    }
    loads = [r["loadavg_after"][0] for r in rows if r["loadavg_after"]]
    ratios = ", ".join(f"{v} {t:.4f} s ({t / medians['plain']:.2f}x)" for v, t in medians.items() if v != "plain")
    print(
        f"step time: plain {medians['plain']:.4f} s, {ratios} (median of the blocks of each; 1-min load average "
        f"{min(loads, default=float('nan')):.2f}-{max(loads, default=float('nan')):.2f} on {os.cpu_count()} cores)"
    )


if __name__ == "__main__":
    main()
